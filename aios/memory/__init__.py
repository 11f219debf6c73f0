"""Agent memory: entries each process adds, gets, searches and deletes, seen only by
that process, unless its manifest shares it (`memory_share`): then the other agents of
its principal may get, list and search it (`owner`), read-only. (The memory issue adds the working-memory budget, eviction and embedding
retrieval; search here ranks entries by how many query words they contain.)"""
from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import Engine, delete, insert, select

from aios.errors import InvalidSyscall, NotFound
from aios.storage.db import Database
from aios.storage.models import MemoryRow
from aios.syscall import MemoryOp, MemorySyscall

_WORD = re.compile(r"\w+")


class MemoryManager:
    def __init__(self, db: Database):
        self.db = db

    async def execute(self, call: MemorySyscall, now: float) -> Any:
        pid = call.owner if call.owner is not None else call.pid   # the kernel checked the sharing
        match call.op:
            case MemoryOp.ADD:
                key = call.key or uuid.uuid4().hex

                def add(engine: Engine) -> None:
                    with engine.begin() as conn:
                        if conn.execute(select(MemoryRow.id).where(MemoryRow.pid == pid, MemoryRow.key == key)).first():
                            raise InvalidSyscall(f"memory key {key!r} already exists", field="key",
                                                 hint="delete it first, or add without a key")
                        conn.execute(insert(MemoryRow).values(pid=pid, key=key, content=call.content, created=now))
                await self.db.run(add)
                return {"key": key}
            case MemoryOp.GET:
                def get(engine: Engine) -> str | None:
                    with engine.connect() as conn:
                        return conn.execute(select(MemoryRow.content)
                                            .where(MemoryRow.pid == pid, MemoryRow.key == call.key)).scalar()
                content = await self.db.run(get)
                if content is None:
                    raise NotFound(f"no memory entry {call.key!r}", field="key")
                return {"key": call.key, "content": content}
            case MemoryOp.LIST | MemoryOp.SEARCH:
                def rows(engine: Engine) -> list[tuple[str, str]]:
                    with engine.connect() as conn:
                        return [tuple(r) for r in conn.execute(select(MemoryRow.key, MemoryRow.content)
                                                               .where(MemoryRow.pid == pid).order_by(MemoryRow.id))]
                entries = await self.db.run(rows)
                if call.op is MemoryOp.LIST:
                    return {"entries": [{"key": k, "content": c} for k, c in entries]}
                words = set(_WORD.findall(call.query.lower()))
                scored = [(len(words & set(_WORD.findall(c.lower()))), i, k, c) for i, (k, c) in enumerate(entries)]
                best = sorted((s for s in scored if s[0] > 0), key=lambda s: (-s[0], s[1]))[:call.k]
                return {"entries": [{"key": k, "content": c, "score": n} for n, _, k, c in best]}
            case MemoryOp.DELETE:
                def rm(engine: Engine) -> int:
                    with engine.begin() as conn:
                        return conn.execute(delete(MemoryRow).where(MemoryRow.pid == pid, MemoryRow.key == call.key)).rowcount
                if not await self.db.run(rm):
                    raise NotFound(f"no memory entry {call.key!r}", field="key")
                return {"key": call.key, "deleted": True}
