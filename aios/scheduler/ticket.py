"""Ticket: the kernel's control block for one in-flight syscall (xv6's struct proc, for a
call). Only kernel tasks on the event loop touch it; the caller holds it to wait."""
from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from aios.errors import AiosError
from aios.syscall import Syscall

if TYPE_CHECKING:
    from aios.llm import Chunk


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An interrupted generation, as the context manager (aios.context) saved it: the
    reply so far, and where the backend put its state. A ticket holds it until resumed."""
    call_id: str
    text: str
    num_tokens: int
    backend: str
    state: Any          # the backend's own saved state (hardware model: a SavedKV)
    taken_at: float


class Ticket:
    __slots__ = ("call", "seq", "done", "snapshot", "is_preemptible", "is_preempt_requested",
                 "num_slice_tokens", "text_parts", "num_tokens", "listeners", "scope",
                 "cancel_error", "timeout_error", "expiry", "res", "tool", "arguments", "run_started", "sealed")

    def __init__(self, call: Syscall, seq: int):
        self.call = call                 # the current immutable record; replaced on each move
        self.seq = seq                   # arrival order within this kernel
        self.done = asyncio.Event()      # set once the call is terminal and journaled (asyncio's: the kernel's loop)
        # guarded by the run task of the call:
        self.snapshot: Snapshot | None = None
        self.is_preemptible = False      # running a generation that can be resumed exactly
        self.is_preempt_requested = False
        self.num_slice_tokens = 0        # tokens generated since it last got a slot
        self.text_parts: list[str] = []  # the reply so far, for late stream listeners
        self.num_tokens = 0
        self.listeners: list[anyio.abc.ObjectSendStream[Chunk]] = []
        self.scope: anyio.CancelScope | None = None
        self.cancel_error: AiosError | None = None   # why the kernel cancelled it, if it did
        self.timeout_error: AiosError | None = None   # set when its run's time limit cancelled it
        self.expiry: anyio.CancelScope | None = None   # the deadline watcher, if any
        self.run_started = 0.0
        # found once, when the call is admitted (Kernel._admit), for its run to use:
        self.res: Any = None   # the aios.scheduler.Resource it queues for and runs on (that module imports this one)
        self.tool: Any = None              # a tool call's tool (its ToolSpec)
        self.arguments: dict[str, Any] | None = None   # and its arguments, bound to the tool's parameters
        self.sealed: Syscall | None = None   # a write's end, journaled in the write's own transaction

    @property
    def id(self) -> str:
        return self.call.id

    @property
    def pid(self) -> int:
        return self.call.pid

    async def wait(self) -> Syscall:
        if not self.done.is_set():   # an ended call answers at once, without a trip through the loop
            await self.done.wait()
        return self.call

    async def result(self) -> Any:
        """The call's result, or its error raised again as the AiosError it was."""
        call = await self.wait()
        if call.error is not None:
            raise AiosError.from_dict(call.error)
        return call.result

    def __repr__(self) -> str:
        return f"<Ticket {self.call.id[:8]} {self.call.kind} pid={self.pid} {self.call.state}>"


class TimeLimits:
    """The time limits of running calls (a backend's timeout), kept with one loop timer
    for all of them rather than one each: a limit is set and cleared on every call and
    almost never fires. The timer wakes at the earliest limit set; it cancels the runs
    that passed theirs (through their scope) and sets itself for the next."""

    def __init__(self) -> None:
        self._limits: dict[Ticket, tuple[float, Callable[[], AiosError]]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def set(self, ticket: Ticket, seconds: float, error: Callable[[], AiosError]) -> None:
        """Cancels the ticket's current run with `error()` if it still runs `seconds` of
        real time from now."""
        loop = asyncio.get_running_loop()
        at = loop.time() + seconds
        self._limits[ticket] = (at, error)
        if at < self._timer_at:
            self._arm(loop, at)

    def clear(self, ticket: Ticket) -> None:
        self._limits.pop(ticket, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer, self._timer_at = None, math.inf
        now = loop.time()
        for ticket, (at, error) in list(self._limits.items()):
            if at <= now:
                del self._limits[ticket]
                if ticket.scope is not None:
                    ticket.timeout_error = error()
                    ticket.scope.cancel()
        if self._limits:
            self._arm(loop, min(at for at, _ in self._limits.values()))
