"""The calculator tool: arithmetic only, and a clear error for anything else."""
from __future__ import annotations

import pytest

from aios.errors import InvalidSyscall
from aios.tools.calculator import calculator


@pytest.mark.parametrize(("expression", "value"), [
    ("1 + 2 * 3", 7), ("(1 + 2) * 3", 9), ("7 / 2", 3.5), ("7 // 2", 3), ("7 % 4", 3), ("2 ** 10", 1024),
    ("-3 + +5", 2), ("3 * (120 + 45.5) + 80", 576.5),
])
def test_arithmetic(expression: str, value: float) -> None:
    assert calculator(expression) == value


@pytest.mark.parametrize(("expression", "why"), [
    ("__import__('os').system('true')", "not allowed"), ("x + 1", "not allowed"), ("1 +", "not an arithmetic"),
    ("1 / 0", "division by zero"), ("2 ** 100000", "exponents"), ("'a' * 3", "not allowed"),
    ("True + 1", "not allowed"), ("1" * 2000, "over 1000"),
])
def test_everything_else_is_refused_by_name(expression: str, why: str) -> None:
    with pytest.raises(InvalidSyscall) as err:
        calculator(expression)
    assert why in err.value.message and err.value.field == "expression"
