"""Tools agents call through tool syscalls: the typed registry (`tool`, `ToolSpec`,
`ToolRegistry`, `ToolContext`) and the built-in tools the daemon offers."""
from __future__ import annotations

from typing import TYPE_CHECKING

from aios.tools.calculator import calculator
from aios.tools.registry import ToolContext, ToolRegistry, ToolSpec, spec_of, tool

if TYPE_CHECKING:
    from aios.config import Settings


def builtin_tools(settings: Settings) -> list[ToolSpec]:
    """The tools the daemon offers, as the settings configure them."""
    return [tool(calculator, timeout_s=5.0)]


__all__ = ["ToolContext", "ToolRegistry", "ToolSpec", "builtin_tools", "spec_of", "tool"]
