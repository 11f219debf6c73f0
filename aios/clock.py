"""Kernel time. Every timestamp and every simulated delay goes through one clock, so the
same kernel runs on the wall clock (optionally sped up) or on virtual time.

Invariant: virtual time advances only when every task is blocked and no real work
(a journal commit in a worker thread) is in flight, so a virtual run measures the
schedule, not the CPU it ran on."""
from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Protocol, TypeVar

import anyio
import anyio.lowlevel

T = TypeVar("T")


class Clock(Protocol):
    is_virtual: bool

    def now(self) -> float: ...
    async def sleep(self, seconds: float) -> None: ...
    def busy(self) -> AbstractContextManager[None]: ...


class WallClock:
    """Unix time, running `speed` times faster than the wall (speed 10: a simulated
    second lasts 0.1 s). Timestamps are in simulated seconds."""
    is_virtual = False

    def __init__(self, speed: float = 1.0):
        if not speed > 0:
            raise ValueError(f"clock speed must be positive, got {speed}")
        self.speed = speed
        self._epoch = time.time()
        self._start = time.perf_counter()

    def now(self) -> float:
        return self._epoch + (time.perf_counter() - self._start) * self.speed

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds) / self.speed)

    def busy(self) -> AbstractContextManager[None]:
        return nullcontext()


class VirtualClock:
    """Discrete-event time for anyio tasks on asyncio. `run()` is the driver: it waits
    until all tasks are blocked, then jumps to the earliest pending sleep."""
    is_virtual = True

    def __init__(self, start: float = 0.0):
        self._now = start
        self._timers: list[tuple[float, int, anyio.Event]] = []   # (wake time, seq, event)
        self._seq = itertools.count()
        self._num_busy = 0
        self._work_done = anyio.Event()
        self._timer_added = anyio.Event()
        self._cancelled: set[int] = set()   # seqs of timers whose sleeper was cancelled

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        wake = anyio.Event()
        seq = next(self._seq)
        heapq.heappush(self._timers, (self._now + seconds, seq, wake))
        self._timer_added.set()
        try:
            await wake.wait()
        except BaseException:   # a cancelled sleeper must not move time forward later
            self._cancelled.add(seq)
            raise

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Marks real work in flight (a thread); time stands still until it ends."""
        self._num_busy += 1
        try:
            yield
        finally:
            self._num_busy -= 1
            if self._num_busy == 0:
                self._work_done.set()
                self._work_done = anyio.Event()

    async def run(self) -> None:
        """Runs until cancelled. Must run as a task in the same event loop as the sleepers."""
        while True:
            await _all_tasks_blocked()
            if self._num_busy:
                await self._work_done.wait()
                continue
            while self._timers and self._timers[0][1] in self._cancelled:
                self._cancelled.discard(heapq.heappop(self._timers)[1])
            if not self._timers:   # nothing to wake: wait for the next sleeper
                await self._timer_added.wait()
                self._timer_added = anyio.Event()
                continue
            wake_at = self._timers[0][0]
            self._now = max(self._now, wake_at)
            while self._timers and self._timers[0][0] <= self._now:
                _, seq, wake = heapq.heappop(self._timers)
                if seq in self._cancelled:
                    self._cancelled.discard(seq)
                else:
                    wake.set()


async def _all_tasks_blocked() -> None:
    """Returns once every other task waits on a future. This reads asyncio's
    `Task._fut_waiter`, as anyio's own test helper does, but yields instead of sleeping."""
    this = asyncio.current_task()
    while True:
        await anyio.lowlevel.checkpoint()
        for task in asyncio.all_tasks():
            if task is this:
                continue
            waiter = task._fut_waiter  # type: ignore[attr-defined]
            if waiter is None or waiter.done():
                break
        else:
            return


async def within(clock: Clock, seconds: float | None, fn: Callable[[], Awaitable[T]]) -> T:
    """`await fn()`, unless `seconds` of `clock` time pass first: then TimeoutError. On a
    virtual clock, `seconds` of real time bound it too (work in a thread keeps virtual
    time still, so a thread that never returns is caught by the real bound)."""
    if seconds is None:
        return await fn()
    done: list[T] = []
    real_bound = seconds if clock.is_virtual else math.inf
    try:
        with anyio.fail_after(real_bound):
            async with anyio.create_task_group() as tg:
                async def work() -> None:
                    done.append(await fn())
                    tg.cancel_scope.cancel()
                tg.start_soon(work)
                await clock.sleep(seconds)
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:   # fn's own error, as it was raised
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    if not done:
        raise TimeoutError
    return done[0]


def utc_text(t: float, *, ms: bool = False) -> str:
    """A wall-clock time (Unix seconds) as people read it: 2026-12-07 21:04:05, in UTC
    (with `ms`, 21:04:05.123)."""
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))
    return f"{text}.{int(t % 1 * 1000):03d}" if ms else text
