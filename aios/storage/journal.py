"""The syscall journal: every syscall and every state change it goes through.

Commits are grouped: records that arrive while a commit is in flight go into the next
one, so many concurrent submits share one fsync. Invariant: `append(..., wait=True)`
returns only once its record is durable, and raises JournalUnavailable if it is not. A
terminal record is final: no later record of the call overwrites it.

A call is acknowledged once its `queued` record is durable. What a crash can leave:
  * a memory or storage write commits its effect and its terminal record in one
    transaction (`record_in`, called by the store inside its own transaction), so it
    either did everything and says `done`, or did nothing and is re-queued: exactly once;
  * a tool or process call's `running` record is durable before it acts, so a call that
    may have acted is seen running and is failed with code `interrupted`, never re-run:
    at most once (a tool gets an idempotency key to make itself safe to retry);
  * queued or preempted calls are re-queued (a preempted one restarts its generation:
    the snapshot lived in memory); running LLM calls and running memory or storage reads
    are re-queued from the start (they have no side effects);
  * a call held for a confirmation fails: nobody confirmed it to this kernel."""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import anyio
import anyio.lowlevel
from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import DBAPIError

from aios.errors import AiosError, JournalUnavailable, PermissionDenied
from aios.storage.db import Database
from aios.storage.models import BootRow, SyscallRow, TransitionRow
from aios.syscall import (SYSCALL_TYPES, TERMINAL, CallState, Kind, MemoryOp, ProcessOp, StorageOp, Syscall, Usage,
                          advance, is_id_prefix, json_text)

log = logging.getLogger(__name__)


class Interrupted(AiosError):
    code = "interrupted"
    status = 409


@dataclass(slots=True)
class Flush:
    """One group commit: its waiters, and callbacks run once it is durable (or failed)."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    error: JournalUnavailable | None = None
    callbacks: list[Callable[[JournalUnavailable | None], None]] = field(default_factory=list)

    async def wait(self) -> None:
        """Returns once the commit is durable; raises its JournalUnavailable if it failed."""
        await self.done.wait()
        if self.error is not None:
            raise self.error

    def on_durable(self, callback: Callable[[JournalUnavailable | None], None]) -> None:
        if self.done.is_set():   # a commit already over (or no commit at all): at once
            callback(self.error)
        else:
            self.callbacks.append(callback)

    @classmethod
    def durable(cls) -> Flush:
        """A commit already over: for a move recorded by some other transaction."""
        flush = cls()
        flush.done.set()
        return flush


@dataclass(frozen=True, slots=True)
class _Record:
    call: Syscall
    at: float
    is_new: bool
    detail: dict[str, Any] | None


class Journal:
    def __init__(self, db: Database):
        self.db = db
        self._pending: list[_Record] = []
        self._flush = Flush()
        self._wake = asyncio.Event()
        self._flushing = anyio.Lock()
        self._unwritten: set[str] = set()   # calls whose first record failed to commit: never journaled again
        self.num_commits = 0
        self.num_records = 0

    async def append(self, call: Syscall, at: float, *, is_new: bool = False, wait: bool = True,
                     detail: dict[str, Any] | None = None) -> None:
        """Records the call's current state (a new row when `is_new`) and its move at `at`."""
        flush = self.append_nowait(call, at, is_new=is_new, detail=detail)
        if wait:
            await flush.wait()

    def append_nowait(self, call: Syscall, at: float, *, is_new: bool = False,
                      detail: dict[str, Any] | None = None) -> Flush:
        """Queues the record for the next commit; returns that commit, to wait on or to
        register `on_durable` callbacks with."""
        flush = self._flush
        self._pending.append(_Record(call, at, is_new, detail))
        self._wake.set()
        return flush

    async def run(self) -> None:
        """The writer task: commits whatever is pending, one transaction at a time. Before
        each commit it lets the tasks that are ready run once, so that records arriving
        in the same instant share the commit."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await anyio.lowlevel.checkpoint()
            await self.flush()

    async def flush(self) -> None:
        """Commits everything pending, in order; concurrent callers take turns."""
        async with self._flushing:
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        while self._pending:
            batch, flush = self._pending, self._flush
            self._pending, self._flush = [], Flush()
            if self._unwritten:   # a later record of a call with no row would fail the whole batch
                batch = [r for r in batch if r.call.id not in self._unwritten]
            try:
                with anyio.CancelScope(shield=True):
                    if batch:
                        await self.db.run(functools.partial(_write, batch=batch))
                self.num_commits += 1
                self.num_records += len(batch)
            except JournalUnavailable as e:
                log.error("journal commit of %d records failed: %s", len(batch), e)
                flush.error = e
            except Exception as e:   # a record that cannot be written must not stop the writer
                log.exception("journal commit of %d records failed", len(batch))
                flush.error = JournalUnavailable(f"the journal could not write a batch: {type(e).__name__}: {e}")
            finally:
                if flush.error is not None:
                    self._unwritten.update(r.call.id for r in batch if r.is_new)
                flush.done.set()
                for callback in flush.callbacks:
                    callback(flush.error)

    async def load(self, call_id: str) -> Syscall | None:
        def read(engine: Engine) -> Any:
            with engine.connect() as conn:
                return conn.execute(select(SyscallRow.__table__).where(SyscallRow.id == call_id)).first()
        row = await self.db.run(read)
        return None if row is None else from_row(row._mapping)

    async def history(self, principal: str, *, pids: list[int] | None = None, state: CallState | None = None,
                      since: float | None = None, before: str | None = None, prefix: str | None = None,
                      limit: int = 50) -> list[Syscall]:
        """The principal's journaled calls, newest first (ids sort by creation): of the
        processes `pids` if given (0: the principal's own account), in `state`, made at or
        after `since`, older than the call `before` (the page before it), whose id starts
        with `prefix` (hex digits)."""
        query = select(SyscallRow.__table__).where(SyscallRow.principal == principal)
        if prefix is not None:
            assert is_id_prefix(prefix)   # no LIKE wildcard in it
            query = query.where(SyscallRow.id.like(f"{prefix}%"))
        if pids is not None:
            query = query.where(SyscallRow.pid.in_(pids))
        if state is not None:
            query = query.where(SyscallRow.state == state.value)
        if since is not None:
            query = query.where(SyscallRow.created >= since)
        if before is not None:
            query = query.where(SyscallRow.id < before)
        query = query.order_by(SyscallRow.id.desc()).limit(limit)

        def read(engine: Engine) -> Any:
            with engine.connect() as conn:
                return conn.execute(query).all()
        return [from_row(row._mapping) for row in await self.db.run(read)]

    async def transitions(self, call_id: str) -> list[tuple[str, float, Any]]:
        def read(engine: Engine) -> list[tuple[str, float, Any]]:
            with engine.connect() as conn:
                rows = conn.execute(select(TransitionRow.state, TransitionRow.at, TransitionRow.detail)
                                    .where(TransitionRow.call_id == call_id).order_by(TransitionRow.id))
                return [tuple(r) for r in rows]
        return await self.db.run(read)

    async def recover(self, now: float) -> tuple[list[Syscall], list[Syscall]]:
        """Applies the recovery rule (module docstring) to calls left unfinished by a crash.
        Returns (calls to re-queue, calls failed); both are journaled before it returns."""
        def read(engine: Engine) -> list[Any]:
            with engine.connect() as conn:
                live = (CallState.QUEUED, CallState.RUNNING, CallState.PREEMPTED, CallState.WAITING_CONFIRMATION)
                return list(conn.execute(select(SyscallRow.__table__).where(SyscallRow.state.in_(live))
                                         .order_by(SyscallRow.created)))
        requeued, failed = [], []
        for row in await self.db.run(read):
            call = from_row(row._mapping)
            detail = {"recovered": True}
            if call.state is CallState.WAITING_CONFIRMATION:
                err = PermissionDenied("the kernel restarted before this irreversible action was confirmed",
                                       hint="submit it again, then approve it")
                call = advance(call, CallState.FAILED, finished=now, error=err.to_dict())
                await self.append(call, now, wait=False, detail=detail)
                failed.append(call)
                continue
            # (a write is never seen running: its running and end records commit with its
            # effect; one seen so was journaled by an older kernel, and fails as interrupted)
            if call.state is CallState.RUNNING and not call.is_effect_free:
                err = Interrupted(f"the kernel stopped while this {call.kind} call was running; "
                                  "it was not re-run because it may already have acted",
                                  hint="check its effect, then submit it again if needed")
                call = advance(call, CallState.FAILED, finished=now, error=err.to_dict())
                await self.append(call, now, wait=False, detail=detail)
                failed.append(call)
                continue
            if call.state is CallState.RUNNING:
                call = advance(call, CallState.PREEMPTED)
                await self.append(call, now, wait=False, detail=detail)
            if call.state is CallState.PREEMPTED:
                call = advance(call, CallState.QUEUED)
                await self.append(call, now, wait=False, detail=detail)
            requeued.append(call)
        flush = self._flush   # the batch these records are in (flush() replaces self._flush)
        await self.flush()
        if flush.error:
            raise flush.error

        def note(engine: Engine) -> None:
            with engine.begin() as conn:
                last = conn.execute(select(BootRow.id).order_by(BootRow.id.desc()).limit(1)).scalar()
                conn.execute(update(BootRow).where(BootRow.id == last)
                             .values(num_requeued=len(requeued), num_failed=len(failed)))
        await self.db.run(note)
        return requeued, failed


_COLUMNS = ("id", "kind", "pid", "principal", "priority", "deadline", "state", "payload", "result",
            "error", "created", "started", "finished", "tokens_in", "tokens_out", "cost_usd",
            "service_s", "num_preemptions")
_UPDATE_COLUMNS = ("state", "result", "error", "started", "finished", "tokens_in", "tokens_out",
                   "cost_usd", "service_s", "num_preemptions")
_MOVE_COLUMNS = ("call_id", "state", "at", "detail")
MAX_ROWS_PER_STATEMENT = 400   # 18 parameters a row: well within SQLite's 32766 and PostgreSQL's 65535


def _json(value: Any) -> str | None:
    return None if value is None else json_text(value)


def _row(call: Syscall) -> tuple[Any, ...]:
    """The row of `call`, in _COLUMNS order, with JSON columns encoded."""
    u = call.usage
    return (call.id, call.kind.value, call.pid, call.principal, call.priority, call.deadline,
            call.state.value, call.payload_text or _json(call.payload()), _json(call.result), _json(call.error),
            call.created, call.started, call.finished, u.tokens_in, u.tokens_out, u.cost_usd,
            u.service_s, call.num_preemptions)


# The journal is the hot path of every syscall: a batch goes to the database as one
# statement for its calls' rows and one for their moves, not one a row (one trip into the
# database, and one release of the GIL, instead of hundreds), in the driver's own SQL,
# plain enough for SQLite and PostgreSQL.

@functools.lru_cache(maxsize=MAX_ROWS_PER_STATEMENT)
def _upsert_sql(paramstyle: str, num_rows: int) -> str:
    """The calls' rows: a new call inserted, a known one updated unless it is terminal."""
    mark = "?" if paramstyle == "qmark" else "%s"
    row = f"({', '.join([mark] * len(_COLUMNS))})"
    final = ", ".join(f"'{s.value}'" for s in TERMINAL)
    return (f"INSERT INTO syscalls ({', '.join(_COLUMNS)}) VALUES {', '.join([row] * num_rows)} "
            f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _UPDATE_COLUMNS)} "
            f"WHERE syscalls.state NOT IN ({final})")


@functools.lru_cache(maxsize=MAX_ROWS_PER_STATEMENT)
def _moves_sql(paramstyle: str, num_moves: int) -> str:
    mark = "?" if paramstyle == "qmark" else "%s"
    move = f"({', '.join([mark] * len(_MOVE_COLUMNS))})"
    return f"INSERT INTO syscall_transitions ({', '.join(_MOVE_COLUMNS)}) VALUES {', '.join([move] * num_moves)}"


def _write(engine: Engine, batch: list[_Record]) -> None:
    """One group commit, on a pooled connection's driver connection directly: the batch's
    two statements and the commit are all it does (SQLAlchemy's per-statement machinery
    cost the writer more than the statements). On failure it rolls back and raises."""
    error = engine.dialect.loaded_dbapi.Error
    try:
        raw = engine.raw_connection()
    except error as e:   # the database is down: said as SQLAlchemy says it, for Database.run to describe
        raise DBAPIError.instance(None, None, e, error) from None
    try:
        cursor = raw.cursor()
        try:
            _write_rows(cursor.execute, engine.dialect.paramstyle, batch)
        finally:
            cursor.close()
        raw.commit()
    except error as e:
        raw.invalidate()   # not back to the pool: the next batch gets a fresh connection
        raise DBAPIError.instance(None, None, e, error) from None
    except BaseException:
        raw.invalidate()
        raise
    raw.close()   # back to the pool


# Called by a store inside the transaction of a write, with the write's result: journals
# the call's end in that transaction (Kernel._seal makes one per call).
Seal = Callable[[Connection, Any], None]


def record_in(conn: Connection, moves: list[tuple[Syscall, float]]) -> None:
    """Journals the moves of existing calls ((the call in its new state, when)) in the
    caller's transaction: a store commits a write's effect and its terminal record together."""
    _write_rows(conn.exec_driver_sql, conn.dialect.paramstyle, [_Record(call, at, False, None) for call, at in moves])


def _write_rows(execute: Callable[[str, tuple[Any, ...]], Any], paramstyle: str, batch: list[_Record]) -> None:
    """Writes the batch with `execute(sql, parameters)`: the latest row of each call, and
    every move."""
    latest: dict[str, Syscall] = {}   # each call's row as of its last record in the batch
    moves: list[Any] = []
    for rec in batch:
        latest[rec.call.id] = rec.call
        moves += (rec.call.id, rec.call.state.value, rec.at, _json(rec.detail))
    rows = [_row(c) for c in latest.values()]
    n, width = MAX_ROWS_PER_STATEMENT, len(_MOVE_COLUMNS)
    for i in range(0, len(rows), n):
        chunk = rows[i:i + n]
        execute(_upsert_sql(paramstyle, len(chunk)), tuple(chain.from_iterable(chunk)))
    for i in range(0, len(moves), n * width):
        chunk = moves[i:i + n * width]
        execute(_moves_sql(paramstyle, len(chunk) // width), tuple(chunk))


def from_row(row: Any) -> Syscall:
    cls = SYSCALL_TYPES[Kind(row["kind"])]
    payload = dict(row["payload"] or {})
    return cls(id=row["id"], pid=row["pid"], principal=row["principal"], priority=row["priority"],
               deadline=row["deadline"], state=CallState(row["state"]), created=row["created"],
               started=row["started"], finished=row["finished"],
               usage=Usage(row["tokens_in"], row["tokens_out"], row["cost_usd"], row["service_s"]),
               num_preemptions=row["num_preemptions"], result=row["result"], error=row["error"],
               **_payload_types(cls, payload))


_OPS = {Kind.MEMORY: MemoryOp, Kind.STORAGE: StorageOp, Kind.PROCESS: ProcessOp}


def _payload_types(cls: type[Syscall], payload: dict[str, Any]) -> dict[str, Any]:
    """JSON gives enums back as strings; turn op fields into their enums again."""
    if "op" in payload and cls.kind in _OPS:
        payload["op"] = _OPS[cls.kind](payload["op"])
    return payload
