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
from aios.memory.paging import Predictor, WorkingMemory
from aios.syscall import MemoryOp, MemorySyscall

_WORD = re.compile(r"\w+")


def page_tokens(content: str) -> int:
    """A page's size in working memory: 4 characters a token, at least one."""
    return max(1, len(content) // 4)


class MemoryManager:
    """Entries in the database (the long-term store) and, per agent, a working memory of
    `working_tokens` (aios.memory.paging): an added or read entry comes into it, evicting
    others by `policy`; reading an entry that is not in it is a fault (a retrieval), and
    each agent's hits and faults are counted (the `stats` op)."""

    def __init__(self, db: Database, working_tokens: int = 4000, policy: str = "lru",
                 predictor: Predictor | None = None):
        self.db = db
        self.working_tokens, self.policy, self.predictor = working_tokens, policy, predictor
        self.working: dict[int, WorkingMemory] = {}
        self._clock = 0

    def working_memory(self, pid: int) -> WorkingMemory:
        wm = self.working.get(pid)
        if wm is None:
            wm = self.working[pid] = WorkingMemory(self.working_tokens, self.policy, self.predictor)
        return wm

    def _touch(self, reader: int, page: Any, content: str) -> bool:
        self._clock += 1
        hit, _ = self.working_memory(reader).touch(page, page_tokens(content), self._clock)
        return hit

    async def execute(self, call: MemorySyscall, now: float) -> Any:
        pid = call.owner if call.owner is not None else call.pid   # the kernel checked the sharing
        page = call.key if call.owner is None else (call.owner, call.key)
        match call.op:
            case MemoryOp.STATS:
                wm = self.working_memory(call.pid)
                return {"policy": wm.policy, "budget_tokens": wm.budget, "used_tokens": wm.used,
                        "resident": [str(k) for k in wm.resident], "hits": wm.hits, "faults": wm.faults,
                        "evictions": wm.evictions, "hit_rate": None if wm.hits + wm.faults == 0 else wm.hit_rate}
            case MemoryOp.ADD:
                key = call.key or uuid.uuid4().hex

                def add(engine: Engine) -> None:
                    with engine.begin() as conn:
                        if conn.execute(select(MemoryRow.id).where(MemoryRow.pid == pid, MemoryRow.key == key)).first():
                            raise InvalidSyscall(f"memory key {key!r} already exists", field="key",
                                                 hint="delete it first, or add without a key")
                        conn.execute(insert(MemoryRow).values(pid=pid, key=key, content=call.content, created=now))
                if page_tokens(call.content or "") > self.working_tokens:
                    raise InvalidSyscall(f"the entry takes about {page_tokens(call.content or '')} tokens, more than the "
                                         f"whole working memory of {self.working_tokens}", field="content",
                                         hint="split it, or raise memory_working_tokens")
                await self.db.run(add)
                self._touch(call.pid, key, call.content or "")
                return {"key": key}
            case MemoryOp.GET:
                def get(engine: Engine) -> str | None:
                    with engine.connect() as conn:
                        return conn.execute(select(MemoryRow.content)
                                            .where(MemoryRow.pid == pid, MemoryRow.key == call.key)).scalar()
                content = await self.db.run(get)
                if content is None:
                    raise NotFound(f"no memory entry {call.key!r}", field="key")
                hit = self._touch(call.pid, page, content)
                return {"key": call.key, "content": content, "fault": not hit}
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
                self.working_memory(call.pid).forget(call.key)   # type: ignore[arg-type]
                return {"key": call.key, "deleted": True}
