"""The process table: live processes in memory, every process in the database.

Invariant: pids are never reused, across restarts too; a process that was alive when
the kernel died is marked exited on the next boot."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from aios.errors import Conflict, NotFound
from aios.process import Process, ProcState
from aios.storage.db import Database
from aios.storage.models import ProcessRow
from aios.syscall import Usage, evolve


PS_HINT = "aios ps --all lists your processes, those that have exited too"


class ProcessTable:
    def __init__(self, db: Database):
        self.db = db
        self.procs: dict[int, Process] = {}
        self._next_pid = 1

    async def load(self, now: float) -> None:
        """At boot: the processes of earlier boots, all exited now (their history stays
        reachable: `aios ps --all`, logs, files; retention bounds how many there are)."""
        def read(engine: Engine) -> tuple[int, list[Any]]:
            with engine.begin() as conn:
                conn.execute(update(ProcessRow).where(ProcessRow.state != ProcState.EXITED.value)
                             .values(state=ProcState.EXITED.value, exited=now, exit_reason="kernel restarted"))
                rows = list(conn.execute(select(ProcessRow.__table__).order_by(ProcessRow.pid)))
                return conn.execute(select(func.max(ProcessRow.pid))).scalar() or 0, rows
        last, rows = await self.db.run(read)
        self.procs.update((row.pid, _from_row(row._mapping)) for row in rows)
        self._next_pid = last + 1

    def forget(self, pids: Iterable[int]) -> None:
        """Drops exited processes whose records retention removed (aios.storage.retention)."""
        for pid in pids:
            proc = self.procs.get(pid)
            if proc is not None and proc.state is ProcState.EXITED:
                del self.procs[pid]

    async def spawn(self, name: str, principal: str, now: float, *, parent_pid: int | None = None,
                    priority: int = 0, program: str | None = None, runner: str | None = None) -> Process:
        proc = Process(self._next_pid, name, principal, parent_pid, priority, ProcState.RUNNING, now,
                       program=program, runner=runner)
        self._next_pid += 1
        self.procs[proc.pid] = proc

        def write(engine: Engine) -> None:
            with engine.begin() as conn:
                conn.execute(insert(ProcessRow).values(
                    pid=proc.pid, name=name, principal=principal, parent_pid=parent_pid,
                    priority=priority, state=proc.state.value, created=now, program=program, runner=runner))
        await self.db.run(write)
        return proc

    def get(self, pid: int) -> Process:
        try:
            return self.procs[pid]
        except KeyError:
            raise NotFound(f"no process {pid}", field="pid", hint=PS_HINT) from None

    # ---- the one visibility rule (the server, the in-process transport and the handlers use it)

    def find(self, principal: str, viewer: int, pid: int | None, field: str = "pid") -> Process:
        """The process `pid` as the caller (`principal`, and its process `viewer`, 0 for the
        principal's own account) may see it; NotFound for any other: another principal's
        does not exist for the caller, nor, for an agent, one that is not itself or its
        descendant."""
        proc = self.procs.get(pid) if pid is not None else None
        if proc is None or proc.principal != principal or not self.sees(viewer, proc.pid):
            raise NotFound(f"no process {pid}", field=field, hint=PS_HINT)
        return proc

    def visible(self, principal: str, viewer: int, include_exited: bool = False) -> list[Process]:
        """The processes the caller may see (see `find`), live ones only unless asked."""
        return [p for p in self.procs.values() if p.principal == principal and self.sees(viewer, p.pid)
                and (include_exited or p.state is not ProcState.EXITED)]

    def sees_call(self, principal: str, viewer: int, call: Any) -> bool:
        """Whether the caller may see a syscall: one of its principal, made by a process it
        may see (or by the principal's own account, for the account itself)."""
        return call.principal == principal and self.sees(viewer, call.pid)

    def sees(self, viewer: int, pid: int) -> bool:
        """Whether an agent process `viewer` may see `pid`: itself or one of its descendants.
        A viewer of 0 is the principal's own account, which sees all of its processes."""
        if viewer == 0:
            return True
        seen: set[int] = set()
        while pid and pid not in seen:
            if pid == viewer:
                return True
            seen.add(pid)
            proc = self.procs.get(pid)
            pid = proc.parent_pid if proc is not None and proc.parent_pid is not None else 0
        return False

    def is_live(self, pid: int) -> bool:
        proc = self.procs.get(pid)
        return proc is not None and proc.state is not ProcState.EXITED

    def check_live(self, pid: int) -> Process:
        proc = self.get(pid)
        if proc.state is ProcState.EXITED:
            raise Conflict(f"process {pid} has exited", field="pid")
        return proc

    def charge(self, pid: int, usage: Usage) -> None:
        proc = self.procs.get(pid)
        if proc is not None:
            self.procs[pid] = evolve(proc, usage=proc.usage + usage)   # on every syscall: no __init__

    async def set_state(self, pid: int, state: ProcState, now: float, reason: str | None = None,
                        **ended: Any) -> Process:
        """Moves a process to `state`; `ended` may carry exit_code, cpu_s and max_rss_kib."""
        proc = self.get(pid)
        exited = now if state is ProcState.EXITED else None
        proc = replace(proc, state=state, exited=exited, exit_reason=reason, **ended)
        self.procs[pid] = proc
        u = proc.usage

        def write(engine: Engine) -> None:
            with engine.begin() as conn:
                conn.execute(update(ProcessRow).where(ProcessRow.pid == pid).values(
                    state=state.value, exited=exited, exit_reason=reason, tokens_in=u.tokens_in,
                    tokens_out=u.tokens_out, cost_usd=u.cost_usd, service_s=u.service_s,
                    exit_code=proc.exit_code, cpu_s=proc.cpu_s, max_rss_kib=proc.max_rss_kib))
        await self.db.run(write)
        return proc


def _from_row(row: Mapping[str, Any]) -> Process:
    return Process(row["pid"], row["name"], row["principal"], row["parent_pid"], row["priority"],
                   ProcState(row["state"]), row["created"], row["exited"], row["exit_reason"],
                   Usage(row["tokens_in"], row["tokens_out"], row["cost_usd"], row["service_s"]),
                   row["program"], row["runner"], row["exit_code"], row["cpu_s"] or 0.0, row["max_rss_kib"] or 0)
