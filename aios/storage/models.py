"""The SQLAlchemy 2 models of the one database. Types are portable (SQLite by default,
PostgreSQL for scale); times are kernel-clock seconds as floats."""
from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

_LIVE = "state IN ('queued', 'running', 'preempted')"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, Any: JSON}


class ProcessRow(Base):
    __tablename__ = "processes"
    pid: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(200))
    principal: Mapped[str] = mapped_column(String(200))
    parent_pid: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(20), index=True)
    created: Mapped[float] = mapped_column(Float)
    exited: Mapped[float | None] = mapped_column(Float)
    exit_reason: Mapped[str | None] = mapped_column(Text)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    service_s: Mapped[float] = mapped_column(Float, default=0.0)
    program: Mapped[str | None] = mapped_column(Text)
    runner: Mapped[str | None] = mapped_column(String(16))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    cpu_s: Mapped[float] = mapped_column(Float, default=0.0)
    max_rss_kib: Mapped[int] = mapped_column(Integer, default=0)


class SyscallRow(Base):
    __tablename__ = "syscalls"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int] = mapped_column(Integer, index=True)
    principal: Mapped[str] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(Integer)
    deadline: Mapped[float | None] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(32))
    payload: Mapped[Any] = mapped_column(JSON)
    result: Mapped[Any | None] = mapped_column(JSON)
    error: Mapped[Any | None] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Float)
    started: Mapped[float | None] = mapped_column(Float)
    finished: Mapped[float | None] = mapped_column(Float)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    service_s: Mapped[float] = mapped_column(Float, default=0.0)
    num_preemptions: Mapped[int] = mapped_column(Integer, default=0)
    # only unfinished calls are indexed by state: recovery finds them at boot, and a
    # finished call leaves the index instead of weighing on every later commit
    __table_args__ = (Index("ix_syscalls_live", "state", sqlite_where=text(_LIVE),
                            postgresql_where=text(_LIVE)),)


class TransitionRow(Base):
    """Every state change of every syscall, in order."""
    __tablename__ = "syscall_transitions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(String(32), ForeignKey("syscalls.id"), index=True)
    state: Mapped[str] = mapped_column(String(32))
    at: Mapped[float] = mapped_column(Float)
    detail: Mapped[Any | None] = mapped_column(JSON)


class BootRow(Base):
    """One row per kernel boot, with what crash recovery did."""
    __tablename__ = "kernel_boots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started: Mapped[float] = mapped_column(Float)
    num_requeued: Mapped[int] = mapped_column(Integer, default=0)
    num_failed: Mapped[int] = mapped_column(Integer, default=0)


class LeaseRow(Base):
    """Who holds the database's lease (aios.storage.lease), on PostgreSQL; SQLite keeps the
    same record in the lock file beside the database, and leaves this table empty. A
    holder that releases clears its row; `epoch` counts the takes (the fencing token of
    the scale-out work)."""
    __tablename__ = "kernel_leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    started: Mapped[float | None] = mapped_column(Float)   # wall-clock seconds
    endpoint: Mapped[str | None] = mapped_column(String(400))


class MemoryRow(Base):
    __tablename__ = "memory_entries"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pid: Mapped[int] = mapped_column(Integer)
    key: Mapped[str] = mapped_column(String(200))
    content: Mapped[str] = mapped_column(Text)
    created: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_memory_pid_key", "pid", "key", unique=True),)


# derived tables that the code makes and rebuilds itself (the vector index, which needs a
# database extension): the migrations leave tables named so alone
DERIVED_PREFIX = "memory_ann_"


def managed(name: str | None, type_: str, _parents: dict) -> bool:
    """Alembic's filter: is this a table (or part of one) the migrations manage?"""
    return not (type_ == "table" and name is not None and name.startswith(DERIVED_PREFIX))


class MemoryVectorRow(Base):
    """An entry's embedding by one model (float32 bytes): the truth the vector index is
    derived from (aios.memory.vectors). Goes when the entry goes."""
    __tablename__ = "memory_vectors"
    entry_id: Mapped[int] = mapped_column(Integer, ForeignKey("memory_entries.id", ondelete="CASCADE"),
                                          primary_key=True)
    model: Mapped[str] = mapped_column(String(100), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    __table_args__ = (Index("ix_memory_vectors_model_pid", "model", "pid"),)


class FileRow(Base):
    __tablename__ = "files"
    pid: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    data: Mapped[str] = mapped_column(Text)
    updated: Mapped[float] = mapped_column(Float)


class BlobRow(Base):
    """File contents, stored once by their SHA-256 however many versions hold them."""
    __tablename__ = "blobs"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[str] = mapped_column(Text)


class FileVersionRow(Base):
    """Every write of a file is a new version; a delete is a version with no blob. `files`
    holds each file's current version for reads and listings."""
    __tablename__ = "file_versions"
    __table_args__ = (Index("ix_file_versions_pid_path_version", "pid", "path", "version", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pid: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(1024))
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str | None] = mapped_column(String(64), ForeignKey("blobs.digest"))
    size: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[float] = mapped_column(Float)


class PrincipalRow(Base):
    """A user or service account (aios.access). `groups` are privilege groups; an admin
    may manage every principal, token and confirmation."""
    __tablename__ = "principals"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))          # user | service
    groups: Mapped[Any] = mapped_column(JSON)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[float] = mapped_column(Float)
    disabled: Mapped[float | None] = mapped_column(Float)


class TokenRow(Base):
    """An API token: only its SHA-256 is kept; it is shown once, when it is made."""
    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(String(200), ForeignKey("principals.name"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    created: Mapped[float] = mapped_column(Float)
    expires: Mapped[float | None] = mapped_column(Float)
    revoked: Mapped[float | None] = mapped_column(Float)
    last_used: Mapped[float | None] = mapped_column(Float)


class AuditRow(Base):
    """The audit log: every permission decision, confirmation, token use and admin action.
    Append-only: the database refuses updates and deletes (see aios.access)."""
    __tablename__ = "audit_log"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    principal: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(400), default="")
    decision: Mapped[str] = mapped_column(String(16))      # allow | deny | info
    detail: Mapped[Any] = mapped_column(JSON)



class ManifestRow(Base):
    """A process's permission manifest: as declared, and as enforced (intersected with its
    principal's rights and its parent's)."""
    __tablename__ = "process_manifests"
    pid: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    declared: Mapped[Any] = mapped_column(JSON)
    effective: Mapped[Any] = mapped_column(JSON)


class PythonToolRow(Base):
    """A Python tool added to the running kernel (`aios tools add`, POST /v1/tools): its
    entry and the metadata given with it, registered again at every boot
    (aios.tools.entries)."""
    __tablename__ = "python_tools"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    entry: Mapped[str] = mapped_column(Text)
    meta: Mapped[Any] = mapped_column(JSON)   # description, timeout_s, ...: those given
    principal: Mapped[str] = mapped_column(String(200))   # who added it
    created: Mapped[float] = mapped_column(Float)
