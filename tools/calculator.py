"""The calculator tool: arithmetic on numbers, parsed with `ast` and evaluated by a
whitelist of operators. No names, calls or attributes, so no eval of arbitrary code."""
from __future__ import annotations

import ast
import operator
from collections.abc import Callable

from aios.errors import InvalidSyscall

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION_CHARS = 1000
MAX_EXPONENT = 1000


def calculator(expression: str) -> float | int:
    """Evaluates an arithmetic expression: numbers, + - * / // % ** and parentheses."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise InvalidSyscall(f"the expression is over {MAX_EXPRESSION_CHARS} characters", field="expression")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as e:
        raise InvalidSyscall(f"not an arithmetic expression: {e.msg}", field="expression") from None
    try:
        return _eval(tree.body)
    except ZeroDivisionError:
        raise InvalidSyscall("division by zero", field="expression") from None
    except OverflowError:
        raise InvalidSyscall("the result is too large", field="expression") from None


def _eval(node: ast.AST) -> float | int:
    match node:
        case ast.Constant(value=value) if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            a, b = _eval(left), _eval(right)
            if isinstance(op, ast.Pow) and abs(b) > MAX_EXPONENT:
                raise InvalidSyscall(f"exponents above {MAX_EXPONENT} are refused", field="expression")
            return _BINARY[type(op)](a, b)
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
            return _UNARY[type(op)](_eval(operand))
    raise InvalidSyscall(f"{type(node).__name__} is not allowed: only numbers and + - * / // % **",
                         field="expression")
