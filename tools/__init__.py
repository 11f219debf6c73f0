"""Tools agents call through tool syscalls. The tool issue brings the typed registry,
MCP and the other built-ins; for now the daemon offers these."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aios.tools.calculator import calculator

BUILTIN_TOOLS: dict[str, Callable[..., Any]] = {"calculator": calculator}
