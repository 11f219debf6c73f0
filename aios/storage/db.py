"""The one database: an SQLAlchemy engine on SQLite (WAL, fsync on commit) by default, or
PostgreSQL. Blocking database work runs in worker threads, never on the event loop.

Invariant: `open()` fails with JournalUnavailable, naming the cause, before the kernel
accepts anything, when the database cannot be read and written. A kernel opens it with
its lease (aios.storage.lease), taken before anything is migrated or written."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
from sqlalchemy import Engine, create_engine, event, insert, inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from aios.clock import Clock
from aios.errors import JournalUnavailable
import aios.storage.lease as leases
from aios.storage.models import Base, BootRow

log = logging.getLogger(__name__)
T = TypeVar("T")


class Database:
    def __init__(self, url: str, clock: Clock):
        self.url = url
        self.clock = clock
        self.engine: Engine | None = None
        self.lease: leases.Lease | None = None   # held from open(lease=...) until close()
        self._limiter = anyio.CapacityLimiter(4)

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.url).get_backend_name() == "sqlite"

    def open(self, *, lease: leases.Holder | None = None) -> None:
        """Connects, migrates to the newest schema and records a boot. With `lease` (a
        kernel's boot), first takes the database's lease for that holder, or raises
        KernelRunning naming the kernel that has it, having written nothing; the lease
        is held until close(). Without it (admin commands), it opens beside a kernel."""
        url = make_url(self.url)
        if self.is_sqlite and url.database and url.database != ":memory:" and not url.query.get("mode"):
            folder = Path(url.database).expanduser().parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise JournalUnavailable(f"cannot make the folder {folder} of the database: {e.strerror}",
                                         hint="point --db or AIOS_HOME at a writable folder") from None
        try:
            self.lease = leases.take(self.url, lease) if lease is not None else None
        except SQLAlchemyError as e:
            raise describe(e, self.url) from None
        try:
            self.engine = self._connect(url)
        except BaseException:
            self._release()
            raise

    def _connect(self, url: URL) -> Engine:
        kwargs: dict = {"pool_pre_ping": True}
        if self.is_sqlite:
            module, vec_missing = sqlite_driver()
            kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30}, "module": module}
            if url.database in (None, "", ":memory:"):   # one database per connection: all threads share one
                kwargs["poolclass"] = StaticPool
        engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
            if vec_missing is None:
                event.listen(engine, "connect", _load_sqlite_vec)
            # why the vector index (aios.memory.vectors) cannot use sqlite-vec here; None: it can
            engine.aios_sqlite_vec_missing = vec_missing   # type: ignore[attr-defined]
        try:
            migrate(engine)
            with engine.begin() as conn:   # proves the database is writable
                if self.lease is not None:
                    self.lease.record(conn)
                conn.execute(insert(BootRow).values(started=self.clock.now()))
        except SQLAlchemyError as e:
            engine.dispose()
            raise describe(e, self.url) from None
        except BaseException:
            engine.dispose()
            raise
        return engine

    def close(self) -> None:
        """Disposes of the connections, then gives the lease up: nothing is written after."""
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None
        self._release()

    def _release(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    async def run(self, fn: Callable[[Engine], T]) -> T:
        """Runs blocking database work in a worker thread; maps database errors."""
        engine = self.engine
        if engine is None:
            raise JournalUnavailable("the database is closed")
        with self.clock.busy():
            try:
                return await anyio.to_thread.run_sync(fn, engine, limiter=self._limiter)
            except SQLAlchemyError as e:
                raise describe(e, self.url) from None


MIGRATIONS = Path(__file__).with_name("migrations")
FIRST_REVISION = "0001_first"
# the tables of the first revision: all a database made before migrations can have had
FIRST_TABLES = ("processes", "syscalls", "syscall_transitions", "kernel_boots", "memory_entries", "files",
                "principals", "api_tokens", "audit_log", "process_manifests")


def migrate(engine: Engine) -> None:
    """Brings the database to the newest schema revision (aios/storage/migrations). A
    database made before migrations existed (by create_all) is completed and stamped as
    the first revision, then upgraded like any other."""
    from alembic import command
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables and "syscalls" in tables:
            # the first revision's tables it may lack (made by an older create_all)
            Base.metadata.create_all(conn, tables=[Base.metadata.tables[t] for t in FIRST_TABLES])
            command.stamp(cfg, FIRST_REVISION)
        command.upgrade(cfg, "head")


def describe(e: SQLAlchemyError, url: str) -> JournalUnavailable:
    """Turns a driver error into a message that says what is wrong with the database."""
    text = str(e.orig if isinstance(e, DBAPIError) and e.orig is not None else e).splitlines()[0]
    where = make_url(url).render_as_string(hide_password=True)
    low = text.lower()
    if "readonly" in low or "read-only" in low or "read only" in low:
        return JournalUnavailable(f"the database {where} is read-only: {text}",
                                  hint="give the kernel write access, or point --db at a writable file")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return JournalUnavailable(f"the database {where} is corrupt: {text}",
                                  hint="restore it from a backup, or move it aside to start a new one")
    if "unable to open" in low:
        return JournalUnavailable(f"cannot open the database {where}: {text}",
                                  hint="check that its folder exists and is writable")
    return JournalUnavailable(f"database error on {where}: {text}")


def sqlite_driver() -> tuple[object, str | None]:
    """The DB-API module for SQLite, and why sqlite-vec cannot load with it (None if it
    can): the standard sqlite3 when it may load extensions; else pysqlite3 (the same
    module built with a newer SQLite that may), when installed; else the standard one,
    and memory search scans vectors exactly instead."""
    import sqlite3
    try:
        import sqlite_vec  # noqa: F401
    except ImportError:
        return sqlite3, "the package sqlite-vec is not installed"
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3, None
    try:
        from pysqlite3 import dbapi2
    except ImportError:
        return sqlite3, "this Python's sqlite3 cannot load extensions, and pysqlite3-binary is not installed"
    return dbapi2, None


def _load_sqlite_vec(dbapi_conn, _record) -> None:  # noqa: ANN001 (driver objects)
    import sqlite_vec
    dbapi_conn.enable_load_extension(True)
    try:
        sqlite_vec.load(dbapi_conn)
    finally:
        dbapi_conn.enable_load_extension(False)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 (driver objects)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")   # a commit is on disk before it returns
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()
