"""The per-agent file space: each process reads and writes only paths under its own pid.
Every write is a new version (content-addressed: equal contents are stored once), with
`versions`, `diff` and `rollback` to a version or a point in time, and a quota of current
bytes per process."""
from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, LargeBinary, cast, delete, func, insert, select

from aios.clock import utc_text
from aios.errors import Conflict, InvalidSyscall, NotFound, QuotaExceeded
from aios.storage.db import Database
from aios.storage.journal import Seal
from aios.storage.models import BlobRow, FileRow, FileVersionRow
from aios.syscall import StorageOp, StorageSyscall


class FileStore:
    """Reads and lists come from `files` (each file's current content); every write and
    delete also appends a version, whose content is a blob stored once by its SHA-256.
    `quota_bytes` bounds the current files of each process."""

    def __init__(self, db: Database, quota_bytes: int = 64 << 20):
        self.db = db
        self.quota_bytes = quota_bytes

    async def execute(self, call: StorageSyscall, now: float, *, seal: Seal | None = None) -> Any:
        """Runs the call. A write calls `seal(conn, result)` in its own transaction, so that
        the kernel journals the call's end with its effect (aios.storage.journal)."""
        path, pid = call.path, call.pid   # checked and normalised when the call was decoded (aios.syscall)
        match call.op:
            case StorageOp.READ if call.version is not None:
                version = await self.db.run(lambda e: _version(e, pid, path, call.version))
                if version.digest is None:
                    raise NotFound(f"version {call.version} of {path!r} is a deletion", field="version")
                return {"path": path, "version": version.version,
                        "data": await self.db.run(lambda e: _blob(e, version.digest))}
            case StorageOp.READ:
                def read(engine: Engine) -> str | None:
                    with engine.connect() as conn:
                        return conn.execute(select(FileRow.data).where(FileRow.pid == pid, FileRow.path == path)).scalar()
                data = await self.db.run(read)
                if data is None:
                    raise NotFound(f"no file {path!r}", field="path")
                return {"path": path, "data": data}
            case StorageOp.WRITE:
                size = len(call.data.encode())   # type: ignore[union-attr]
                return await self.db.run(lambda e: self._write(e, pid, path, call.data, now, seal, lambda v: {
                    "path": path, "bytes": size, "version": v}))
            case StorageOp.LIST:
                def ls(engine: Engine) -> list[str]:
                    with engine.connect() as conn:
                        q = select(FileRow.path).where(FileRow.pid == pid,   # autoescape: '_' is no wildcard
                                                       FileRow.path.startswith(path, autoescape=True))
                        return list(conn.execute(q.order_by(FileRow.path)).scalars())
                return {"paths": await self.db.run(ls)}
            case StorageOp.DELETE:
                return await self.db.run(lambda e: self._write(e, pid, path, None, now, seal, lambda v: {
                    "path": path, "deleted": True, "version": v}))
            case StorageOp.VERSIONS:
                def versions(engine: Engine) -> list[dict[str, Any]]:
                    with engine.connect() as conn:
                        rows = conn.execute(select(FileVersionRow).where(FileVersionRow.pid == pid,
                                                                         FileVersionRow.path == path)
                                            .order_by(FileVersionRow.version)).all()
                    return [{"version": r.version, "bytes": r.size, "deleted": r.digest is None, "created": r.created,
                             "sha256": r.digest} for r in rows]
                found = await self.db.run(versions)
                if not found:
                    raise NotFound(f"no file {path!r}, now or before", field="path")
                return {"path": path, "versions": found}
            case StorageOp.DIFF:
                return await self.db.run(lambda e: _diff(e, pid, path, call.version, call.other))
            case StorageOp.MOVE:
                to = call.to

                def move(engine: Engine) -> dict[str, Any]:
                    with engine.begin() as conn:   # both versions, or neither
                        data = conn.execute(select(FileRow.data).where(FileRow.pid == pid, FileRow.path == path)).scalar()
                        if data is None:
                            raise NotFound(f"no file {path!r}", field="path")
                        if conn.execute(select(FileRow.path).where(FileRow.pid == pid, FileRow.path == to)).first():
                            raise Conflict(f"{to!r} exists", field="to", hint="delete it first (its versions stay), "
                                                                              "or move to another path")
                        version = self._put(conn, pid, to, data, now, also_leaving=path)
                        gone = self._put(conn, pid, path, None, now)
                        out = {"path": path, "to": to, "version": version, "deleted_version": gone}
                        if seal is not None:
                            seal(conn, out)
                    return out
                return await self.db.run(move)
            case StorageOp.ROLLBACK:
                def rollback(engine: Engine) -> dict[str, Any]:
                    target = (_version(engine, pid, path, call.version) if call.version is not None
                              else _version_at(engine, pid, path, call.at))   # type: ignore[arg-type]
                    data = _blob(engine, target.digest) if target.digest is not None else None
                    return self._write(engine, pid, path, data, now, seal, lambda v: {
                        "path": path, "version": v, "restored": target.version, "deleted": data is None},
                        missing_ok=True)
                return await self.db.run(rollback)
        raise InvalidSyscall(f"unknown storage op {call.op!r}", field="op")

    def _write(self, engine: Engine, pid: int, path: str, data: str | None, now: float, seal: Seal | None,
               shape: Callable[[int], dict[str, Any]], *, missing_ok: bool = False) -> dict[str, Any]:
        """A new version of `path` (None: a deletion) in one transaction: its blob (once),
        the version row, the current file and the sealed end of the call. Returns the
        result, `shape` of the version number."""
        with engine.begin() as conn:
            current = conn.execute(select(FileRow.data).where(FileRow.pid == pid, FileRow.path == path)).scalar()
            if data is None and current is None and not missing_ok:
                raise NotFound(f"no file {path!r}", field="path")
            out = shape(self._put(conn, pid, path, data, now))
            if seal is not None:
                seal(conn, out)
            return out

    def _put(self, conn: Connection, pid: int, path: str, data: str | None, now: float,
             also_leaving: str | None = None) -> int:
        """The new version, in the caller's transaction; the quota counts the agent's other
        current files but `path` (replaced) and `also_leaving` (a move's source)."""
        digest = size = None
        if data is not None:
            raw = data.encode()
            size = len(raw)
            nbytes = (func.octet_length(FileRow.data) if conn.dialect.name == "postgresql"
                      else func.length(cast(FileRow.data, LargeBinary)))
            used = conn.execute(select(func.coalesce(func.sum(nbytes), 0))
                                .where(FileRow.pid == pid, FileRow.path.not_in([path, also_leaving or path]))
                                ).scalar_one()
            if used + size > self.quota_bytes:
                raise QuotaExceeded(f"the write of {size} bytes would pass the storage quota: "
                                    f"{max(self.quota_bytes - used, 0)} of {self.quota_bytes} bytes left",
                                    field="data", hint="delete files, or raise storage_quota_bytes")
            digest = hashlib.sha256(raw).hexdigest()
            if conn.execute(select(BlobRow.digest).where(BlobRow.digest == digest)).first() is None:
                conn.execute(insert(BlobRow).values(digest=digest, size=size, data=data))
        last = conn.execute(select(func.max(FileVersionRow.version))
                            .where(FileVersionRow.pid == pid, FileVersionRow.path == path)).scalar() or 0
        conn.execute(insert(FileVersionRow).values(pid=pid, path=path, version=last + 1, digest=digest,
                                                   size=size or 0, created=now))
        conn.execute(delete(FileRow).where(FileRow.pid == pid, FileRow.path == path))
        if data is not None:
            conn.execute(insert(FileRow).values(pid=pid, path=path, data=data, updated=now))
        return last + 1


def _version(engine: Engine, pid: int, path: str, version: int) -> Any:
    with engine.connect() as conn:
        row = conn.execute(select(FileVersionRow).where(FileVersionRow.pid == pid, FileVersionRow.path == path,
                                                        FileVersionRow.version == version)).first()
    if row is None:
        raise NotFound(f"{path!r} has no version {version}", field="version",
                       hint="the versions op lists them")
    return row


def _version_at(engine: Engine, pid: int, path: str, at: float) -> Any:
    with engine.connect() as conn:
        row = conn.execute(select(FileVersionRow).where(FileVersionRow.pid == pid, FileVersionRow.path == path,
                                                        FileVersionRow.created <= at)
                           .order_by(FileVersionRow.version.desc()).limit(1)).first()
    if row is None:
        with engine.connect() as conn:
            first = conn.execute(select(func.min(FileVersionRow.created))
                                 .where(FileVersionRow.pid == pid, FileVersionRow.path == path)).scalar()
        since = f"its first version is of {utc_text(first)} UTC" if first is not None else "it has no version at all"
        raise NotFound(f"{path!r} had no version yet at {utc_text(at)} UTC: {since}", field="at",
                       hint=f"`aios fs versions {path}` (the storage versions syscall) lists them and their times")
    return row


def _blob(engine: Engine, digest: str) -> str:
    with engine.connect() as conn:
        return conn.execute(select(BlobRow.data).where(BlobRow.digest == digest)).scalar_one()


def _diff(engine: Engine, pid: int, path: str, version: int | None, other: int | None) -> dict[str, Any]:
    """A unified diff from `version` (default: the one before the newest) to `other`
    (default: the newest)."""
    with engine.connect() as conn:
        newest = conn.execute(select(func.max(FileVersionRow.version))
                              .where(FileVersionRow.pid == pid, FileVersionRow.path == path)).scalar()
    if newest is None:
        raise NotFound(f"no file {path!r}, now or before", field="path")
    b = newest if other is None else other
    a = (b - 1) if version is None else version
    if a < 1:
        raise NotFound(f"{path!r} has no version before {b}", field="version")
    texts = []
    for v in (a, b):
        row = _version(engine, pid, path, v)
        texts.append(_blob(engine, row.digest) if row.digest is not None else "")
    lines = difflib.unified_diff(texts[0].splitlines(keepends=True), texts[1].splitlines(keepends=True),
                                 fromfile=f"{path}@{a}", tofile=f"{path}@{b}")
    # a last line with no newline ends as GNU diff ends it, not run into the next line
    text = "".join(line if line.endswith("\n") else f"{line}\n\\ No newline at end of file\n" for line in lines)
    return {"path": path, "from": a, "to": b, "diff": text}
