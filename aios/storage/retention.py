"""Retention: how long the history of agents is kept (`retention_days`), applied at boot,
every hour while the kernel runs, and by `aios gc`.

History is what the kernel recorded about work that is over: the journal's ended calls
(their rows and moves), exited processes and their logs (output, and the trace of their
steps). It goes once it is older than the cutoff: a call when it ended before it, a
process when it exited before it. Data is not history: the files and memory entries an
agent left are never removed here, and a process that still owns some keeps its row (so
`--pid N` still reaches them); only its logs go.
Calls still queued or running, live processes and the access audit log are never touched."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, exists, func, select

from aios.storage.models import FileVersionRow, ManifestRow, MemoryRow, ProcessRow, SyscallRow, TransitionRow
from aios.syscall import TERMINAL

log = logging.getLogger(__name__)

CHUNK = 500   # ids per DELETE: within every driver's parameter limit


@dataclass(frozen=True, slots=True)
class Collected:
    """What one collection removed (or, dry, would remove)."""
    cutoff: float
    dry_run: bool
    num_syscalls: int = 0
    num_processes: int = 0
    num_logs: int = 0
    log_bytes: int = 0
    remaining: dict[str, int] = field(default_factory=dict)   # the calls and processes still recorded
    pids: tuple[int, ...] = field(default=(), repr=False)   # the processes whose rows went

    def to_dict(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff, "dry_run": self.dry_run, "num_syscalls": self.num_syscalls,
                "num_processes": self.num_processes, "num_logs": self.num_logs, "log_bytes": self.log_bytes,
                "remaining": self.remaining}


def cutoff(now: float, retention_days: float, older_than_s: float | None = None) -> float:
    """The time before which history goes: `older_than_s` ago if given, else
    `retention_days` ago; a retention of 0 keeps everything (the cutoff is the epoch)."""
    if older_than_s is None:
        return now - retention_days * 86400 if retention_days else 0.0
    return now - older_than_s


def collect(engine: Engine, logs: Path, cutoff: float, *, dry_run: bool = False) -> Collected:
    """Removes the history that ended before `cutoff` (module docstring), in one
    transaction for the database; log files go after it commits."""
    with engine.begin() as conn:
        calls = [i for (i,) in conn.execute(select(SyscallRow.id).where(
            SyscallRow.state.in_([s.value for s in TERMINAL]), SyscallRow.finished < cutoff))]
        expired = [p for (p,) in conn.execute(select(ProcessRow.pid).where(
            ProcessRow.state == "exited", ProcessRow.exited < cutoff))]
        owns_data = (exists().where(FileVersionRow.pid == ProcessRow.pid)
                     | exists().where(MemoryRow.pid == ProcessRow.pid))
        kept = {p for (p,) in conn.execute(select(ProcessRow.pid).where(ProcessRow.pid.in_(expired), owns_data))} \
            if expired else set()
        gone = [p for p in expired if p not in kept]
        if not dry_run:
            for chunk in _chunks(calls):
                conn.execute(delete(TransitionRow).where(TransitionRow.call_id.in_(chunk)))
                conn.execute(delete(SyscallRow).where(SyscallRow.id.in_(chunk)))
            for chunk in _chunks(gone):
                conn.execute(delete(ManifestRow).where(ManifestRow.pid.in_(chunk)))
                conn.execute(delete(ProcessRow).where(ProcessRow.pid.in_(chunk)))
        remaining = {"syscalls": conn.execute(select(func.count()).select_from(SyscallRow)).scalar() or 0,
                     "processes": conn.execute(select(func.count()).select_from(ProcessRow)).scalar() or 0}
    files = [f for pid in expired for f in (logs / f"proc-{pid}.log", logs / f"proc-{pid}.trace.jsonl") if f.is_file()]
    size = 0
    for f in files:
        try:
            size += f.stat().st_size
            if not dry_run:
                f.unlink()
        except OSError as e:   # one log that cannot go does not stop the rest
            log.warning("retention could not remove %s: %s", f, e.strerror)
    return Collected(cutoff, dry_run, len(calls), len(gone), len(files), size, remaining, tuple(gone))


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
