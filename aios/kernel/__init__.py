"""The kernel: boots the managers, admits and dispatches calls, shuts down cleanly.

    async with Kernel(settings) as k:
        ticket = await k.submit({"kind": "llm", "model": "sim-llama-3-8b", "messages": [...]})
        result = await ticket.result()

A call's way through, each step once: decoded (aios.syscall.new_call: payload checked,
paths normalised), its process live, checked (aios.access Guard.admit: manifest, shared
memory, confirmation, audit), admitted (`_admit`: its resource found, a tool's arguments
bound), journaled durably, then queued (aios.scheduler) or held for a confirmation
(aios.access.confirm); the run loop (aios.kernel.run) runs it with a handler
(aios.kernel.handlers) and settles it. The process lifecycle is aios.process.lifecycle.

Invariants: `submit` returns only once the call's record is durable; every call ends
terminal with its waiter woken, on every path (done, failure, cancel, kill, deadline,
shutdown); a call's slot is released on every path."""
from __future__ import annotations

import gc
import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import anyio
import anyio.abc

from aios.access.confirm import Confirmations
from aios.access.guard import Guard
from aios.access.manifest import Manifest
from aios.clock import Clock, VirtualClock, WallClock
from aios.config import HardwareBackendSettings, LiteLLMBackendSettings, Settings
from aios.context import ContextManager
from aios.errors import (AiosError, BackendUnavailable, Cancelled, InvalidSyscall, JournalUnavailable, NotFound)
from aios.events import EventBus, EventKind
from aios.kernel.gate import ToolGate
from aios.kernel.run import RunLoop, _Worker
from aios.llm import Backend, Chunk, Router
from aios.llm.simulated import ENGINES
from aios.llm.provider import LiteLLMBackend
from aios.memory import MemoryManager
from aios.process import Process
from aios.process.lifecycle import Lifecycle
from aios.process.table import ProcessTable
from aios.scheduler import Scheduler, Ticket
from aios.scheduler.ticket import TimeLimits
from aios.storage import Database, FileStore, Journal
from aios.storage.lease import Holder
from aios.storage.retention import Collected
from aios.tools.entries import register_at_boot
from aios.tools.registry import ToolRegistry, ToolSpec
from aios.syscall import (CallState, Kind, LLMSyscall, ProcessSyscall, Syscall, ToolSyscall, is_id_prefix,
                          new_call, one_by_prefix)

log = logging.getLogger(__name__)
MAX_PAGE = 500   # calls in one page of history


def build_backends(settings: Settings, clock: Clock) -> list[Backend]:
    makers = {HardwareBackendSettings: lambda s: ENGINES[s.engine](s, clock),
              LiteLLMBackendSettings: lambda s: LiteLLMBackend(s)}
    return [makers[type(b)](b) for b in settings.backends]


class Kernel(RunLoop):
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
        self.endpoint: str | None = None          # the REST URL serving this kernel, if any
        self.lifecycle = Lifecycle(self, self._end_calls)
        self.supervisor = self.lifecycle.supervisor
        self.confirmations = Confirmations(self.guard, settings.access.confirm_timeout_s,
                                           approve=self._approved, refuse=self._refused)
        self.tickets: dict[str, Ticket] = {}     # calls in flight, by id
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
        self.guard.start_soon = self._tg.start_soon
        self.lifecycle.tg = self._tg
        try:
            if isinstance(self.clock, VirtualClock):
                self._tg.start_soon(self.clock.run)
            self._tg.start_soon(self.journal.run)
            now = self.clock.now()
            await self.processes.load(now)
            await self.guard.load()
            await register_at_boot(self)   # [tools.python], aios tools add: before recovery, which calls them
            requeued, failed = await self.journal.recover(now)
            for call in requeued:
                if call.pid and not self.processes.is_live(call.pid):
                    call = replace(call, pid=0)   # its process died with the old kernel
                ticket = Ticket(call, next(self._seq))
                try:
                    self._admit(ticket)
                except (NotFound, InvalidSyscall) as e:   # a tool not registered before boot, a model no longer served
                    self.tickets[call.id] = ticket
                    self._finish(ticket, None, CallState.FAILED, None, call.usage, e)
                    await ticket.done.wait()
                    continue
                self._enqueue(ticket)
            if self.settings.retention_days:
                self._tg.start_soon(self.lifecycle.collect_hourly)
            if requeued or failed:
                log.warning("recovered %d calls (re-queued), failed %d that were running",
                            len(requeued), len(failed))
        except BaseException:
            self._tg.cancel_scope.cancel()
            await self._tg.__aexit__(None, None, None)
            self.db.close()
            raise
        # What exists now (the libraries' ~100k objects, the settings, the recovered state)
        # lives as long as the kernel: frozen out of the cyclic collector's way (gc.freeze),
        # a full collection walks only what the kernel made since, not all of it on each
        # pass (measured: half the collector's time under load). Shutdown unfreezes. (No
        # gc.collect first: it costs ~45 ms of boot, to free the little garbage of startup.)
        gc.freeze()
        self.is_accepting = True
        self.publish(EventKind.KERNEL, data={"state": "booted"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            with anyio.CancelScope(shield=True):
                await self.shutdown(drain=self.settings.shutdown == "drain" and exc[0] is None)
        finally:
            gc.unfreeze()
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
        for ticket in self.confirmations:   # nobody is left to confirm them
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
        proc = self._caller(call)
        tool = self.tools.get(call.tool) if isinstance(call, ToolSyscall) else None
        call = await self.guard.admit(call, proc, self.processes.procs, (t.call for t in self.tickets.values()),
                                      tool, detail={"id": call.id})
        ticket = Ticket(call, next(self._seq))
        self._admit(ticket, tool)
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

    def _caller(self, call: Syscall) -> Process | None:
        """The process a call is made as: a live one; or an exited one for a read of what it
        left (its files and memory stay its principal's to read); Conflict otherwise."""
        if not call.pid:
            return None
        proc = self.processes.get(call.pid)
        if call.kind in (Kind.STORAGE, Kind.MEMORY) and call.is_effect_free:
            return proc
        return self.processes.check_live(call.pid)

    def _admit(self, ticket: Ticket, tool: ToolSpec | None = None) -> None:
        """Finds what the call runs on, once: the resource it queues for, and a tool call's
        tool (`tool`, if its caller looked it up already) with its arguments bound. Refuses
        a call the kernel cannot run (an unknown model or tool, arguments the tool does not
        take)."""
        match call := ticket.call:
            case LLMSyscall():
                slots = self.router.route(call.model).num_slots
            case ToolSyscall():
                tool = tool or self.tools.get(call.tool)
                if tool is None:
                    raise NotFound(f"unknown tool {call.tool!r}", field="tool",
                                   hint=f"tools: {', '.join(sorted(self.tools)) or 'none registered'}")
                ticket.tool, ticket.arguments = tool, tool.bind(call.arguments)
                slots = tool.max_concurrency or self.settings.tool_slots
            case ProcessSyscall():
                slots = 64
            case _:
                slots = self.settings.memory_slots if call.kind is Kind.MEMORY else self.settings.storage_slots
        ticket.res = self.scheduler.resource(call.resource, slots)

    def _accept(self, ticket: Ticket) -> None:
        self.num_submitted += 1
        self._publish_state(ticket)
        if ticket.call.state is CallState.WAITING_CONFIRMATION:
            assert self._tg is not None
            self.confirmations.hold(ticket, self._tg)
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
        return ToolGate(call, self.processes, self.guard, self.files, self.memory, self.clock)

    # ---- confirmation of irreversible actions (aios.access.confirm holds them)

    def pending_confirmations(self, principal: str | None = None) -> list[Syscall]:
        """Calls held for a yes or no, oldest first (`principal`: only its own)."""
        return self.confirmations.pending(principal)

    async def confirm(self, call_id: str, *, approve: bool, by: str, is_admin: bool = False) -> Syscall:
        """Approves (the call is queued) or denies (it fails with PermissionDenied) a held
        call. The call's own principal or an admin may; anyone else gets NotFound."""
        return await self.confirmations.confirm(call_id, approve=approve, by=by, is_admin=is_admin)

    async def _approved(self, ticket: Ticket) -> None:
        try:   # durable before it can run: a write's end commits with its effect, and must come last
            await self._move_durably(ticket, CallState.QUEUED, self.clock.now())
        except JournalUnavailable as e:
            self._finish(ticket, None, CallState.FAILED, None, ticket.call.usage, e)
            raise
        self._enqueue(ticket)

    def _refused(self, ticket: Ticket, error: AiosError) -> None:
        self._finish(ticket, None, CallState.FAILED, None, ticket.call.usage, error)

    async def call(self, call: Syscall | dict[str, Any], *, pid: int = 0, principal: str = "local") -> Any:
        """Submits and waits: the result, or the call's error raised again."""
        ticket = await self.submit(call, pid=pid, principal=principal)
        return await ticket.result()

    async def cancel(self, call_id: str) -> Syscall:
        """Cancels a call in flight (`call_id`: its whole id); a call already over is
        answered as it ended."""
        ticket = self.tickets.get(call_id)
        if ticket is None:
            call = await self.lookup(call_id)
            return call   # already over: cancelling a finished call changes nothing
        self._abort(ticket, Cancelled("cancelled by its caller"))
        return await ticket.wait()

    async def lookup(self, call_id: str, *, principal: str | None = None, viewer: int = 0) -> Syscall:
        """The call, in flight or journaled. For a caller (`principal`, and `viewer`, the
        process it speaks as, 0 for its own account): only a call it may see
        (ProcessTable.sees_call; NotFound for any other), by its id or by any unique
        prefix of it of 4 or more digits, as git takes commit ids."""
        ticket = self.tickets.get(call_id)
        call = ticket.call if ticket is not None else await self.journal.load(call_id)
        if call is None and principal is not None and is_id_prefix(call_id):
            seen = {t.id: t.call for t in self.tickets.values() if t.id.startswith(call_id)}
            journaled = await self.journal.history(principal, prefix=call_id)
            seen.update((c.id, c) for c in journaled if c.id not in seen)
            mine = {i: c for i, c in seen.items() if self.processes.sees_call(principal, viewer, c)}
            found = one_by_prefix(call_id, mine, "syscall")
            call = mine[found] if found is not None else None
        if call is None or (principal is not None and not self.processes.sees_call(principal, viewer, call)):
            raise NotFound(f"no syscall {call_id!r}", field="id")
        return call

    async def history(self, principal: str, viewer: int = 0, *, pid: int | None = None,
                      state: CallState | None = None, since: float | None = None, before: str | None = None,
                      limit: int = 50) -> list[Syscall]:
        """The calls the caller may see (of its principal; an agent's: its own and its
        descendants'), newest first, as the journal has them and the kernel knows them now:
        of the process `pid` (NotFound if the caller may not see it; 0 for the account's
        own), in `state`, made since `since`, the page older than the call `before`."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidSyscall(f"limit must be 1 to {MAX_PAGE}, not {limit}", field="limit")
        if pid is not None:
            if pid:
                self.processes.find(principal, viewer, pid)
            elif viewer:
                raise NotFound("no process 0", field="pid", hint="an agent sees its own calls and its descendants'")
            pids: list[int] | None = [pid]
        else:
            pids = None if not viewer else [p.pid for p in self.processes.visible(principal, viewer, True)]
        calls = await self.journal.history(principal, pids=pids, state=state, since=since, before=before,
                                           limit=limit)
        # a call in flight as the kernel knows it now (its record may lag a move); one that
        # left `state` since stays on its page, so pages stay whole
        return [self.tickets[c.id].call if c.id in self.tickets else c for c in calls]

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

    # ---- processes (aios.process.lifecycle)

    async def spawn(self, name: str, *, principal: str = "local", parent_pid: int | None = None,
                    priority: int = 0, program: str | None = None, task: str = "",
                    runner: str = "inproc", manifest: Manifest | dict[str, Any] | None = None,
                    model: str | None = None) -> Process:
        """Creates a process; with a program (a .py file, a module or a registered agent
        name) it also starts running `main(task, os)` under the runner (Lifecycle.spawn)."""
        return await self.lifecycle.spawn(name, principal=principal, parent_pid=parent_pid, priority=priority,
                                          program=program, task=task, runner=runner, manifest=manifest,
                                          model=model)

    def register_agent(self, name: str, program: str, manifest: Manifest | dict[str, Any] | None = None) -> None:
        """Makes `aios run NAME` and spawn(program=NAME) run `program` (a file or module),
        under `manifest` if given."""
        self.lifecycle.register_agent(name, program, manifest)

    async def suspend(self, pid: int) -> Process:
        return await self.lifecycle.suspend(pid)

    async def resume(self, pid: int) -> Process:
        return await self.lifecycle.resume(pid)

    async def kill(self, pid: int, reason: str = "killed") -> Process:
        """Stops its program, cancels its calls in flight (their slots are released) and
        marks it exited."""
        return await self.lifecycle.kill(pid, reason)

    async def wait(self, pid: int) -> Process:
        """Waits until the process's program ends (at once for a process without one)."""
        return await self.lifecycle.wait(pid)

    async def collect(self, older_than_s: float | None = None, *, dry_run: bool = False) -> Collected:
        """Removes the history of ended calls and exited processes older than `older_than_s`
        (default: retention_days); their files and memory stay (aios.storage.retention)."""
        return await self.lifecycle.collect(older_than_s, dry_run=dry_run)

    async def _end_calls(self, pid: int, reason: str) -> None:
        """Cancels the process's calls in flight, and waits until they have ended."""
        self.scheduler.resume(pid)   # held calls go back to their queues, to be cancelled there
        doomed = [t for t in self.tickets.values() if t.pid == pid]
        for ticket in doomed:
            self._abort(ticket, Cancelled(f"process {pid} {reason}"))
        for ticket in doomed:
            await ticket.done.wait()
