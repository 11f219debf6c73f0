"""The lease: one kernel per database. A kernel takes it before it migrates, recovers or
writes anything, and holds it until it closes; a second kernel on the same database is
refused with KernelRunning, which names the holder. Commands that only open the database
(`aios token`, `aios user`) are not kernels and take no lease.

- SQLite: an exclusive flock on `<database>.lock`, a file beside the database that records
  the holder (pid, host, start, REST endpoint) as JSON. The operating system drops the lock
  when its process ends, however it ends, so the lock of a killed kernel is free: the next
  kernel takes it over and logs whose it was (the record is cleared on a clean release, so
  a record found under a free lock is a kernel that died holding it). `:memory:`
  databases belong to one connection of one kernel and need no lease.
- PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock(LEASE_KEY)`) held on a
  connection of the lease's own; PostgreSQL drops it when that session ends. Advisory locks
  are scoped to the current database, so one fixed key serves every database on a server.
  The holder is recorded (after the migrations, in the boot's transaction) in the row
  `kernel_leases.name = 'kernel'`, whose `epoch` counts the takes.

Invariant: while a kernel holds the lease, no other kernel migrates, recovers or writes
the database.

Scale-out (several kernels on one PostgreSQL) extends this without a new mechanism: a
kernel takes one lease per shard it serves (a `kernel_leases` row and an advisory key per
name), and `epoch` becomes its fencing token, carried by its writes and checked by the
database, so a kernel that lost its session cannot write after another took its shard.
Until then a session lost while the kernel runs (PostgreSQL restarted) loses the lock with
it, and the kernel does not notice: the gap the fencing token closes.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, create_engine, func, insert, select, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from aios.errors import JournalUnavailable, KernelRunning
from aios.storage.models import LeaseRow

log = logging.getLogger(__name__)

LEASE_NAME = "kernel"   # the whole database; scale-out adds one name per shard
LEASES = LeaseRow.__table__
LEASE_KEY = int.from_bytes(hashlib.sha256(b"aios kernel lease").digest()[:8], "big", signed=True)


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease: a kernel's process, and where it serves."""
    pid: int
    host: str
    started: float                # wall-clock seconds
    endpoint: str | None = None   # its REST URL; None for a kernel inside a program

    @classmethod
    def this_process(cls, endpoint: str | None) -> Holder:
        return cls(os.getpid(), socket.gethostname(), time.time(), endpoint)

    def describe(self) -> str:
        since = datetime.fromtimestamp(self.started, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        serving = f"serving {self.endpoint}" if self.endpoint else "in a program, with no REST endpoint"
        return f"pid {self.pid} on host {self.host}, {serving}, since {since}"


class Lease(Protocol):
    def record(self, conn: Connection) -> None:
        """Records the holder in the database, in the boot's transaction (after the migrations)."""

    def release(self) -> None:
        """Clears the holder's record and gives the lease up; never raises."""


def take(url: str, holder: Holder) -> Lease | None:
    """Takes the lease of the database at `url` for `holder`, or raises KernelRunning naming
    the kernel that holds it; None for a database that needs none (`:memory:`)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        path = lock_path(u)
        return None if path is None else FileLease.take(path, holder, where(u))
    return AdvisoryLease.take(u, holder)


def check(url: str) -> None:
    """Raises KernelRunning when a kernel holds the lease of the database at `url`. Takes
    nothing: for a check before starting (`aios kernel start`); a kernel's own `take` is the
    one that decides."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        path = lock_path(u)
        if path is not None:
            FileLease.check(path, where(u))
    else:
        AdvisoryLease.check(u)


def refusal(where: str, holder: Holder | None) -> KernelRunning:
    if holder is None:
        return KernelRunning(f"another aios kernel holds the database {where} (it is starting, and has not "
                             "recorded who it is yet)",
                             hint="wait for it and talk to it through the SDK (AIOS_URL), or give this kernel "
                                  "another home (AIOS_HOME) or database (--db)")
    if holder.endpoint:
        hint = (f'talk to it through the SDK, aios.sdk.Client("{holder.endpoint}") (the aios command: '
                f"AIOS_URL={holder.endpoint}), or give this kernel another home (AIOS_HOME) or database (--db)")
    else:
        hint = "stop that kernel first, or give this kernel another home (AIOS_HOME) or database (--db)"
    return KernelRunning(f"another aios kernel holds the database {where}: {holder.describe()}", hint=hint)


def where(u: URL) -> str:
    return u.render_as_string(hide_password=True)


def lock_path(u: URL) -> Path | None:
    """`<database>.lock` beside an SQLite file (a `file:` URI's too); None in memory."""
    name = u.database or ""
    if name in ("", ":memory:") or u.query.get("mode") == "memory":
        return None
    if name.startswith("file:"):
        name = name[len("file:"):].split("?", 1)[0]
        if name in ("", ":memory:"):
            return None
    path = Path(name).expanduser().resolve()
    return path.with_name(path.name + ".lock")


class FileLease:
    """An flock on the lock file beside an SQLite database. The descriptor is not inherited
    (os.open's default), so agent processes started by the kernel never hold it."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd   # open, and locked, until release

    @classmethod
    def take(cls, path: Path, holder: Holder, where: str) -> FileLease:
        fd = _open(path, where)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            found = _read(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise refusal(where, found) from None
            raise JournalUnavailable(f"cannot lock the database {where} ({path}): {e.strerror}") from None
        before = _read(fd)
        if before is not None:
            _took_over(before.pid, before.host, where)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise JournalUnavailable(f"cannot write the lock {path} of the database {where}: {e.strerror}") from None
        return cls(path, fd)

    @classmethod
    def check(cls, path: Path, where: str) -> None:
        """A shared lock for a moment: it fails exactly while a kernel holds the exclusive one."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return   # no kernel ever took it
        except OSError as e:
            raise JournalUnavailable(f"cannot read the lock {path} of the database {where}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise refusal(where, _read(fd)) from None
        finally:
            os.close(fd)   # closing drops the shared lock, if it was taken

    def record(self, conn: Connection) -> None:
        """Nothing: the lock file is the record."""

    def release(self) -> None:
        try:
            os.ftruncate(self.fd, 0)   # a record under a free lock means a kernel died holding it
        except OSError as e:
            log.warning("could not clear the lease record %s: %s", self.path, e.strerror)
        os.close(self.fd)   # closing drops the lock


def _took_over(pid: int, host: str, where: str) -> None:
    log.warning("took over the lease of kernel pid %d (no longer running) on host %s, for the database %s",
                pid, host, where)


def _open(path: Path, where: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise JournalUnavailable(f"cannot make the lock {path} of the database {where}: {e.strerror}",
                                 hint="give the kernel write access to the database's folder") from None


def _read(fd: int) -> Holder | None:
    """The holder a lock file records, or None when it is empty or unreadable."""
    try:
        return Holder(**json.loads(os.pread(fd, 4096, 0)))
    except (OSError, ValueError, TypeError):
        return None


class AdvisoryLease:
    """A session-level advisory lock on a connection (AUTOCOMMIT, so it never sits in a
    transaction) of an engine of its own."""

    def __init__(self, conn: Connection, holder: Holder, where: str):
        self.conn = conn   # the session that holds the lock, until release
        self.holder = holder
        self.where = where
        self.epoch: int | None = None   # this take's number, once recorded

    @classmethod
    def take(cls, u: URL, holder: Holder) -> AdvisoryLease:
        conn = _session(u)
        try:
            if not conn.execute(select(func.pg_try_advisory_lock(LEASE_KEY))).scalar():
                found = _recorded(conn)
                raise refusal(where(u), found)
        except BaseException:
            _close(conn)
            raise
        return cls(conn, holder, where(u))

    @classmethod
    def check(cls, u: URL) -> None:
        try:
            conn = _session(u)
        except SQLAlchemyError:
            return   # unreachable: the kernel's boot says why, naming the database
        try:
            if not conn.execute(select(func.pg_try_advisory_lock_shared(LEASE_KEY))).scalar():
                raise refusal(where(u), _recorded(conn))
        finally:
            _close(conn)   # the session's end drops the shared lock

    def record(self, conn: Connection) -> None:
        before = conn.execute(select(LEASES).where(LEASES.c.name == LEASE_NAME)).one_or_none()
        values = asdict(self.holder)
        if before is None:
            self.epoch = 1
            conn.execute(insert(LeaseRow).values(name=LEASE_NAME, epoch=1, **values))
            return
        if before.pid is not None:
            _took_over(before.pid, before.host, self.where)
        self.epoch = before.epoch + 1
        conn.execute(update(LeaseRow).where(LeaseRow.name == LEASE_NAME).values(epoch=self.epoch, **values))

    def release(self) -> None:
        try:
            if self.epoch is not None:
                self.conn.execute(update(LeaseRow).where(LeaseRow.name == LEASE_NAME, LeaseRow.epoch == self.epoch)
                                  .values(pid=None, host=None, started=None, endpoint=None))
            self.conn.execute(select(func.pg_advisory_unlock(LEASE_KEY)))
        except SQLAlchemyError as e:   # the session is gone, and its lock with it
            log.warning("could not release the lease of %s cleanly: %s", self.where, e)
        finally:
            _close(self.conn)


def _session(u: URL) -> Connection:
    """A connection of its own; a database that cannot be reached raises SQLAlchemyError,
    which Database.open describes."""
    engine = create_engine(u, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        return engine.connect()
    except BaseException:
        engine.dispose()
        raise


def _close(conn: Connection) -> None:
    engine = conn.engine
    try:
        conn.close()
    finally:
        engine.dispose()


def _recorded(conn: Connection) -> Holder | None:
    """The holder recorded in kernel_leases, or None (no table yet, or no holder recorded)."""
    try:
        row = conn.execute(select(LEASES).where(LEASES.c.name == LEASE_NAME)).one_or_none()
    except SQLAlchemyError:   # the holder has not made the table yet (AUTOCOMMIT: the session goes on)
        conn.rollback()
        return None
    if row is None or row.pid is None:
        return None
    return Holder(row.pid, row.host or "?", row.started or 0.0, row.endpoint)
