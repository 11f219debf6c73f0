"""The process lifecycle: spawning an agent (its program found, its manifest decided, its
runner built), suspending, resuming and killing it, and recording how it ended. The
kernel's verbs of the same names call these; the kernel cancels the process's calls
(`end_calls`), the supervisor runs its program.

A Lifecycle works on the kernel it is given (an aios.kernel.Kernel: the kernel package
imports this one, so it is not named here): its process table, guard, scheduler, event
bus, clock and settings, and its endpoint for a subprocess agent's client."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from aios import access
from aios.access.manifest import Manifest, beside
from aios.errors import AiosError, BackendUnavailable, InvalidSyscall, PermissionDenied
from aios.events import EventKind
from aios.process import Process, ProcState, process_json
from aios.process.inproc import inproc_clients
from aios.process.runners import BUILTIN_AGENTS, RUNNERS, Exit, InprocRunner, Program, SubprocessRunner, load_main, resolve
from aios.process.steps import Step, Steps, checked
from aios.process.supervisor import Runner, Supervisor
from aios.storage import retention
from aios.storage.retention import Collected
from aios.syscall import check_priority

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, kernel: Any, end_calls: Callable[[int, str], Awaitable[None]]):
        self.k = kernel
        self.end_calls = end_calls   # the kernel's: cancels a process's calls in flight and waits for them
        self.supervisor = Supervisor(kernel.settings.home / "logs", self._exited)
        self.steps = Steps(self.supervisor.logs)
        self.agents: dict[str, str] = dict(BUILTIN_AGENTS)   # registered agent name -> file or module
        self.agent_manifests: dict[str, Manifest] = {}       # registered agent name -> its manifest
        self.tg: anyio.abc.TaskGroup | None = None           # the kernel's, where programs run

    async def spawn(self, name: str, *, principal: str = "local", parent_pid: int | None = None,
                    priority: int = 0, program: str | None = None, task: str = "",
                    runner: str = "inproc", manifest: Manifest | dict[str, Any] | None = None,
                    model: str | None = None) -> Process:
        """Creates a process; with a program (a .py file, a module or a registered agent
        name) it also starts running `main(task, os)` under the runner. A program that
        cannot be found or imported is refused here, before anything is recorded. Its
        permission manifest (aios.access.manifest) is `manifest`, else the one registered
        with the agent, else the TOML file beside its program; a manifest asking for more
        than the principal (or the parent process) may grant is refused. `model`: what its
        program's LLM calls use when they name none (NotFound if the kernel serves no such
        model)."""
        check_priority(priority)
        if model is not None:
            self.k.router.route(model)   # a model no backend serves is refused here, naming those served
        if not 0 < len(name) <= 200:
            raise InvalidSyscall("a process name needs 1 to 200 characters", field="name")
        if runner not in RUNNERS:
            raise InvalidSyscall(f"unknown runner {runner!r}", field="runner", hint=f"one of: {', '.join(RUNNERS)}")
        if parent_pid is not None:
            self.k.processes.check_live(parent_pid)
        prog = resolve(program, self.agents) if program is not None else None
        declared = self._manifest_of(manifest, program, prog)
        if declared is not None and declared.priority_ceiling is not None and priority > declared.priority_ceiling:
            raise PermissionDenied(f"priority {priority} is above the manifest's ceiling {declared.priority_ceiling}",
                                   field="priority")
        effective = await self.k.guard.decide(principal, declared, parent_pid, name)
        if prog is not None and effective is not None and effective.sandbox and runner != "subprocess":
            raise InvalidSyscall("a sandboxed agent runs only under the subprocess runner", field="runner",
                                 hint="spawn it with runner=subprocess, or drop sandbox from its manifest")
        main = None
        if prog is not None and runner == "inproc":
            main = load_main(prog)
        if prog is not None and runner == "subprocess" and self.k.endpoint is None:
            raise BackendUnavailable("the subprocess runner needs the kernel's HTTP endpoint",
                                     hint="run agents in subprocesses through the daemon (`aios kernel start`)")
        proc = await self.k.processes.spawn(name, principal, self.k.clock.now(), parent_pid=parent_pid,
                                            priority=priority, program=prog.target if prog else None,
                                            runner=runner if prog else None)
        await self.k.guard.attach(proc.pid, declared, effective)
        self.k.publish(EventKind.PROCESS, pid=proc.pid, data={"state": proc.state.value, "name": name})
        if prog is not None:
            assert self.tg is not None, "the kernel gives its task group when it boots"
            self.supervisor.start(self.tg, proc.pid, self._runner(proc, prog, main, model), task)
        return proc

    def _runner(self, proc: Process, prog: Program, main: Callable[..., Any] | None, model: str | None) -> Runner:
        """A subprocess agent always gets a token of its own in AIOS_TOKEN, whatever tokens
        exist: a new process token (aios.access) that the server honours only while the
        supervisor runs this process (the runner's environment is its one copy), and only as
        this pid. Never a principal's token: the agent cannot act as its principal's account
        or its other processes, and nothing outlives it."""
        if main is not None:
            return InprocRunner(main, *inproc_clients(self.k, proc.pid, proc.principal, model))
        env = {"AIOS_URL": self.k.endpoint or "", "AIOS_PID": str(proc.pid), "AIOS_TOKEN": access.process_token(proc.pid),
               **({"AIOS_MODEL": model} if model is not None else {})}
        manifest = self.k.guard.manifests.get(proc.pid)
        return SubprocessRunner(prog, env, sandboxed=bool(manifest and manifest.sandbox), private=self.k.settings.home)

    def register_agent(self, name: str, program: str, manifest: Manifest | dict[str, Any] | None = None) -> None:
        """Makes `aios run NAME` and spawn(program=NAME) run `program` (a file or module),
        under `manifest` if given."""
        self.agents[name] = program
        if manifest is not None:
            self.agent_manifests[name] = self._manifest_of(manifest, None, None)   # type: ignore[assignment]

    def _manifest_of(self, given: Manifest | dict[str, Any] | None, program: str | None, prog: Any) -> Manifest | None:
        if given is not None:
            return given if isinstance(given, Manifest) else Manifest.parse(given)
        if program is not None and program in self.agent_manifests:
            return self.agent_manifests[program]
        path = beside(prog.target) if prog is not None else None
        return Manifest.load(path) if path is not None else None

    async def suspend(self, pid: int) -> Process:
        self.k.processes.check_live(pid)
        self.k.scheduler.suspend(pid)
        self.supervisor.suspend(pid)
        return await self._set_process_state(pid, ProcState.SUSPENDED)

    async def resume(self, pid: int) -> Process:
        self.k.processes.check_live(pid)
        self.supervisor.resume(pid)
        self.k.scheduler.resume(pid)
        return await self._set_process_state(pid, ProcState.RUNNING)

    async def kill(self, pid: int, reason: str = "killed") -> Process:
        """Stops its program, cancels its calls in flight (their slots are released) and
        marks it exited."""
        self.k.processes.check_live(pid)
        self.supervisor.resume(pid)   # a stopped OS process must run to die
        if await self.supervisor.kill(pid, reason) is None:
            await self.end_calls(pid, f"was {reason}")
            await self._set_process_state(pid, ProcState.EXITED, reason)
        return self.k.processes.get(pid)

    async def wait(self, pid: int) -> Process:
        """Waits until the process's program ends (at once for a process without one)."""
        self.k.processes.get(pid)
        await self.supervisor.wait(pid)
        return self.k.processes.get(pid)

    async def collect(self, older_than_s: float | None = None, *, dry_run: bool = False) -> Collected:
        """Applies retention (aios.storage.retention): history older than `older_than_s`
        (default: the retention_days setting) goes, from the database and the kernel alike."""
        before = retention.cutoff(self.k.clock.now(), self.k.settings.retention_days, older_than_s)
        logs = self.supervisor.logs
        done = await self.k.db.run(lambda engine: retention.collect(engine, logs, before, dry_run=dry_run))
        self.k.processes.forget(done.pids)
        self.k.guard.forget(done.pids)
        return done

    async def collect_hourly(self) -> None:
        """The kernel's background retention (when retention_days is set): at boot, then
        every hour; a failed pass is logged and tried again an hour later."""
        while True:
            try:
                done = await self.collect()
                if done.num_syscalls or done.num_processes or done.num_logs:
                    log.info("retention removed %d calls, %d processes and %d logs older than %.0f days",
                             done.num_syscalls, done.num_processes, done.num_logs, self.k.settings.retention_days)
            except AiosError as e:
                log.warning("retention could not run: %s", e.message)
            await anyio.sleep(3600)

    def step(self, pid: int, kind: str, text: str, data: dict[str, Any] | None = None) -> Step:
        """Records what a live process says it is doing (aios.process.steps) and publishes it."""
        self.k.processes.check_live(pid)
        step = self.steps.add(pid, self.k.clock.now(), *checked(kind, text, data))
        self.k.publish(EventKind.STEP, pid=pid, data=step.to_json())
        return step

    async def events(self, pid: int, *, calls: bool = False, follow: bool = True,
                     ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """What a process reports, as (event, data): each `step`, those so far first; with
        `calls`, each `state` change of its calls; `lagged` if this reader fell behind (its
        steps are caught up from the store, its calls' states are not); last, `process`,
        its record, once it has exited, or at once, unless `follow`."""
        kinds = {EventKind.STEP, EventKind.PROCESS} | ({EventKind.CALL_STATE} if calls else set())
        with self.k.bus.subscribe(kinds, max_buffer=1024) as sub:   # before the catch-up: nothing falls between
            sent = 0

            def new_steps() -> list[tuple[str, dict[str, Any]]]:
                nonlocal sent
                steps = self.steps.since(pid, sent)
                sent += len(steps)
                return [("step", s.to_json()) for s in steps]

            for event in new_steps():
                yield event
            num_dropped = 0
            while follow and self.k.processes.is_live(pid):
                ev = None
                with anyio.move_on_after(1.0):   # an exit among missed events is seen within a second
                    ev = await sub.receive()
                if sub.num_dropped > num_dropped:
                    num_dropped = sub.num_dropped
                    yield "lagged", {"num_dropped": num_dropped}
                if ev is not None and ev.kind is EventKind.CALL_STATE and ev.pid == pid:
                    yield "state", {"id": ev.call_id, "state": ev.data["state"], "at": ev.at}
                for event in new_steps():
                    yield event
            for event in new_steps():   # its last ones (the error it failed with comes as it exits)
                yield event
            yield "process", process_json(self.k.processes.get(pid))

    async def _exited(self, pid: int, end: Exit) -> None:
        """The supervisor's report: the program ended; its calls end with it. A program
        that failed and said why (an `error` step, or its traceback in-process) exits for
        that reason."""
        reason = end.reason
        if end.traceback is not None:
            try:
                self.step(pid, "error", reason.removeprefix("failed: "), {"traceback": end.traceback})
            except AiosError as e:   # its steps are spent (or the trace cannot be written): it exits all the same
                log.warning("process %d: its traceback was not kept: %s", pid, e.message)
        elif end.code != 0 and (said := self.steps.last(pid, "error")) is not None:
            reason = f"failed: {said.text}"
        await self.end_calls(pid, f"ended: {end.reason}")
        await self._set_process_state(pid, ProcState.EXITED, reason, exit_code=end.code,
                                      cpu_s=end.cpu_s, max_rss_kib=end.max_rss_kib)
        self.steps.close(pid)

    async def _set_process_state(self, pid: int, state: ProcState, reason: str | None = None,
                                 **ended: Any) -> Process:
        proc = await self.k.processes.set_state(pid, state, self.k.clock.now(), reason, **ended)
        if state is ProcState.EXITED:
            self.k.memory.working.pop(pid, None)   # its context is gone with it; its entries stay
        self.k.publish(EventKind.PROCESS, pid=pid, data={"state": state.value})
        return proc

