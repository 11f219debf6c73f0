"""The per-agent file space: each process reads and writes only paths under its own pid.
(The storage issue adds versions, diffs, rollback and quotas on top of this.)"""
from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert

from aios.errors import InvalidSyscall, NotFound
from aios.storage.db import Database
from aios.storage.models import FileRow
from aios.syscall import StorageOp, StorageSyscall


def check_path(path: str) -> str:
    """A relative path with no `..`, no NUL and no empty parts; returned normalised."""
    if "\x00" in path:
        raise InvalidSyscall("path must not contain NUL bytes", field="path")
    if path.startswith("/"):
        raise InvalidSyscall(f"path {path!r} is absolute", field="path",
                             hint="paths are relative to the agent's own file space")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidSyscall(f"path {path!r} climbs out with '..'", field="path")
    return "/".join(parts)


class FileStore:
    def __init__(self, db: Database):
        self.db = db

    async def execute(self, call: StorageSyscall, now: float) -> Any:
        path = check_path(call.path) if call.path else ""
        pid = call.pid
        match call.op:
            case StorageOp.READ:
                def read(engine: Engine) -> str | None:
                    with engine.connect() as conn:
                        return conn.execute(select(FileRow.data).where(FileRow.pid == pid, FileRow.path == path)).scalar()
                data = await self.db.run(read)
                if data is None:
                    raise NotFound(f"no file {path!r}", field="path")
                return {"path": path, "data": data}
            case StorageOp.WRITE:
                insert = sqlite_insert if self.db.is_sqlite else pg_insert
                stmt = insert(FileRow).values(pid=pid, path=path, data=call.data, updated=now)
                stmt = stmt.on_conflict_do_update(index_elements=["pid", "path"],
                                                  set_={"data": call.data, "updated": now})

                def write(engine: Engine) -> None:
                    with engine.begin() as conn:
                        conn.execute(stmt)
                await self.db.run(write)
                return {"path": path, "bytes": len(call.data.encode())}
            case StorageOp.LIST:
                def ls(engine: Engine) -> list[str]:
                    with engine.connect() as conn:
                        q = select(FileRow.path).where(FileRow.pid == pid,   # autoescape: '_' is no wildcard
                                                       FileRow.path.startswith(path, autoescape=True))
                        return list(conn.execute(q.order_by(FileRow.path)).scalars())
                return {"paths": await self.db.run(ls)}
            case StorageOp.DELETE:
                def rm(engine: Engine) -> int:
                    with engine.begin() as conn:
                        return conn.execute(delete(FileRow).where(FileRow.pid == pid, FileRow.path == path)).rowcount
                if not await self.db.run(rm):
                    raise NotFound(f"no file {path!r}", field="path")
                return {"path": path, "deleted": True}
