"""The in-process transports: each request of the core becomes a call on a Kernel object in
this process, and each answer the JSON the REST API would send for it, so both transports
feed the same parsers and raise the same errors.

`KernelTransport` runs on the kernel's event loop. `ThreadKernelTransport` serves a blocking
Client in a worker thread of that loop (one started by anyio.to_thread.run_sync)."""
from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import anyio.from_thread

from aios.errors import NotFound
from aios.process import Process, ProcState, process_json
from aios.sdk._core import (Cancel, GetProcess, ListModels, ListProcesses, ListTools, Request, Signal, Spawn,
                            Submit, Target)

from aios.syscall import syscall_json

if TYPE_CHECKING:
    from aios.kernel import Kernel

Event = tuple[str, dict[str, Any]]


class KernelTransport:
    def __init__(self, kernel: Kernel, target: Target):
        self.kernel = kernel
        self.pid = target.pid or 0
        self.principal = target.principal

    async def handle(self, request: Request) -> Any:
        k = self.kernel
        match request:
            case Submit(body, wait):   # a copy, as HTTP would send: the caller may reuse its lists
                ticket = await k.submit(copy.deepcopy(body), pid=self.pid, principal=self.principal)
                return syscall_json(await ticket.wait() if wait else ticket.call)
            case Cancel(call_id):
                await self._owned_call(call_id)
                return syscall_json(await k.cancel(call_id))
            case Spawn(name, priority, parent_pid, program, task, runner, manifest):
                return process_json(await k.spawn(name, principal=self.principal, parent_pid=parent_pid,
                                                  priority=priority, program=program, task=task, runner=runner,
                                                  manifest=manifest))
            case ListProcesses(include_exited):
                return [process_json(p) for p in k.processes.procs.values()
                        if p.principal == self.principal and (include_exited or p.state is not ProcState.EXITED)
                        and k.processes.sees(self.pid, p.pid)]
            case GetProcess(pid):
                return process_json(self._owned_process(pid))
            case Signal(pid, signal):
                self._owned_process(pid)
                act = {"suspend": k.suspend, "resume": k.resume, "kill": k.kill}[signal]
                return process_json(await act(pid))
            case ListModels():
                return {"data": [{"id": m} for m in k.router.models]}
            case ListTools():
                return {"tools": k.tool_listing()}
        raise TypeError(f"not a request: {request!r}")

    async def events(self, call_id: str) -> AsyncIterator[Event]:
        """What the SSE endpoint sends: the tokens, then the final state. A failed call's
        error is raised by Kernel.stream at the end, as the stream's reader would raise it."""
        await self._owned_call(call_id)
        ticket = self.kernel.tickets.get(call_id)
        if ticket is None:   # already over
            yield "state", syscall_json(await self.kernel.lookup(call_id))
            return
        async for chunk in self.kernel.stream(ticket):
            if chunk.text:
                yield "token", {"text": chunk.text}
        yield "state", syscall_json(ticket.call)

    async def _owned_call(self, call_id: str) -> None:
        call = await self.kernel.lookup(call_id)
        if call.principal != self.principal or not self.kernel.processes.sees(self.pid, call.pid):
            raise NotFound(f"no syscall {call_id!r}", field="id")

    def _owned_process(self, pid: int) -> Process:
        proc = self.kernel.processes.procs.get(pid)
        if proc is None or proc.principal != self.principal or not self.kernel.processes.sees(self.pid, pid):
            raise NotFound(f"no process {pid}", field="pid")
        return proc


class ThreadKernelTransport:
    """Runs each request on the kernel's event loop from a worker thread, and waits."""

    def __init__(self, kernel: Kernel, target: Target):
        self._inner = KernelTransport(kernel, target)

    def handle(self, request: Request) -> Any:
        return anyio.from_thread.run(self._inner.handle, request)

    def events(self, call_id: str) -> Iterator[Event]:
        events = self._inner.events(call_id)

        async def next_event() -> Event | None:
            try:
                return await anext(events)
            except StopAsyncIteration:
                return None

        try:
            while (event := anyio.from_thread.run(next_event)) is not None:
                yield event
        finally:
            anyio.from_thread.run(events.aclose)
