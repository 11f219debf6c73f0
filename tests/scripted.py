"""A scripted LLM and a kernel to run agents against it (virtual time), with tools that
take simulated time on the kernel's clock."""
from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Any

from aios.agents.compiler.prompts import JOINER_HEADER, PLANNER_HEADER
from aios.agents.react import REACT_HEADER
from aios.agents.react.parallel import FC_HEADER
from aios.clock import VirtualClock
from aios.config import HardwareBackendSettings
from aios.kernel import Kernel
from aios.llm import Request
from aios.llm.hardware import FunctionResponder, HardwareBackend
from aios.process.inproc import KernelTransport
from aios.sdk import AsyncClient
from aios.tools import tool

HEADERS = {"planner": PLANNER_HEADER, "joiner": JOINER_HEADER, "react": REACT_HEADER, "fc": FC_HEADER}


class Model:
    """A scripted LLM: for each role, the replies in order (a function of the request's
    messages may stand for a reply). Records the prompts it was given."""

    def __init__(self, planner: list[Any] = (), joiner: list[Any] = (), react: list[Any] = (), fc: list[Any] = ()):
        self.script = {"planner": list(planner), "joiner": list(joiner), "react": list(react), "fc": list(fc)}
        self.prompts: dict[str, list[Any]] = {role: [] for role in self.script}

    def __call__(self, request: Request) -> Any:
        system = request.messages[0]["content"]
        role = next((r for r, h in HEADERS.items() if system.startswith(h)), None)
        assert role is not None, system[:80]
        self.prompts[role].append(request.messages if role == "fc" else request.messages[-1]["content"])
        if not self.script[role]:
            return "Thought: out of script\nAction: Finish(none)"
        reply = self.script[role].pop(0)
        return reply(request) if callable(reply) else reply


@asynccontextmanager
async def agent_kernel(make_settings: Callable[..., Any], model: Model,
                       log: list[tuple[str, float, float]] | None = None):
    """A kernel on virtual time with `model` as its LLM and the timed tools (their calls
    go to `log`); yields it and a client bound to a fresh process."""
    clock = VirtualClock()
    backend = HardwareBackend(HardwareBackendSettings(decode_s_per_token=0.02), clock, FunctionResponder(model))
    async with Kernel(make_settings(), clock=clock, backends=[backend]) as k:
        for t in timed_tools(k.clock, [] if log is None else log):
            k.register_tool(t)
        proc = await k.spawn("agent")
        yield k, AsyncClient(transport=KernelTransport(k, pid=proc.pid))


def timed_tools(clock: Any, log: list[tuple[str, float, float]]) -> list[Any]:
    @tool(timeout_s=30)
    async def search(query: str, k: int = 1) -> str:
        """Searches the encyclopedia."""
        start = clock.now()
        await clock.sleep(1.0)
        log.append((query, start, clock.now()))
        if query == "boom":
            raise RuntimeError("the index is down")
        return f"{query} was born in {1900 + len(query)}"

    @tool(timeout_s=30)
    async def calculator(expression: str) -> float:
        """Arithmetic."""
        start = clock.now()
        await clock.sleep(0.5)
        log.append((expression, start, clock.now()))
        return float(eval(expression, {"__builtins__": {}}))   # test-only: expressions are ours

    @tool(timeout_s=0.5)
    async def hang(x: int) -> int:
        """Never answers."""
        await clock.sleep(3600)
        return x

    return [search, calculator, hang]


