"""Ticket: the kernel's control block for one in-flight syscall (xv6's struct proc, for a
call). Only kernel tasks on the event loop touch it; the caller holds it to wait."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncio

import anyio

from aios.errors import AiosError
from aios.syscall import Syscall

if TYPE_CHECKING:
    from aios.context import Snapshot
    from aios.llm import Chunk


class Ticket:
    __slots__ = ("call", "seq", "done", "snapshot", "is_preemptible", "is_preempt_requested",
                 "num_slice_tokens", "text_parts", "num_tokens", "listeners", "scope",
                 "cancel_error", "timeout_error", "timer", "expiry", "run_started", "sealed")

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
        self.timer: asyncio.TimerHandle | None = None   # the run's time limit, if it has one
        self.expiry: anyio.CancelScope | None = None   # the deadline watcher, if any
        self.run_started = 0.0
        self.sealed: Syscall | None = None   # a write's end, journaled in the write's own transaction

    @property
    def id(self) -> str:
        return self.call.id

    @property
    def pid(self) -> int:
        return self.call.pid

    def time_limit(self, seconds: float, error: Callable[[], AiosError]) -> None:
        """Cancels the current run (through its scope) with `error()` if it still runs
        `seconds` of real time from now: a timer on the loop, cheaper than a scope's deadline."""
        loop = asyncio.get_running_loop()
        self.timer = loop.call_at(loop.time() + seconds, self._time_out, error)

    def _time_out(self, error: Callable[[], AiosError]) -> None:
        self.timer = None
        if self.scope is not None:
            self.timeout_error = error()
            self.scope.cancel()

    def end_time_limit(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

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

