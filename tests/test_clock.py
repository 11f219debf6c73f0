"""The virtual clock: time jumps to the next sleeper only when every task is blocked,
stands still while real work runs in a thread, and ignores cancelled sleepers."""
from __future__ import annotations

import time

import anyio
import pytest

from aios.clock import VirtualClock, WallClock


@pytest.mark.anyio
async def test_sleepers_wake_in_time_order_at_their_virtual_time():
    clock = VirtualClock()
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as sleepers:
                for name, s in (("c", 30.0), ("a", 10.0), ("b", 20.0)):
                    sleepers.start_soon(sleeper, name, s)
        tg.cancel_scope.cancel()
    assert woke == [("a", 10.0), ("b", 20.0), ("c", 30.0)]


@pytest.mark.anyio
async def test_time_stands_still_while_a_thread_works():
    clock = VirtualClock()
    seen: list[float] = []

    async def worker() -> None:
        with clock.busy():
            await anyio.to_thread.run_sync(time.sleep, 0.05)
        seen.append(clock.now())

    async def timer() -> None:
        await clock.sleep(1.0)
        seen.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as work:
                work.start_soon(worker)
                work.start_soon(timer)
        tg.cancel_scope.cancel()
    assert seen == [0.0, 1.0]   # the thread finished before time moved


@pytest.mark.anyio
async def test_a_cancelled_sleeper_does_not_move_time():
    clock = VirtualClock()
    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        with anyio.fail_after(5):
            with anyio.CancelScope() as scope:
                scope.cancel()
                await clock.sleep(1000.0)
            await clock.sleep(2.0)
        tg.cancel_scope.cancel()
    assert clock.now() == 2.0


def test_wall_clock_speed_must_be_positive():
    with pytest.raises(ValueError):
        WallClock(0)
    assert WallClock(10).speed == 10
