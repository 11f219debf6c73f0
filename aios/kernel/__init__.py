"""The kernel: boots the managers, runs dispatch, shuts down cleanly. Nothing else.

    async with Kernel(settings) as k:
        ticket = await k.submit({"kind": "llm", "model": "sim-llama-3-8b", "messages": [...]})
        result = await ticket.result()

Invariants: `submit` returns only once the call's record is durable; every call ends
terminal with its waiter woken, on every path (done, failure, cancel, kill, deadline,
shutdown); a call's slot is released on every path."""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import anyio
import anyio.abc
from sqlalchemy import Connection

from aios import access
from aios.access.guard import Guard
from aios.access.manifest import Manifest, beside
from aios.agents import BUILTIN_AGENTS
from aios.clock import Clock, VirtualClock, WallClock
from aios.config import HardwareBackendSettings, LiteLLMBackendSettings, Settings
from aios.context import ContextManager
from aios.errors import (AiosError, BackendUnavailable, Cancelled, DeadlineExceeded, InternalError,
                         InvalidSyscall, JournalUnavailable, NotFound, PermissionDenied)
from aios.events import Event, EventBus, EventKind
from aios.llm import Backend, Chunk, Router, count_tokens
from aios.llm.simulated import ENGINES
from aios.llm.provider import LiteLLMBackend
from aios.memory import MemoryManager
from aios.process import Process, ProcState
from aios.process.runners import (RUNNERS, Exit, InprocRunner, Program, SubprocessRunner, inproc_clients,
                                  load_main, resolve)
from aios.process.supervisor import Runner, Supervisor
from aios.process.table import ProcessTable
from aios.kernel.gate import ToolGate, check_shared, is_irreversible
from aios.kernel.handlers import HANDLERS, Preempted
from aios.scheduler import Resource, Scheduler, Ticket
from aios.scheduler.ticket import TimeLimits
from aios.storage import Database, FileStore, Journal
from aios.storage.journal import Flush, Seal, record_in
from aios.storage.files import check_path
from aios.storage.lease import Holder
from aios.tools.registry import ToolRegistry, ToolSpec
from aios.syscall import (CallState, Kind, LLMSyscall, MemorySyscall, ProcessSyscall,
                          StorageSyscall, Syscall, ToolSyscall,
                          Usage, advance, check_priority, new_call)

log = logging.getLogger(__name__)


class _Worker:
    __slots__ = ("ticket", "wake")

    def __init__(self) -> None:
        self.ticket: Ticket | None = None   # the next call to run, handed over by _start
        self.wake = asyncio.Event()   # asyncio's own: the kernel runs on asyncio, and it is cheaper


def build_backends(settings: Settings, clock: Clock) -> list[Backend]:
    makers = {HardwareBackendSettings: lambda s: ENGINES[s.engine](s, clock),
              LiteLLMBackendSettings: lambda s: LiteLLMBackend(s)}
    return [makers[type(b)](b) for b in settings.backends]


class Kernel:
    def __init__(self, settings: Settings | None = None, *, clock: Clock | None = None,
                 backends: Sequence[Backend] | None = None):
        self.settings = settings = settings or Settings()
        if clock is None:
            clock = VirtualClock() if settings.clock.mode == "virtual" else WallClock(settings.clock.speed)
        self.clock = clock
        self.bus = EventBus()
        self.db = Database(settings.db_url, clock)
        self.journal = Journal(self.db)
        self.context = ContextManager()
        self.scheduler = Scheduler(settings.scheduler, self._start, clock.now)
        self.time_limits = TimeLimits()   # the backends' timeouts of running calls
        self.router = Router(backends if backends is not None else build_backends(settings, clock))
        self.memory = MemoryManager(self.db, settings.memory_working_tokens, settings.memory_policy,
                                    embedder=settings.memory_embedder)
        self.files = FileStore(self.db, settings.storage_quota_bytes)
        self.processes = ProcessTable(self.db)
        self.guard = Guard(self.db, settings, clock)
        self.tools = ToolRegistry()
        self.agents: dict[str, str] = dict(BUILTIN_AGENTS)   # registered agent name -> file or module
        self.agent_manifests: dict[str, Manifest] = {}       # registered agent name -> its manifest
        self.endpoint: str | None = None          # the REST URL serving this kernel, if any
        self.supervisor = Supervisor(settings.home / "logs", self._process_exited)
        self.tickets: dict[str, Ticket] = {}     # calls in flight, by id
        self.awaiting: dict[str, Ticket] = {}    # irreversible calls held for a confirmation, by id
        self.is_accepting = False
        self.num_submitted = 0
        self._seq = itertools.count()
        self._tg: anyio.abc.TaskGroup | None = None
        self._idle_workers: list[_Worker] = []

    # ---- boot and shutdown

    async def __aenter__(self) -> Kernel:
        """Boots: takes the database's lease (KernelRunning if another kernel holds it,
        before anything is migrated, recovered or written), then recovers and accepts."""
        holder = Holder.this_process(self.endpoint)
        await anyio.to_thread.run_sync(lambda: self.db.open(lease=holder))
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        try:
            if isinstance(self.clock, VirtualClock):
                self._tg.start_soon(self.clock.run)
            self._tg.start_soon(self.journal.run)
            now = self.clock.now()
            await self.processes.load(now)
            requeued, failed = await self.journal.recover(now)
            for call in requeued:
                if call.pid and call.pid not in self.processes.procs:
                    call = replace(call, pid=0)   # its process died with the old kernel
                ticket = Ticket(call, next(self._seq))
                try:
                    ticket.res = self._admit(call)
                except (NotFound, InvalidSyscall) as e:   # a tool not registered before boot, a model no longer served
                    self.tickets[call.id] = ticket
                    self._finish(ticket, None, CallState.FAILED, None, call.usage, e)
                    await ticket.done.wait()
                    continue
                self._enqueue(ticket)
            if requeued or failed:
                log.warning("recovered %d calls (re-queued), failed %d that were running",
                            len(requeued), len(failed))
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self.db.close()
            raise
        self.is_accepting = True
        self.publish(EventKind.KERNEL, data={"state": "booted"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self.shutdown(drain=self.settings.shutdown == "drain" and exc[0] is None)
        finally:
            assert self._tg is not None
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(*exc)
            for backend in self.router.backends:
                await backend.aclose()
            self.bus.close()
            await anyio.to_thread.run_sync(self.db.close)

    async def shutdown(self, drain: bool) -> None:
        """Stops accepting calls; waits for those in flight (drain, bounded by
        drain_timeout_s) or cancels them; the journal is flushed before it returns."""
        if not self.is_accepting:
            return
        self.is_accepting = False
        self.publish(EventKind.KERNEL, data={"state": "stopping", "drain": drain})
        for pid in list(self.supervisor.runs):   # agent programs stop first: they would only call on
            await self.supervisor.kill(pid, "stopped: the kernel shut down")
        for ticket in list(self.awaiting.values()):   # nobody is left to confirm them
            self._abort(ticket, Cancelled("the kernel shut down before this action was confirmed"))
        if drain:
            # calls held for a suspended process cannot run: they are cancelled, not waited for
            for ticket in [t for t in self.tickets.values() if t.pid in self.scheduler.suspended_pids]:
                self._abort(ticket, Cancelled(f"the kernel shut down while process {ticket.pid} was suspended"))
            with anyio.move_on_after(self.settings.drain_timeout_s):
                for ticket in list(self.tickets.values()):
                    await ticket.done.wait()
        for ticket in list(self.tickets.values()):
            self._abort(ticket, Cancelled("the kernel shut down before this call finished",
                                          hint="submit it again once the kernel is back"))
        with anyio.move_on_after(self.settings.drain_timeout_s) as scope:
            for ticket in list(self.tickets.values()):
                await ticket.done.wait()
        if scope.cancelled_caught:
            log.error("%d calls did not end within %g s of shutdown", len(self.tickets),
                      self.settings.drain_timeout_s)
        await self.journal.flush()

    # ---- the syscall interface

    async def submit(self, call: Syscall | dict[str, Any], *, pid: int = 0,
                     principal: str = "local") -> Ticket:
        """Checks, journals (durably) and queues a call. Raises the AiosError that says
        what is wrong with it; nothing is recorded for a call that is refused."""
        if not self.is_accepting:
            raise BackendUnavailable("the kernel is not accepting calls (stopped or still booting)")
        now = self.clock.now()
        call = new_call(call, pid=pid or (call.pid if isinstance(call, Syscall) else 0), principal=principal,
                        created=now)
        if call.pid:
            proc = self.processes.check_live(call.pid)
            if call.pid in self.guard.manifests:   # the permission check, before any work
                tool = self.tools.get(call.tool) if isinstance(call, ToolSyscall) else None
                call = await self.guard.check(call, (t.call for t in self.tickets.values()),
                                              proc.usage.tokens_in + proc.usage.tokens_out, proc.usage.cost_usd,
                                              tool.cost_usd if tool is not None else 0.0,
                                              tool is not None and tool.needs_network, proc.name)
        res = self._admit(call)   # an unknown model or tool, or bad tool arguments, are refused here
        if isinstance(call, MemorySyscall) and call.owner not in (None, call.pid):
            try:
                check_shared(call, self.processes, self.guard.manifests)
            except AiosError as e:   # a refusal is audited, as the manifest's are
                await self.guard.deny(call.principal, f"{call.kind.value}.submit", str(call.pid), e.message,
                                      {"owner": call.owner, "op": call.op.value, "code": e.code})
                raise
        if call.pid in self.guard.manifests:   # a manifest's allow decisions are audited too
            self._audit_soon(call.principal, f"{call.kind.value}.submit", str(call.pid), "allow", {"id": call.id})
        if self._irreversible(call):
            call = replace(call, state=CallState.WAITING_CONFIRMATION)
        ticket = Ticket(call, next(self._seq))
        ticket.res = res
        self.tickets[call.id] = ticket
        flush = self.journal.append_nowait(call, now, is_new=True)
        if call.is_effect_free and call.state is CallState.QUEUED:
            # nothing to take back: it is queued at once and runs while its record commits
            # (its later records commit with or after it); the caller hears once it is durable
            self._accept(ticket)
            flush.on_durable(lambda error: error and self._unrecorded(ticket, error))
        else:
            # queued once its record is durable, whether or not this caller still waits:
            # recorded and queued, or unrecorded, never between
            flush.on_durable(lambda error: self._unrecorded(ticket, error) if error else self._accept(ticket))
        await flush.wait()
        return ticket

    def _accept(self, ticket: Ticket) -> None:
        self.num_submitted += 1
        self._publish_state(ticket)
        if ticket.call.state is CallState.WAITING_CONFIRMATION:
            self._hold(ticket)
        else:
            self._enqueue(ticket)

    def _unrecorded(self, ticket: Ticket, error: JournalUnavailable) -> None:
        """Its record could not be written: the call is refused (submit raises the error),
        and one already queued is ended (the journal writes nothing more of it)."""
        if ticket.call.is_effect_free:   # queued at submit (_abort ignores one that has ended)
            self.num_submitted -= 1
            self._abort(ticket, error)
        else:
            self.tickets.pop(ticket.id, None)

    def tool_gate(self, call: ToolSyscall) -> ToolGate:
        """The gate through which the tool of `call` makes syscalls on its caller's behalf,
        checked as `submit` checks them; the tool handler closes it when the call ends."""
        return ToolGate(call, self.processes, self.guard, self.files, self.memory, self.db, self.clock,
                        is_confirming=self.settings.access.confirm)

    # ---- confirmation of irreversible actions

    def _irreversible(self, call: Syscall) -> bool:
        tool = self.tools[call.tool] if isinstance(call, ToolSyscall) else None
        return is_irreversible(call, self.settings.access.confirm, tool)

    def _hold(self, ticket: Ticket) -> None:
        assert self._tg is not None
        self.awaiting[ticket.id] = ticket
        self._tg.start_soon(self._confirmation_timeout, ticket)
        self._audit_soon(ticket.call.principal, "confirmation.request", ticket.id, "info",
                         {"pid": ticket.call.pid, "kind": ticket.call.kind.value, "payload": ticket.call.payload()})

    def pending_confirmations(self, principal: str | None = None) -> list[Syscall]:
        """Calls held for a yes or no, oldest first (`principal`: only its own)."""
        return [t.call for t in self.awaiting.values() if principal is None or t.call.principal == principal]

    async def confirm(self, call_id: str, *, approve: bool, by: str, is_admin: bool = False) -> Syscall:
        """Approves (the call is queued) or denies (it fails with PermissionDenied) a held
        call. The call's own principal or an admin may; anyone else gets NotFound."""
        ticket = self.awaiting.get(call_id)
        if ticket is None or (ticket.call.principal != by and not is_admin):
            raise NotFound(f"no syscall {call_id!r} waiting for confirmation", field="id",
                           hint="aios confirmations lists them")
        del self.awaiting[call_id]
        now = self.clock.now()
        await self.db.run(lambda e: access.audit(e, now, by, "confirmation.approve" if approve else
                                                 "confirmation.deny", call_id, "allow" if approve else "deny",
                                                 {"pid": ticket.call.pid}))
        if approve:
            try:   # durable before it can run: a write's end commits with its effect, and must come last
                await self._move_durably(ticket, CallState.QUEUED, now)
            except JournalUnavailable as e:
                self._finish(ticket, None, CallState.FAILED, None, ticket.call.usage, e)
                raise
            self._enqueue(ticket)
            return ticket.call
        self._finish(ticket, None, CallState.FAILED, None, ticket.call.usage,
                     PermissionDenied(f"denied by {by}", field="id", hint="the action was not confirmed"))
        return await ticket.wait()

    async def _confirmation_timeout(self, ticket: Ticket) -> None:
        timeout = self.settings.access.confirm_timeout_s
        with anyio.move_on_after(timeout):
            await ticket.done.wait()
            return
        if self.awaiting.pop(ticket.id, None) is None:
            return   # approved meanwhile
        self._audit_soon(ticket.call.principal, "confirmation.timeout", ticket.id, "deny", {"timeout_s": timeout})
        self._finish(ticket, None, CallState.FAILED, None, ticket.call.usage,
                     PermissionDenied(f"not confirmed within {timeout:g} s", field="id",
                                      hint="aios approve ID confirms it in time; access.confirm_timeout_s"))

    def _audit_soon(self, principal: str, action: str, target: str, decision: str, detail: dict[str, Any]) -> None:
        now = self.clock.now()
        assert self._tg is not None
        self._tg.start_soon(self.db.run, lambda e: access.audit(e, now, principal, action, target, decision,
                                                               detail))

    async def call(self, call: Syscall | dict[str, Any], *, pid: int = 0, principal: str = "local") -> Any:
        """Submits and waits: the result, or the call's error raised again."""
        ticket = await self.submit(call, pid=pid, principal=principal)
        return await ticket.result()

    async def cancel(self, call_id: str) -> Syscall:
        ticket = self.tickets.get(call_id)
        if ticket is None:
            call = await self.lookup(call_id)
            return call   # already over: cancelling a finished call changes nothing
        self._abort(ticket, Cancelled("cancelled by its caller"))
        return await ticket.wait()

    async def lookup(self, call_id: str) -> Syscall:
        ticket = self.tickets.get(call_id)
        if ticket is not None:
            return ticket.call
        call = await self.journal.load(call_id)
        if call is None:
            raise NotFound(f"no syscall {call_id!r}", field="id")
        return call

    async def stream(self, ticket: Ticket) -> AsyncIterator[Chunk]:
        """The reply's chunks as they are generated: what came before, piece by piece as it
        came (a call may start, even end, before its caller has its ticket), then the rest;
        raises the call's error at the end if it failed."""
        send, receive = anyio.create_memory_object_stream[Chunk](math.inf)
        for i, part in enumerate(ticket.text_parts):   # the tokens so far, counted on the last piece
            send.send_nowait(Chunk(part, ticket.num_tokens if i == len(ticket.text_parts) - 1 else 0))
        if ticket.done.is_set():
            send.close()
        else:
            ticket.listeners.append(send)
        try:
            async for chunk in receive:
                yield chunk
        finally:   # a reader that leaves early must not break the call it was reading
            if send in ticket.listeners:
                ticket.listeners.remove(send)
            send.close()
            receive.close()
        if ticket.call.error is not None:
            raise AiosError.from_dict(ticket.call.error)

    def set_policy(self, name: str) -> None:
        self.scheduler.set_policy(name)
        for res in self.scheduler:
            self.publish(EventKind.POLICY, data={"resource": res.name, "policy": name})

    def register_tool(self, target: Any, fn: Callable[..., Any] | None = None, **meta: Any) -> ToolSpec:
        """Offers a tool to agents: a ToolSpec, a typed function or class (see aios.tools),
        or `register_tool("name", fn, timeout_s=..., max_concurrency=...)`. A name registered
        again is replaced."""
        if isinstance(target, str):
            if fn is None:
                raise InvalidSyscall("register_tool(name, fn): fn is missing", field="fn")
            return self.tools.add(fn, name=target, replace=True, **meta)
        return self.tools.add(target, replace=True, **meta)

    def tool_listing(self) -> list[dict[str, Any]]:
        """The tools as /v1/tools lists them: name, description, JSON schema, metadata."""
        return [{**t.to_json(), "max_concurrency": t.max_concurrency or self.settings.tool_slots}
                for t in self.tools.values()]

    # ---- processes

    async def spawn(self, name: str, *, principal: str = "local", parent_pid: int | None = None,
                    priority: int = 0, program: str | None = None, task: str = "",
                    runner: str = "inproc", manifest: Manifest | dict[str, Any] | None = None) -> Process:
        """Creates a process; with a program (a .py file, a module or a registered agent
        name) it also starts running `main(task, os)` under the runner. A program that
        cannot be found or imported is refused here, before anything is recorded. Its
        permission manifest (aios.access.manifest) is `manifest`, else the one registered
        with the agent, else the TOML file beside its program; a manifest asking for more
        than the principal (or the parent process) may grant is refused."""
        check_priority(priority)
        if not 0 < len(name) <= 200:
            raise InvalidSyscall("a process name needs 1 to 200 characters", field="name")
        if runner not in RUNNERS:
            raise InvalidSyscall(f"unknown runner {runner!r}", field="runner", hint=f"one of: {', '.join(RUNNERS)}")
        if parent_pid is not None:
            self.processes.check_live(parent_pid)
        prog = resolve(program, self.agents) if program is not None else None
        declared = self._manifest_of(manifest, program, prog)
        if declared is not None and declared.priority_ceiling is not None and priority > declared.priority_ceiling:
            raise PermissionDenied(f"priority {priority} is above the manifest's ceiling {declared.priority_ceiling}",
                                   field="priority")
        effective = await self.guard.decide(principal, declared, parent_pid, name)
        if prog is not None and effective is not None and effective.sandbox and runner != "subprocess":
            raise InvalidSyscall("a sandboxed agent runs only under the subprocess runner", field="runner",
                                 hint="spawn it with runner=subprocess, or drop sandbox from its manifest")
        main = None
        if prog is not None and runner == "inproc":
            main = load_main(prog)
        if prog is not None and runner == "subprocess" and self.endpoint is None:
            raise BackendUnavailable("the subprocess runner needs the kernel's HTTP endpoint",
                                     hint="run agents in subprocesses through the daemon (`aios kernel start`)")
        proc = await self.processes.spawn(name, principal, self.clock.now(), parent_pid=parent_pid,
                                          priority=priority, program=prog.target if prog else None,
                                          runner=runner if prog else None)
        await self.guard.attach(proc.pid, declared, effective)
        self.publish(EventKind.PROCESS, pid=proc.pid, data={"state": proc.state.value, "name": name})
        if prog is not None:
            assert self._tg is not None
            self.supervisor.start(self._tg, proc.pid, self._runner(proc, prog, main), task)
        return proc

    def _runner(self, proc: Process, prog: Program, main: Callable[..., Any] | None) -> Runner:
        """A subprocess agent always gets a token of its own in AIOS_TOKEN, whatever tokens
        exist: a new process token (aios.access) that the server honours only while the
        supervisor runs this process (the runner's environment is its one copy), and only as
        this pid. Never a principal's token: the agent cannot act as its principal's account
        or its other processes, and nothing outlives it."""
        if main is not None:
            return InprocRunner(main, *inproc_clients(self, proc.pid, proc.principal))
        env = {"AIOS_URL": self.endpoint or "", "AIOS_PID": str(proc.pid), "AIOS_TOKEN": access.process_token(proc.pid)}
        manifest = self.guard.manifests.get(proc.pid)
        return SubprocessRunner(prog, env, sandboxed=bool(manifest and manifest.sandbox), private=self.settings.home)

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
        self.processes.check_live(pid)
        self.scheduler.suspend(pid)
        self.supervisor.suspend(pid)
        return await self._set_process_state(pid, ProcState.SUSPENDED)

    async def resume(self, pid: int) -> Process:
        self.processes.check_live(pid)
        self.supervisor.resume(pid)
        self.scheduler.resume(pid)
        return await self._set_process_state(pid, ProcState.RUNNING)

    async def kill(self, pid: int, reason: str = "killed") -> Process:
        """Stops its program, cancels its calls in flight (their slots are released) and
        marks it exited."""
        self.processes.check_live(pid)
        self.supervisor.resume(pid)   # a stopped OS process must run to die
        if await self.supervisor.kill(pid, reason) is None:
            await self._end_calls(pid, f"was {reason}")
            await self._set_process_state(pid, ProcState.EXITED, reason)
        return self.processes.get(pid)

    async def wait(self, pid: int) -> Process:
        """Waits until the process's program ends (at once for a process without one)."""
        self.processes.get(pid)
        await self.supervisor.wait(pid)
        return self.processes.get(pid)

    async def _process_exited(self, pid: int, end: Exit) -> None:
        """The supervisor's report: the program ended; its calls end with it."""
        await self._end_calls(pid, f"ended: {end.reason}")
        await self._set_process_state(pid, ProcState.EXITED, end.reason, exit_code=end.code,
                                      cpu_s=end.cpu_s, max_rss_kib=end.max_rss_kib)

    async def _end_calls(self, pid: int, reason: str) -> None:
        self.scheduler.resume(pid)   # held calls go back to their queues, to be cancelled there
        doomed = [t for t in self.tickets.values() if t.pid == pid]
        for ticket in doomed:
            self._abort(ticket, Cancelled(f"process {pid} {reason}"))
        for ticket in doomed:
            await ticket.done.wait()

    async def _set_process_state(self, pid: int, state: ProcState, reason: str | None = None,
                                 **ended: Any) -> Process:
        proc = await self.processes.set_state(pid, state, self.clock.now(), reason, **ended)
        if state is ProcState.EXITED:
            self.memory.working.pop(pid, None)   # its context is gone with it; its entries stay
        self.publish(EventKind.PROCESS, pid=pid, data={"state": state.value})
        return proc

    # ---- dispatch

    def _admit(self, call: Syscall) -> Resource:
        """Refuses a call the kernel cannot run; returns the resource it will queue for."""
        res = self._resource_of(call)
        if isinstance(call, ToolSyscall):
            self.tools[call.tool].bind(call.arguments)
        elif isinstance(call, StorageSyscall):   # a bad path is refused at once, not after a confirmation
            if call.path:
                check_path(call.path)
            if call.to:
                check_path(call.to, field="to")
        return res

    def _resource_of(self, call: Syscall) -> Resource:
        match call:
            case LLMSyscall():
                slots = self.router.route(call.model).num_slots
            case ToolSyscall():
                tool = self.tools.get(call.tool)
                if tool is None:
                    raise NotFound(f"unknown tool {call.tool!r}", field="tool",
                                   hint=f"tools: {', '.join(sorted(self.tools)) or 'none registered'}")
                slots = tool.max_concurrency or self.settings.tool_slots
            case ProcessSyscall():
                slots = 64
            case _:
                slots = self.settings.memory_slots if call.kind is Kind.MEMORY else self.settings.storage_slots
        return self.scheduler.resource(call.resource, slots)

    def _enqueue(self, ticket: Ticket) -> None:
        call = ticket.call
        self.tickets[call.id] = ticket
        if call.deadline is not None:
            assert self._tg is not None
            self._tg.start_soon(self._expire, ticket)
        assert ticket.res is not None   # found when the call was admitted
        ticket.res.submit(ticket, self.clock.now())

    def _start(self, ticket: Ticket) -> None:
        """The scheduler gave the ticket a slot: an idle worker task runs it, or a new one."""
        if self._idle_workers:
            worker = self._idle_workers.pop()
            worker.ticket = ticket
            worker.wake.set()
        else:
            assert self._tg is not None
            self._tg.start_soon(self._work, ticket)

    async def _work(self, ticket: Ticket) -> None:
        """A worker of the kernel's task group: runs calls one after another, and waits
        idle in between (spawning a task per call costs several times more). Its calls
        run in one cancel scope, which a cancel, a kill, a deadline or a timeout of the
        running call cancels; the next call then gets a new one (a scope per call cost
        more than the rest of the run)."""
        worker = _Worker()
        while True:
            res = ticket.res
            assert res is not None   # it got its slot from this resource
            settled = False
            with anyio.CancelScope() as scope:
                while True:
                    outcome, preempted = await self._run(ticket, scope)
                    settled = True
                    self._settle_safely(ticket, res, outcome, preempted)
                    if scope.cancel_called:   # the call ended although cancelled: the scope is spent
                        break
                    ticket = await self._next(worker)
                    res = ticket.res
                    assert res is not None
                    settled = False
            if not settled:   # the run of `ticket` was cancelled through the scope
                self._settle_safely(ticket, res, None, False)
            ticket = await self._next(worker)

    async def _next(self, worker: _Worker) -> Ticket:
        worker.wake.clear()
        self._idle_workers.append(worker)
        await worker.wake.wait()
        ticket, worker.ticket = worker.ticket, None
        assert ticket is not None
        return ticket

    async def _run(self, ticket: Ticket, scope: anyio.CancelScope) -> tuple[
            tuple[CallState, Any, Usage, AiosError | None] | None, bool]:
        """Runs with the slot held, in the worker's `scope`: returns (outcome, preempted),
        or is cancelled through the scope (the worker then settles the call)."""
        now = self.clock.now()
        started = now if ticket.call.started is None else ticket.call.started   # 0.0 is a time too
        ticket.run_started = now
        ticket.timeout_error = None
        ticket.scope = scope
        if ticket.cancel_error is not None:
            scope.cancel()
        try:
            # a call with side effects outside the database is known to be running
            # before it acts; a write's running record commits with its effect (_seal)
            if ticket.call.kind in (Kind.TOOL, Kind.PROCESS):
                await self._move_durably(ticket, CallState.RUNNING, now, started=started)
            else:
                self._move(ticket, CallState.RUNNING, now, journal=not ticket.call.is_store_write, started=started)
            result, usage = await HANDLERS[ticket.call.kind](self, ticket)
            return (CallState.DONE, result, usage, None), False
        except Preempted:
            return None, True
        except AiosError as e:
            return (CallState.FAILED, None, _partial_usage(ticket), e), False
        except Exception as e:   # a bug: the call fails, the kernel goes on
            log.exception("syscall %s crashed", ticket.id)
            return (CallState.FAILED, None, Usage(), InternalError(f"{type(e).__name__}: {e}")), False
        finally:
            ticket.scope = None
            self.time_limits.clear(ticket)

    def _settle_safely(self, ticket: Ticket, res: Resource,
                       outcome: tuple[CallState, Any, Usage, AiosError | None] | None, preempted: bool) -> None:
        try:
            self._settle(ticket, res, outcome, preempted)
        except Exception:   # a bug in the bookkeeping: end the call anyway, keep the kernel up
            log.exception("syscall %s could not be settled", ticket.id)
            self._drop(ticket, res)

    def _move(self, ticket: Ticket, to: CallState, now: float, *, journal: bool = True, publish: bool = True,
              **changes: Any) -> Flush:
        """The one way a call in the kernel changes state: the ticket gets the new record,
        the journal its move (unless the move commits elsewhere: a write's running record
        commits with its effect), observers the event. Returns the commit the move is in."""
        ticket.call = advance(ticket.call, to, **changes)
        flush = self.journal.append_nowait(ticket.call, now) if journal else Flush.durable()
        if publish:
            self._publish_state(ticket)
        return flush

    async def _move_durably(self, ticket: Ticket, to: CallState, now: float, **changes: Any) -> None:
        """`_move`, published only once its record is durable (JournalUnavailable if not):
        for a call about to act outside the database, or to be queued after a confirmation."""
        await self._move(ticket, to, now, publish=False, **changes).wait()
        self._publish_state(ticket)

    def _settle(self, ticket: Ticket, res: Resource, outcome: tuple[CallState, Any, Usage, AiosError | None] | None,
                preempted: bool) -> None:
        """After a run: re-queue a preempted call, or make it terminal. Nothing here awaits,
        so nothing can interrupt the bookkeeping."""
        now = self.clock.now()
        held = Usage(service_s=now - ticket.run_started)
        if preempted:
            self._move(ticket, CallState.PREEMPTED, now, usage=ticket.call.usage + held,
                       num_preemptions=ticket.call.num_preemptions + 1)
            self._move(ticket, CallState.QUEUED, now)
            res.requeue(ticket, now)
            return
        if ticket.sealed is not None and (outcome is None or outcome[0] is CallState.DONE):
            # the write committed with its end: done, even if a cancel came after the commit
            ticket.call = ticket.sealed
            res.release(ticket, now)
            self.processes.charge(ticket.pid, ticket.call.usage)
            self._finished(ticket, None)
            return
        if outcome is None:   # cancelled: a cancel, a kill, a deadline, shutdown, a timeout
            err = ticket.cancel_error or ticket.timeout_error or Cancelled("cancelled")
            outcome = (_cancel_state(err), None, _partial_usage(ticket), err)
        state, result, usage, err = outcome
        self._finish(ticket, res, state, result, ticket.call.usage + held + usage, err)

    def _seal(self, ticket: Ticket) -> Seal:
        """For a write: journals its running record and its end in the write's own
        transaction (called by the store, in a worker thread), so that the effect and the
        call's `done` commit together or not at all. The kernel's records of the call
        wait for it: nothing else journals the call while it runs."""
        def seal(conn: Connection, result: Any) -> None:
            now = self.clock.now()
            running = ticket.call
            done = advance(running, CallState.DONE, finished=now, result=result,
                           usage=running.usage + Usage(service_s=now - ticket.run_started))
            record_in(conn, [(running, ticket.run_started), (done, now)])
            ticket.sealed = done
        return seal

    def _drop(self, ticket: Ticket, res: Resource) -> None:
        """The last resort for a call the kernel failed to settle: free its slot and wake
        its waiters (its journal record stays unfinished, so the next boot recovers it)."""
        res.running.discard(ticket)
        res.dispatch(self.clock.now())
        self.tickets.pop(ticket.id, None)
        if not ticket.call.is_terminal:
            err = InternalError(f"the kernel failed while finishing syscall {ticket.id}")
            ticket.call = replace(ticket.call, error=err.to_dict())
        ticket.done.set()

    def _finish(self, ticket: Ticket, res: Resource | None, state: CallState, result: Any,
                usage: Usage, err: AiosError | None) -> None:
        """Makes the call terminal and frees its slot now; its waiters wake once the
        terminal record is durable (`_finished`, called by the journal)."""
        now = self.clock.now()
        if ticket.snapshot is not None and isinstance(ticket.call, LLMSyscall):
            self.context.discard(ticket, self.router.route(ticket.call.model))
        if ticket.call.state is CallState.RUNNING and ticket.call.is_store_write:
            self.journal.append_nowait(ticket.call, ticket.run_started)   # it ran, but its effect did not commit
        flush = self._move(ticket, state, now, publish=False, finished=now, result=result, usage=usage,
                           error=err.to_dict() if err else None)
        if res is not None:
            res.release(ticket, now)   # the slot is free before the commit: work-conserving
        self.processes.charge(ticket.pid, usage)
        flush.on_durable(lambda error: self._finished(ticket, error))   # published once durable

    def _finished(self, ticket: Ticket, error: JournalUnavailable | None) -> None:
        if error is not None:
            log.error("could not journal the end of %s: %s", ticket.id, error)
        self.tickets.pop(ticket.id, None)
        if ticket.expiry is not None:
            ticket.expiry.cancel()
        for send in ticket.listeners:
            send.close()
        ticket.listeners.clear()
        self._publish_state(ticket)
        ticket.done.set()

    def _abort(self, ticket: Ticket, error: AiosError) -> None:
        """Ends a call that is not over yet: a running one through its cancel scope, a
        waiting one at once."""
        if ticket.call.is_terminal or ticket.cancel_error is not None:
            return
        ticket.cancel_error = error
        if self.awaiting.pop(ticket.id, None) is not None:
            self._finish(ticket, None, _cancel_state(error), None, ticket.call.usage, error)
            return
        if ticket.scope is not None:
            ticket.scope.cancel()
            return
        res = ticket.res
        if res is not None and res.remove(ticket):
            self._finish(ticket, None, _cancel_state(error), None, ticket.call.usage, error)

    async def _expire(self, ticket: Ticket) -> None:
        """Fails the call at its deadline; cancelled (by `_finished`) when it ends first."""
        assert ticket.call.deadline is not None
        if ticket.done.is_set():
            return
        with anyio.CancelScope() as scope:
            ticket.expiry = scope
            await self.clock.sleep(ticket.call.deadline - self.clock.now())
            self._abort(ticket, DeadlineExceeded(
                f"the call passed its deadline ({ticket.call.deadline - ticket.call.created:g} s after submit)",
                hint="raise timeout_s, lower the load, or raise the call's priority"))

    # ---- events

    def publish(self, kind: EventKind, *, pid: int | None = None, call_id: str | None = None,
                 data: dict[str, Any] | None = None) -> None:
        if self.bus.has_subscribers:
            self.bus.publish(Event(kind, self.clock.now(), pid, call_id, data or {}))

    def _publish_state(self, ticket: Ticket) -> None:
        if self.bus.has_subscribers:
            call = ticket.call
            data = {"state": call.state.value, "kind": call.kind.value, "resource": call.resource}
            if call.is_terminal:   # what observers (metrics, ps) account for a finished call
                u = call.usage
                data.update(latency_s=call.finished - call.created, tokens_in=u.tokens_in,
                            tokens_out=u.tokens_out, cost_usd=u.cost_usd, service_s=u.service_s)
            self.bus.publish(Event(EventKind.CALL_STATE, self.clock.now(), call.pid, call.id, data))


def _partial_usage(ticket: Ticket) -> Usage:
    """What a generation that ended early consumed: its prompt and the tokens it produced
    (charged as if it had finished; a call that never ran consumed nothing)."""
    call = ticket.call
    if not isinstance(call, LLMSyscall) or call.started is None:
        return Usage()
    return Usage(count_tokens(call.messages), ticket.num_tokens)


def _cancel_state(err: AiosError) -> CallState:
    return CallState.CANCELLED if isinstance(err, Cancelled) else CallState.FAILED

