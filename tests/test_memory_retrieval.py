"""Retrieval over long-term memory: the packaged all-MiniLM-L6-v2 embeds entries and
queries; the index is sqlite-vec on SQLite, pgvector on a PostgreSQL that has it, and an
exact scan (said so) on one that has not; BM25 only where the model cannot load (said so).
The model loads once per test process (a few seconds)."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from aios.clock import WallClock
from aios.memory import MemoryManager
from aios.memory.embed import EmbeddingUnavailable, bm25, load_embedder
from aios.memory.vectors import table_name
from aios.storage.db import Database
from aios.syscall import MemoryOp, MemorySyscall
from tests.conftest import fresh_postgres_database

FACTS = {
    "flight": "The user's flight to Lisbon on 14 March leaves from gate B22 at 07:45.",
    "allergy": "Alice is allergic to peanuts and prefers vegetarian restaurants.",
    "outage": "The staging database migration failed because the disk on db-2 was full.",
    "birthday": "Bob's birthday is on the third of June; he likes jazz records.",
    "car": "The car is due for an oil change at 60,000 km, at the garage on Elm Street.",
}
INDEX = {"sqlite": "sqlite-vec", "postgresql": "exact", "pgvector": "pgvector"}


def database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(database URL, the index it should get): SQLite; Debian's PostgreSQL, which has no
    pgvector; a PostgreSQL with pgvector."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'aios.db'}", INDEX[kind]
    server = request.getfixturevalue("postgres" if kind == "postgresql" else "pgvector")
    return fresh_postgres_database(server), INDEX[kind]


@pytest.fixture(params=list(INDEX))
def memory_db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    return database(request.param, request, tmp_path)


@pytest.fixture(params=[kind for kind, index in INDEX.items() if index != "exact"])
def indexed_db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """The databases whose index is a table of its own (an exact scan has none)."""
    return database(request.param, request, tmp_path)


def opened(url: str) -> Database:
    db = Database(url, WallClock())
    db.open()
    return db


async def op(m: MemoryManager, pid: int, name: str, **fields) -> dict:
    return await m.execute(MemorySyscall(pid=pid, op=MemoryOp(name), **fields), 0.0)


def keys(found: dict) -> list[str]:
    return [e["key"] for e in found["entries"]]


@pytest.mark.anyio
async def test_search_finds_paraphrases_in_each_index(memory_db: tuple[str, str]):
    url, kind = memory_db
    db = opened(url)
    try:
        m = MemoryManager(db)
        for key, fact in FACTS.items():
            await op(m, 1, "add", key=key, content=fact)
        await op(m, 2, "add", key="other", content="Carol's plane to Oslo departs at noon.")   # another agent's
        found = await op(m, 1, "search", query="when does my plane depart", k=2)
        assert (found["retrieval"], found["model"], found["index"]) == ("embedding", "all-MiniLM-L6-v2", kind)
        assert ("note" in found) == (kind == "exact")
        if kind == "exact":
            assert "no pgvector" in found["note"]
        assert found["embedded"] == 5 and keys(found)[0] == "flight" and len(found["entries"]) == 2
        assert "other" not in keys(await op(m, 1, "search", query="plane departure time", k=5))
        for query, want in [("food the user's friend cannot eat", "allergy"), ("why did the deploy break", "outage"),
                            ("present for a music fan", "birthday"), ("automobile maintenance", "car")]:
            again = await op(m, 1, "search", query=query, k=1)
            assert again["embedded"] == 0 and keys(again) == [want], query
        # a deleted entry is gone from the index; one added later is embedded at the next search
        await op(m, 1, "delete", key="flight")
        await op(m, 1, "add", key="train", content="The train to Porto departs from platform 4 at 09:10.")
        found = await op(m, 1, "search", query="when does my plane depart", k=5)
        assert found["embedded"] == 1 and "flight" not in keys(found) and keys(found)[0] == "train"
        with db.engine.connect() as conn:   # type: ignore[union-attr]
            assert conn.execute(text("SELECT count(*) FROM memory_vectors WHERE pid = 1")).scalar_one() == 5
    finally:
        db.close()


@pytest.mark.anyio
async def test_the_index_is_rebuilt_from_the_vectors_when_it_is_lost(indexed_db: tuple[str, str]):
    url, kind = indexed_db
    db = opened(url)
    try:
        m = MemoryManager(db)
        for key, fact in FACTS.items():
            await op(m, 1, "add", key=key, content=fact)
        assert keys(await op(m, 1, "search", query="peanut allergy", k=1)) == ["allergy"]
        with db.engine.begin() as conn:   # type: ignore[union-attr]
            conn.execute(text(f"DROP TABLE {table_name('all-MiniLM-L6-v2')}"))
    finally:
        db.close()
    db = opened(url)   # a new kernel: the index table is made again from memory_vectors
    try:
        found = await op(MemoryManager(db), 1, "search", query="peanut allergy", k=1)
        assert found["embedded"] == 0 and found["index"] == kind and keys(found) == ["allergy"]
    finally:
        db.close()
    db = opened(url)   # a delete before this kernel's first search: the vector goes by the cascade
    try:
        m = MemoryManager(db)
        await op(m, 1, "delete", key="allergy")
        with db.engine.connect() as conn:   # type: ignore[union-attr]
            assert conn.execute(text("SELECT count(*) FROM memory_vectors")).scalar_one() == 4
        found = await op(m, 1, "search", query="peanut allergy", k=5)
        assert found["embedded"] == 0 and "allergy" not in keys(found) and len(found["entries"]) == 4
    finally:
        db.close()


@pytest.mark.anyio
async def test_a_model_that_cannot_load_falls_back_to_bm25_and_says_why(tmp_path: Path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "bert"}')
    (broken / "model.safetensors").write_bytes(b"\x00not a safetensors file")
    db = opened(f"sqlite:///{tmp_path / 'aios.db'}")
    try:
        for spec, why in [(str(broken), "cannot load"), (str(tmp_path / "missing"), "neither `minilm`"),
                          (str(tmp_path), "config.json is missing"), ("bm25", "set to bm25")]:
            m = MemoryManager(db, embedder=spec)
            for key, fact in FACTS.items():
                await op(m, hash(spec) % 1000, "add", key=key, content=fact)
            found = await op(m, hash(spec) % 1000, "search", query="which gate is the Lisbon flight at", k=2)
            assert found["retrieval"] == "bm25" and why in found["note"], found
            assert keys(found)[0] == "flight" and found["entries"][0]["score"] > 0
            # words it has never seen: nothing, rather than noise
            assert (await op(m, hash(spec) % 1000, "search", query="zzz qqq", k=2))["entries"] == []
        with pytest.raises(EmbeddingUnavailable, match="cannot load") as err:
            load_embedder(str(broken))
        assert err.value.hint and "bm25" in err.value.hint
    finally:
        db.close()


@pytest.mark.anyio
async def test_a_shared_memory_is_searched_by_embedding_too(tmp_path: Path):
    db = opened(f"sqlite:///{tmp_path / 'aios.db'}")
    try:
        m = MemoryManager(db)
        for key, fact in FACTS.items():
            await op(m, 1, "add", key=key, content=fact)
        found = await op(m, 2, "search", query="vehicle service", k=1, owner=1)   # the kernel checked the sharing
        assert keys(found) == ["car"] and found["entries"][0]["fault"] is True
        assert (await op(m, 2, "stats"))["resident"] == ["(1, 'car')"]
    finally:
        db.close()


def test_bm25_ranks_rare_words_higher():
    docs = ["the cat sat", "the dog sat", "the the the", "a cat and a dog"]
    scores = bm25("cat", docs)
    assert scores[1] == scores[2] == 0 and scores[0] > scores[3] > 0   # the shorter document ranks higher
    assert bm25("the", docs)[2] > bm25("the", docs)[0] > 0
    assert bm25("x", []) == []


@pytest.mark.anyio
async def test_concurrent_searches_embed_each_entry_once_in_batches(memory_db: tuple[str, str],
                                                                   monkeypatch: pytest.MonkeyPatch):
    import anyio

    import aios.memory
    monkeypatch.setattr(aios.memory, "BACKFILL_BATCH", 2)   # five entries: three transactions
    url, _ = memory_db
    db = opened(url)
    try:
        m = MemoryManager(db)
        for key, fact in FACTS.items():
            await op(m, 1, "add", key=key, content=fact)
        results: list[dict] = []

        async def search(query: str) -> None:
            results.append(await op(m, 1, "search", query=query, k=1))
        async with anyio.create_task_group() as tg:
            for query in ("peanut allergy", "oil change", "jazz birthday", "full disk"):
                tg.start_soon(search, query)
        assert sorted(r["embedded"] for r in results) == [0, 0, 0, 5]
        assert {r["entries"][0]["key"] for r in results} == {"allergy", "car", "birthday", "outage"}
        with db.engine.connect() as conn:   # type: ignore[union-attr]
            assert conn.execute(text("SELECT count(*) FROM memory_vectors")).scalar_one() == 5
    finally:
        db.close()
