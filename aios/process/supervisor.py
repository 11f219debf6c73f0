"""The supervisor: starts agent programs under a runner, signals them, and reports how
they ended. It knows runners, not syscalls: the kernel cancels a process's calls and
records its end through the `on_exit` callback it gives.

Invariant: every started program ends in exactly one `on_exit` call, whether it returns,
raises, is killed, or the kernel goes down."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc

from aios.process.runners import Exit, InprocRunner, SubprocessRunner

Runner = InprocRunner | SubprocessRunner


@dataclass(slots=True)
class Run:
    pid: int
    runner: Runner
    log_path: Path
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None
    kill_reason: str | None = None
    exit: Exit | None = None


class Supervisor:
    def __init__(self, logs: Path, on_exit: Callable[[int, Exit], Awaitable[None]]):
        self.logs = logs
        self.on_exit = on_exit
        self.runs: dict[int, Run] = {}

    def log_path(self, pid: int) -> Path:
        return self.logs / f"proc-{pid}.log"

    def start(self, tg: anyio.abc.TaskGroup, pid: int, runner: Runner, task: str) -> Run:
        self.logs.mkdir(parents=True, exist_ok=True)
        run = self.runs[pid] = Run(pid, runner, self.log_path(pid))
        tg.start_soon(self._watch, run, task)
        return run

    async def _watch(self, run: Run, task: str) -> None:
        with anyio.CancelScope() as scope:
            run.scope = scope
            if run.kill_reason is None:
                run.exit = await run.runner.run(task, run.log_path)
        if run.exit is None:   # killed, or the kernel is going down
            run.exit = Exit(-9, run.kill_reason or "killed")
        try:
            with anyio.CancelScope(shield=True):
                await self.on_exit(run.pid, run.exit)
        finally:
            del self.runs[run.pid]
            run.done.set()

    async def kill(self, pid: int, reason: str) -> Exit | None:
        """Stops the program and waits for its end; None if the pid runs no program."""
        run = self.runs.get(pid)
        if run is None:
            return None
        run.kill_reason = reason
        if run.scope is not None:
            run.scope.cancel()
        await run.done.wait()
        return run.exit

    def suspend(self, pid: int) -> None:
        if pid in self.runs:
            self.runs[pid].runner.suspend()

    def resume(self, pid: int) -> None:
        if pid in self.runs:
            self.runs[pid].runner.resume()

    async def wait(self, pid: int) -> None:
        run = self.runs.get(pid)
        if run is not None:
            await run.done.wait()
