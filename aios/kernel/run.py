"""The run loop (nano-vllm's step, a call at a time): a queued call's ticket gets a slot
from its resource's scheduler, a worker task runs its handler, and the outcome settles it:
queued again if preempted, else terminal. Every state change goes through `_move`.

Invariants: every call ends terminal with its waiter woken, on every path (done, failure,
cancel, kill, deadline, shutdown); a call's slot is released on every path; nothing in
the bookkeeping after a run awaits, so nothing can interrupt it."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from sqlalchemy import Connection

from aios.errors import AiosError, Cancelled, DeadlineExceeded, InternalError, JournalUnavailable
from aios.events import Event, EventBus, EventKind
from aios.kernel.handlers import HANDLERS, Preempted
from aios.llm import count_tokens
from aios.scheduler import Resource, Ticket
from aios.scheduler.ticket import TimeLimits
from aios.storage.journal import Flush, Journal, Seal, record_in
from aios.syscall import CallState, Kind, LLMSyscall, Usage, advance

if TYPE_CHECKING:
    from aios.access.confirm import Confirmations
    from aios.clock import Clock
    from aios.context import ContextManager
    from aios.llm import Router
    from aios.process.table import ProcessTable

log = logging.getLogger("aios.kernel")


class _Worker:
    __slots__ = ("ticket", "wake")

    def __init__(self) -> None:
        self.ticket: Ticket | None = None   # the next call to run, handed over by _start
        self.wake = asyncio.Event()   # asyncio's own: the kernel runs on asyncio, and it is cheaper


class RunLoop:
    """The kernel's run loop, as a base of `Kernel` (which makes the attributes below)."""

    clock: Clock
    bus: EventBus
    journal: Journal
    context: ContextManager
    router: Router
    processes: ProcessTable
    confirmations: Confirmations
    time_limits: TimeLimits
    tickets: dict[str, Ticket]
    _tg: anyio.abc.TaskGroup | None
    _idle_workers: list[_Worker]

    def _enqueue(self, ticket: Ticket) -> None:
        """Queues an admitted call for its resource (a deadline starts counting)."""
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
        if self.confirmations.release(ticket):
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

