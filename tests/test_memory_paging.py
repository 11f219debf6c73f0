"""Paging policies on tiny traces with known answers, the bound Belady sets, the
prediction-augmented policy with perfect and with wrong predictions, bad input, and
`aios bench memory --quick`."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from aios.errors import ConfigError
from aios.memory.paging import agent_trace, belady_discards, next_uses, oracle, simulate

UNIT = {p: 1 for p in range(10)}


def test_lru_lfu_and_belady_by_hand():
    # room for 2 pages of size 1
    trace = [1, 2, 1, 3, 1, 2]
    # LRU: 1f 2f 1h 3f(evict 2) 1h 2f(evict 3) -> 2 hits
    assert simulate(trace, UNIT, 2, "lru").hits == 2
    # LFU: 1f 2f 1h(1:2) 3f(evict 2, count 1) 1h 2f(evict 3: count 1 and older? 3 newer than 1; 1 has count 3)
    assert simulate(trace, UNIT, 2, "lfu").hits == 2
    # Belady: at 3, evict 2 (next use at 5) rather than 1 (next at 4); at 2, evict 3 (never again)
    assert simulate(trace, UNIT, 2, "belady").hits == 2
    scan = [1, 2, 3, 1, 2, 3, 1, 2, 3]
    assert simulate(scan, UNIT, 2, "lru").hits == 0            # LRU's worst case
    assert simulate(scan, UNIT, 2, "belady").hits == 3         # the optimum keeps one of them
    assert next_uses([1, 2, 1]) == [2, 3, 3]


def test_sizes_count_and_a_page_larger_than_the_budget_is_refused():
    sizes = {1: 3, 2: 3, 3: 1}
    r = simulate([1, 2, 1], sizes, 5, "lru")   # 1 and 2 cannot both fit
    assert (r.hits, r.faults, r.evictions) == (0, 3, 2)
    with pytest.raises(ConfigError, match="more than the whole budget"):
        simulate([1, 2], {1: 9, 2: 1}, 5, "lru")
    with pytest.raises(ConfigError, match="unknown paging policy"):
        simulate([1], UNIT, 2, "fifo")
    with pytest.raises(ConfigError, match="needs a predictor"):
        simulate([1], UNIT, 2, "predict")
    with pytest.raises(ConfigError, match="positive"):
        simulate([1], UNIT, 0, "lru")


def test_perfect_discard_predictions_reach_the_optimum_and_errors_cost_hits():
    trace = agent_trace(4000, seed=5)
    sizes = {p: 1 + p % 7 for p in set(trace)}
    budget = 120
    best = simulate(trace, sizes, budget, "belady").hit_rate
    lru = simulate(trace, sizes, budget, "lru").hit_rate
    perfect = simulate(trace, sizes, budget, "predict", oracle(trace, sizes, budget, 0.0)).hit_rate
    noisy = simulate(trace, sizes, budget, "predict", oracle(trace, sizes, budget, 0.3, seed=1)).hit_rate
    assert perfect == pytest.approx(best) and lru < best
    assert noisy < perfect
    flags = belady_discards(trace, sizes, budget)
    assert len(flags) == len(trace) and any(flags) and not all(flags)


def test_bench_memory_quick(tmp_path):
    from aios.benchmarks.bench_memory import run
    chart = tmp_path / "memory.png"
    d = run(quick=True, show_progress=False, plot=str(chart))
    assert d["plot"] == str(chart) and chart.stat().st_size > 10_000
    policies = d["paging"]["policies"]
    assert policies["belady"]["hit_rate_vs_belady"] == 1.0
    assert policies["predict"]["hit_rate_vs_belady"] >= policies["lru"]["hit_rate_vs_belady"]
    # the headline is the best policy that runs online, not the perfect predictor's bound
    online = {n: policies[n]["hit_rate_vs_belady"] for n in ("lru", "lfu", "predict_online")}
    assert d["hit_rate_vs_belady"] == max(online.values()) < d["hit_rate_vs_belady_perfect_predictor"] == 1.0
    assert online[d["hit_rate_vs_belady_policy"]] == d["hit_rate_vs_belady"]
    errors = [x["hit_rate_vs_belady"] for x in d["paging"]["predictor_error"]]
    assert errors == sorted(errors, reverse=True) and errors[0] >= 0.9
    assert d["storage"]["storage_writes_per_s_sqlite"] > 0 and d["storage"]["storage_writes_per_s_postgresql"] > 0
    emb, words = d["retrieval"]["embedding"], d["retrieval"]["bm25"]
    assert (emb["retrieval"], emb["index"], words["retrieval"]) == ("embedding", "sqlite-vec", "bm25")
    # the set's questions are paraphrases: meaning finds what word overlap misses
    assert d["recall_at_5"] == emb["recall_at_5"] and 0 < words["recall_at_5"] < emb["recall_at_5"] <= 1
    assert 0 < emb["hit_at_1"] <= emb["mrr"] <= 1 and emb["search_p50_ms"] > 0


def test_the_retrieval_set_is_consistent():
    import json

    from aios.benchmarks.bench_memory import RETRIEVAL_SET
    data = json.loads(RETRIEVAL_SET.read_text())
    ids = [e["id"] for e in data["entries"]]
    assert len(ids) == len(set(ids)) >= 300 and len({e["text"] for e in data["entries"]}) == len(ids)
    assert len(data["queries"]) >= 100 and len({q["id"] for q in data["queries"]}) == len(data["queries"])
    for q in data["queries"]:
        assert 1 <= len(q["relevant"]) <= 3 and set(q["relevant"]) <= set(ids), q


@pytest.mark.anyio
async def test_each_agent_has_a_working_memory_with_a_budget_and_counted_faults(make_settings):
    from aios.errors import InvalidSyscall
    from aios.kernel import Kernel
    async with Kernel(make_settings(memory_working_tokens=30)) as k:
        a, b = (await k.spawn("a")).pid, (await k.spawn("b")).pid

        async def mem(pid: int, op: str, **fields):
            return await k.call({"kind": "memory", "op": op, **fields}, pid=pid)
        for key in ("p1", "p2", "p3"):   # 10 tokens each: three fit in 30
            await mem(a, "add", key=key, content="x" * 40)
        assert (await mem(a, "get", key="p1"))["fault"] is False
        await mem(a, "add", key="p4", content="y" * 40)   # evicts the least recently used: p2
        assert (await mem(a, "get", key="p2"))["fault"] is True   # a retrieval from the long-term store
        stats = await mem(a, "stats")
        assert stats["policy"] == "lru" and stats["budget_tokens"] == 30 and stats["used_tokens"] <= 30
        assert (stats["hits"], stats["faults"], stats["evictions"]) == (1, 5, 2)
        assert set(stats["resident"]) == {"p1", "p2", "p4"}   # p3 left when p2 came back
        assert (await mem(b, "stats"))["faults"] == 0   # each agent its own
        with pytest.raises(InvalidSyscall, match="more than the whole working memory"):
            await mem(a, "add", key="huge", content="z" * 400)
        await mem(a, "delete", key="p4")
        assert "p4" not in (await mem(a, "stats"))["resident"]
        # an exited agent's working memory goes with it; its entries stay in the store
        await k.kill(a)
        assert a not in k.memory.working and b in k.memory.working
        assert len((await k.call({"kind": "memory", "op": "list"}, pid=0))["entries"]) == 0   # the principal's own

        def stored(engine) -> int:
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM memory_entries")).scalar_one()
        assert await k.db.run(stored) == 3   # p1, p2, p3
