"""Agents that run as kernel processes: the examples, LLMCompiler, ReAct and parallel
function calling. The names `aios run NAME` knows without registration, and the modules
they run, are the process layer's (aios.process.runners.BUILTIN_AGENTS): the kernel below
names them without importing this package."""
from aios.process.runners import BUILTIN_AGENTS

__all__ = ["BUILTIN_AGENTS"]
