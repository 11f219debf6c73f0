"""The syscall handlers, one per kind (xv6's sysproc.c and sysfile.c): each runs one call
with its slot held and returns (result, usage). The kernel owns the slot, the states and
the journal; a handler only does the work, and raises an AiosError when it cannot."""
from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from aios.clock import within
from aios.errors import AiosError, BackendUnavailable, InvalidSyscall, ToolError
from aios.events import EventKind
from aios.llm import Backend, Chunk, Request, Response
from aios.process import Process
from aios.scheduler import Resource, Ticket
from aios.scheduler.ticket import TimeLimits
from aios.syscall import Kind, LLMSyscall, ProcessOp, ProcessSyscall, ToolSyscall, Usage

if TYPE_CHECKING:
    from aios.clock import Clock
    from aios.context import ContextManager
    from aios.events import EventBus
    from aios.kernel.gate import ToolGate
    from aios.llm import Router
    from aios.memory import MemoryManager
    from aios.process.table import ProcessTable
    from aios.storage import FileStore
    from aios.storage.journal import Seal


class Kernel(Protocol):
    """What a handler uses of the kernel (aios.kernel.Kernel, which imports this module)."""
    clock: Clock
    bus: EventBus
    context: ContextManager
    router: Router
    processes: ProcessTable
    files: FileStore
    memory: MemoryManager
    time_limits: TimeLimits

    def publish(self, kind: EventKind, *, pid: int | None = None, call_id: str | None = None,
                data: dict[str, Any] | None = None) -> None: ...
    def tool_gate(self, call: ToolSyscall) -> ToolGate: ...
    def _seal(self, ticket: Ticket) -> Seal: ...
    async def suspend(self, pid: int) -> Process: ...
    async def resume(self, pid: int) -> Process: ...
    async def kill(self, pid: int, reason: str = "killed") -> Process: ...


class Preempted(Exception):
    """Raised inside a run when the call gave up its slot at a token boundary."""


async def run_llm(k: Kernel, ticket: Ticket) -> tuple[Any, Usage]:
    call = ticket.call
    assert isinstance(call, LLMSyscall)
    backend = k.router.route(call.model)
    res = ticket.res
    assert res is not None
    request = Request.of(call)
    resume = k.context.restore(ticket)
    if resume is None:
        res.policy.on_tokens(ticket, request.num_prompt_tokens, 0)
    ticket.is_preemptible = backend.is_continuable
    tool_calls, finish, usage = None, "stop", None
    k.time_limits.set(ticket, backend.timeout_s, functools.partial(_timed_out, backend))
    try:
        async with aclosing(backend.stream(request, resume)) as chunks:
            async for chunk in chunks:
                if chunk.num_tokens or chunk.text:
                    emit(k, ticket, res, chunk)
                if chunk.tool_calls:
                    tool_calls = (tool_calls or []) + chunk.tool_calls
                if chunk.finish_reason:
                    finish = chunk.finish_reason
                if chunk.usage:
                    usage = chunk.usage
                elif backend.is_continuable and (
                        ticket.is_preempt_requested or res.policy.should_yield(ticket, k.clock.now())):
                    k.context.snapshot(ticket, backend, request, k.clock.now())
                    raise Preempted
    finally:
        ticket.is_preemptible = False
    if usage is None:
        usage = Usage(request.num_prompt_tokens, ticket.num_tokens)
    text = "".join(ticket.text_parts)
    return Response(text, finish, usage, tool_calls, call.model).to_dict(), \
        Usage(usage.tokens_in, usage.tokens_out, usage.cost_usd)

def emit(k: Kernel, ticket: Ticket, res: Resource, chunk: Chunk) -> None:
    ticket.text_parts.append(chunk.text)
    ticket.num_tokens += chunk.num_tokens
    ticket.num_slice_tokens += chunk.num_tokens
    res.policy.on_tokens(ticket, 0, chunk.num_tokens)
    for send in ticket.listeners:
        send.send_nowait(chunk)
    if k.bus.has_subscribers:
        k.publish(EventKind.CALL_TOKEN, pid=ticket.pid, call_id=ticket.id, data={"text": chunk.text})

async def run_tool(k: Kernel, ticket: Ticket) -> tuple[Any, Usage]:
    call = ticket.call
    assert isinstance(call, ToolSyscall)
    tool, kwargs = ticket.tool, dict(ticket.arguments or {})   # bound when the call was admitted
    gate = k.tool_gate(call)   # the tool's only way to the kernel's resources, closed when it ends
    if tool.context_param is not None:
        kwargs[tool.context_param] = gate.context()

    async def work() -> Any:
        if tool.is_async:
            return await tool.fn(**kwargs)
        with k.clock.busy():
            return await anyio.to_thread.run_sync(lambda: tool.fn(**kwargs), abandon_on_cancel=True)
    try:
        result = await within(k.clock, tool.timeout_s, work)   # the kernel's time, as deadlines are
    except AiosError:
        raise
    except TimeoutError:
        raise ToolError(f"tool {call.tool!r} did not finish within {tool.timeout_s:g} s",
                        hint="the tool's timeout_s is set where it is registered") from None
    except Exception as e:
        raise ToolError(f"tool {call.tool!r} raised {type(e).__name__}: {e}") from None
    finally:
        gate.close()
    try:
        json.dumps(result)
    except (TypeError, ValueError):
        raise ToolError(f"tool {call.tool!r} returned a {type(result).__name__}, which is not JSON",
                        hint="return str, numbers, lists or dicts") from None
    return result, Usage(cost_usd=tool.cost_usd)

async def run_memory(k: Kernel, ticket: Ticket) -> tuple[Any, Usage]:
    seal = k._seal(ticket) if ticket.call.is_store_write else None
    return await k.memory.execute(ticket.call, k.clock.now(), seal=seal), Usage()   # type: ignore[arg-type]

async def run_storage(k: Kernel, ticket: Ticket) -> tuple[Any, Usage]:
    seal = k._seal(ticket) if ticket.call.is_store_write else None
    return await k.files.execute(ticket.call, k.clock.now(), seal=seal), Usage()   # type: ignore[arg-type]

async def run_process(k: Kernel, ticket: Ticket) -> tuple[Any, Usage]:
    call = ticket.call
    assert isinstance(call, ProcessSyscall)
    if call.op is ProcessOp.LIST:
        return [_proc_dict(p) for p in k.processes.visible(call.principal, call.pid, include_exited=True)], Usage()
    target = k.processes.find(call.principal, call.pid, call.target_pid, field="target_pid")
    if target.pid == call.pid and call.op is not ProcessOp.STATUS:
        raise InvalidSyscall(f"a process cannot {call.op} itself", field="target_pid")
    ops = {ProcessOp.SUSPEND: k.suspend, ProcessOp.RESUME: k.resume, ProcessOp.KILL: k.kill}
    proc = target if call.op is ProcessOp.STATUS else await ops[call.op](target.pid)
    return _proc_dict(proc), Usage()


def _timed_out(backend: Backend) -> AiosError:
    return BackendUnavailable(f"backend {backend.name} did not answer within {backend.timeout_s:g} s",
                              hint="raise the backend's timeout_s, or check the provider")


def _proc_dict(p: Process) -> dict[str, Any]:
    return {"pid": p.pid, "name": p.name, "principal": p.principal, "parent_pid": p.parent_pid,
            "state": p.state.value, "created": p.created, "exited": p.exited,
            "tokens_in": p.usage.tokens_in, "tokens_out": p.usage.tokens_out}


HANDLERS: dict[Kind, Callable[[Kernel, Ticket], Awaitable[tuple[Any, Usage]]]] = {
    Kind.LLM: run_llm, Kind.TOOL: run_tool, Kind.MEMORY: run_memory,
    Kind.STORAGE: run_storage, Kind.PROCESS: run_process,
}
