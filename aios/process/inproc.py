"""The in-process transports of the SDK's clients: each request of the SDK's core becomes a
call on a Kernel object in this process, and each answer the JSON the REST API would send
for it, so both transports feed the same parsers and raise the same errors. They live
here, beside the runners that hand them to in-kernel agents: this is where the kernel
meets the SDK (DESIGN.md), and the SDK imports nothing of the kernel.

    AsyncClient(transport=KernelTransport(kernel, pid=7))        # on the kernel's event loop
    Client(transport=ThreadKernelTransport(kernel, pid=7))       # in a worker thread of it

The kernel is used through its public verbs (submit, cancel, lookup, stream, spawn,
suspend, resume, kill, tool_listing) and its process table's visibility rule."""
from __future__ import annotations

import copy
from contextlib import aclosing
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio.from_thread

from aios.errors import PermissionDenied
from aios.process import Process, process_json
from aios.sdk import AsyncClient, Client
from aios.sdk._core import (INPROC_URL, Cancel, Event, GetProcess, ListModels, ListProcesses, ListSyscalls, ListTools,
                            ReportStep, Request, Signal, Spawn, Submit, Target, check_pid)
from aios.syscall import CallState, syscall_json


class KernelTransport:
    """`kernel`: an aios.kernel.Kernel, running on this event loop (the kernel package
    imports this one, so it is not named here). `pid`: the agent the client speaks for
    (None: the principal's own account)."""

    def __init__(self, kernel: Any, *, pid: int | None = None, principal: str = "local"):
        check_pid(pid)
        self.kernel = kernel
        self.target = Target(INPROC_URL, None, pid or None, principal)
        self.pid = pid or 0
        self.principal = principal

    async def handle(self, request: Request) -> Any:
        k = self.kernel
        match request:
            case Submit(body, wait):   # a copy, as HTTP would send: the caller may reuse its lists
                ticket = await k.submit(copy.deepcopy(body), pid=self.pid, principal=self.principal)
                return syscall_json(await ticket.wait() if wait else ticket.call)
            case Cancel(call_id):
                return syscall_json(await k.cancel((await self._owned_call(call_id)).id))
            case Spawn(name, priority, parent_pid, program, task, runner, manifest, model):
                return process_json(await k.spawn(name, principal=self.principal, parent_pid=parent_pid,
                                                  priority=priority, program=program, task=task, runner=runner,
                                                  manifest=manifest, model=model))
            case ListProcesses(include_exited):
                return [process_json(p) for p in k.processes.visible(self.principal, self.pid, include_exited)]
            case GetProcess(pid):
                return process_json(self._owned_process(pid))
            case Signal(pid, signal):
                self._owned_process(pid)
                act = {"suspend": k.suspend, "resume": k.resume, "kill": k.kill}[signal]
                return process_json(await act(pid))
            case ReportStep(pid, kind, text, data):
                if pid != self.pid:   # as POST /v1/processes/{pid}/steps: only the process itself
                    raise PermissionDenied(f"only process {pid} itself may report its steps", field="pid")
                return k.lifecycle.step(pid, kind, text, data).to_json()
            case ListSyscalls(pid, state, since, before, limit):
                calls = await k.history(self.principal, self.pid, pid=pid, since=since, before=before, limit=limit,
                                        state=CallState(state) if state is not None else None)
                return {"data": [syscall_json(c) for c in calls], "next": calls[-1].id if len(calls) == limit else None}
            case ListModels():
                return {"data": [{"id": m} for m in k.router.models]}
            case ListTools():
                return {"tools": k.tool_listing()}
        raise TypeError(f"not a request: {request!r}")

    async def events(self, call_id: str) -> AsyncIterator[Event]:
        """What the SSE endpoint sends: the tokens, then the final state. A failed call's
        error is raised by Kernel.stream at the end, as the stream's reader would raise it."""
        call_id = (await self._owned_call(call_id)).id   # a prefix, resolved
        ticket = self.kernel.tickets.get(call_id)
        if ticket is None:   # already over
            yield "state", syscall_json(await self.kernel.lookup(call_id))
            return
        async for chunk in self.kernel.stream(ticket):
            if chunk.text:
                yield "token", {"text": chunk.text}
        yield "state", syscall_json(ticket.call)

    async def process_events(self, pid: int, calls: bool, follow: bool) -> AsyncIterator[Event]:
        self._owned_process(pid)
        async with aclosing(self.kernel.lifecycle.events(pid, calls=calls, follow=follow)) as events:
            async for event in events:
                yield event

    async def aclose(self) -> None:
        pass   # nothing held: the kernel is its owner's to stop

    async def _owned_call(self, call_id: str) -> Any:
        return await self.kernel.lookup(call_id, principal=self.principal, viewer=self.pid)

    def _owned_process(self, pid: int) -> Process:
        return self.kernel.processes.find(self.principal, self.pid, pid)


class ThreadKernelTransport:
    """Runs each request on the kernel's event loop from a worker thread, and waits."""

    def __init__(self, kernel: Any, *, pid: int | None = None, principal: str = "local"):
        self._inner = KernelTransport(kernel, pid=pid, principal=principal)
        self.target = self._inner.target

    def handle(self, request: Request) -> Any:
        return anyio.from_thread.run(self._inner.handle, request)

    def events(self, call_id: str) -> Iterator[Event]:
        return _blocking(self._inner.events(call_id))

    def process_events(self, pid: int, calls: bool, follow: bool) -> Iterator[Event]:
        return _blocking(self._inner.process_events(pid, calls, follow))

    def close(self) -> None:
        pass


def _blocking(events: AsyncIterator[Event]) -> Iterator[Event]:
    """An async iterator of the kernel's loop, read from a worker thread of it."""
    async def next_event() -> Event | None:
        try:
            return await anext(events)
        except StopAsyncIteration:
            return None

    try:
        while (event := anyio.from_thread.run(next_event)) is not None:
            yield event
    finally:
        anyio.from_thread.run(events.aclose)   # type: ignore[attr-defined]


def inproc_clients(kernel: Any, pid: int, principal: str, model: str | None = None) -> tuple[
        AsyncClient, Callable[[], Client]]:
    """The clients an in-process agent gets: an AsyncClient on the kernel, and a maker of
    blocking Clients for a sync main running in a worker thread (`model`: what their LLM
    calls use when they name none)."""
    return (AsyncClient(transport=KernelTransport(kernel, pid=pid, principal=principal), model=model),
            lambda: Client(transport=ThreadKernelTransport(kernel, pid=pid, principal=principal), model=model))
