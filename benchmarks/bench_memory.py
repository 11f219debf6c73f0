"""`aios bench memory`: paging of agents' working memory, and versioned storage writes.

- paging: hit rate and faults of each eviction policy (LRU, LFU, the prediction-augmented
  policy of "Paging with Succinct Predictions" with a perfect discard predictor) on
  agent-like reference traces (topics with a long tail of pages, shifts between topics,
  returns to old ones), each as a share of Belady's offline optimum
  (`hit_rate_vs_belady`); and how the predicted policy degrades as the predictor errs.
- storage: versioned writes per second through the kernel's file store, on SQLite and on a
  PostgreSQL server started on loopback for the run.

- retrieval: `recall_at_5` of memory search on a labelled set the project wrote
  (benchmarks/data/retrieval.json: agent memories over some twenty topics, with
  paraphrased questions and the entries that answer them), by embeddings (the packaged
  all-MiniLM-L6-v2, sqlite-vec) and by BM25 on the same kernel code, with the latency of
  a search; and by embeddings on PostgreSQL with pgvector when such a server is there."""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from rich.console import Console

from aios.memory.paging import agent_trace, oracle, recent_reuse, simulate

ERRORS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)


def paging(quick: bool, seed: int) -> dict[str, Any]:
    length = 5000 if quick else 20000
    runs = []
    for k in range(2 if quick else 4):
        trace = agent_trace(length, seed=seed + k)
        rng = np.random.default_rng(seed + 100 + k)
        sizes = {p: int(rng.integers(50, 400)) for p in set(trace)}   # tokens per page
        budget = 8000                                                 # tokens of working memory
        belady = simulate(trace, sizes, budget, "belady")
        row: dict[str, Any] = {"belady": belady}
        for policy in ("lru", "lfu"):
            row[policy] = simulate(trace, sizes, budget, policy)
        row["predict_online"] = simulate(trace, sizes, budget, "predict", recent_reuse())
        for err in ERRORS:
            row[f"predict@{err}"] = simulate(trace, sizes, budget, "predict", oracle(trace, sizes, budget, err, seed))
        runs.append(row)

    def summary(key: str) -> dict[str, Any]:
        hits = [r[key].hit_rate for r in runs]
        ratio = [r[key].hit_rate / r["belady"].hit_rate for r in runs]
        return {"hit_rate": round(statistics.mean(hits), 4), "faults": int(statistics.mean(r[key].faults for r in runs)),
                "hit_rate_vs_belady": round(statistics.mean(ratio), 4)}
    return {
        "setup": f"{len(runs)} agent-like traces of {length} references over 400 pages of 50-400 tokens, "
                 "8000 tokens of working memory",
        "policies": {"lru": summary("lru"), "lfu": summary("lfu"), "predict_online": summary("predict_online"),
                     "predict": summary("predict@0.0"), "belady": summary("belady")},
        "predictor_error": [{"error": e, **summary(f"predict@{e}")} for e in ERRORS],
    }


def storage_writes(quick: bool) -> dict[str, Any]:
    from aios.clock import WallClock
    from aios.storage.db import Database
    from aios.storage.files import FileStore
    from aios.storage.pgserver import binaries, fresh_database, local_postgres
    from aios.syscall import StorageOp, StorageSyscall
    n = 300 if quick else 2000

    async def go(url: str) -> float:
        db = Database(url, WallClock())
        db.open()
        store = FileStore(db)
        try:
            t0 = time.perf_counter()
            for i in range(n):
                call = StorageSyscall(pid=1, op=StorageOp.WRITE, path=f"f{i % 50}", data=f"content {i}\\n" * 20)
                await store.execute(call, float(i))
            return n / (time.perf_counter() - t0)
        finally:
            db.close()
    out: dict[str, Any] = {"storage_writes_per_s_sqlite":
                           round(anyio.run(go, f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"))}
    if binaries() is not None:   # a real server of its own, on loopback (fsync off: see aios.storage.pgserver)
        with local_postgres() as base:
            out["storage_writes_per_s_postgresql"] = round(anyio.run(go, fresh_database(base)))
    else:
        out["postgresql"] = "not installed: `make` installs the Debian package postgresql"
    return {**out, "writes": n, "note": "each write a new version in one transaction (blob, version, current "
                                        "file); SQLite in WAL with synchronous=FULL, PostgreSQL with fsync off"}


RETRIEVAL_SET = Path(__file__).with_name("data") / "retrieval.json"


def retrieval(quick: bool, show_progress: bool) -> dict[str, Any]:
    """Adds the set's entries to one agent's memory and asks each question through the
    memory manager, k=5; recall@5 is the share of each question's relevant entries in its
    five results, averaged over questions (hit@1 and MRR beside it)."""
    import json

    from rich.progress import Progress

    from aios.clock import WallClock
    from aios.memory import MemoryManager
    from aios.storage.db import Database
    from aios.storage.pgserver import fresh_database, local_postgres, with_pgvector
    from aios.syscall import MemoryOp, MemorySyscall
    data = json.loads(RETRIEVAL_SET.read_text())
    entries, queries = data["entries"], data["queries"]

    async def measure(url: str, embedder: str, progress: Progress | None, label: str) -> dict[str, Any]:
        db = Database(url, WallClock())
        db.open()
        try:
            m = MemoryManager(db, working_tokens=1 << 30, embedder=embedder)
            for e in entries:
                await m.execute(MemorySyscall(pid=1, op=MemoryOp.ADD, key=e["id"], content=e["text"]), 0.0)
            t0 = time.perf_counter()
            first = await m.execute(MemorySyscall(pid=1, op=MemoryOp.SEARCH, query=queries[0]["text"], k=5), 0.0)
            index_s = time.perf_counter() - t0   # loads the model, embeds every entry, fills the index
            recalls, firsts, rr, lat = [], [], [], []
            task = progress.add_task(label, total=len(queries)) if progress else None
            for q in queries:
                t = time.perf_counter()
                found = await m.execute(MemorySyscall(pid=1, op=MemoryOp.SEARCH, query=q["text"], k=5), 0.0)
                lat.append(time.perf_counter() - t)
                got = [e["key"] for e in found["entries"]]
                want = set(q["relevant"])
                recalls.append(len(want & set(got)) / len(want))
                firsts.append(float(bool(got) and got[0] in want))
                rr.append(next((1 / (i + 1) for i, key in enumerate(got) if key in want), 0.0))
                if progress:
                    progress.advance(task)
            out = {"recall_at_5": round(statistics.mean(recalls), 4), "hit_at_1": round(statistics.mean(firsts), 4),
                   "mrr": round(statistics.mean(rr), 4), "search_p50_ms": round(1000 * statistics.median(lat), 2),
                   "first_search_s": round(index_s, 2), "retrieval": first["retrieval"]}
            for field in ("model", "index", "note"):
                if field in first:
                    out[field] = first[field]
            return out
        finally:
            db.close()

    def sqlite_url() -> str:
        return f"sqlite:///{Path(tempfile.mkdtemp()) / 'retrieval.db'}"
    with Progress(disable=not show_progress, transient=True, console=Console(file=sys.stderr)) as progress:
        out: dict[str, Any] = {
            "set": f"{len(entries)} entries, {len(queries)} questions ({RETRIEVAL_SET.name})",
            "embedding": anyio.run(measure, sqlite_url(), "minilm", progress, "retrieval: embeddings"),
            "bm25": anyio.run(measure, sqlite_url(), "bm25", progress, "retrieval: bm25"),
        }
        bin_dir = None if quick else with_pgvector()
        if bin_dir is not None:
            with local_postgres(bin_dir) as base:
                out["embedding_pgvector"] = anyio.run(measure, fresh_database(base), "minilm", progress,
                                                      "retrieval: pgvector")
    out["recall_at_5"] = out["embedding"]["recall_at_5"]
    return out


def run(*, quick: bool = False, seed: int = 7, show_progress: bool = True, plot: str | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    console = Console(file=sys.stderr, no_color=not show_progress)
    if show_progress:
        console.print("paging policies ...")
    result: dict[str, Any] = {"bench": "memory", "seed": seed, "quick": quick, "paging": paging(quick, seed)}
    if show_progress:
        console.print("memory retrieval ...")
    result["retrieval"] = retrieval(quick, show_progress)
    if show_progress:
        console.print("storage writes ...")
    result["storage"] = storage_writes(quick)
    # the headline is what the kernel can run: the best policy that knows only the past;
    # the perfect predictor (the paper's setting, predictions from the future) is the bound
    policies = result["paging"]["policies"]
    online = max(("lru", "lfu", "predict_online"), key=lambda n: policies[n]["hit_rate_vs_belady"])
    result["hit_rate_vs_belady"] = policies[online]["hit_rate_vs_belady"]
    result["hit_rate_vs_belady_policy"] = online
    result["hit_rate_vs_belady_perfect_predictor"] = policies["predict"]["hit_rate_vs_belady"]
    result["recall_at_5"] = result["retrieval"]["recall_at_5"]
    result["bench_wall_s"] = round(time.perf_counter() - start, 2)
    if show_progress:
        _tables(result, console)
    if plot:
        _plot(result, plot)
        result["plot"] = plot
    return result


def _tables(result: dict[str, Any], console: Console) -> None:
    from rich.table import Table
    paging_ = result["paging"]
    table = Table("policy", "hit rate", "faults", "vs Belady", title="working-memory paging")
    for name, p in paging_["policies"].items():
        label = {"predict": "predict (perfect predictor)", "predict_online": "predict (online: recent reuse)"}
        table.add_row(label.get(name, name), f"{p['hit_rate']:.3f}",
                      str(p["faults"]), f"{p['hit_rate_vs_belady']:.3f}")
    for e in paging_["predictor_error"][1:]:
        table.add_row(f"predict, {e['error']:.0%} wrong bits", f"{e['hit_rate']:.3f}", str(e["faults"]),
                      f"{e['hit_rate_vs_belady']:.3f}")
    console.print(table)
    table = Table("search", "index", "recall@5", "hit@1", "MRR", "p50 ms", title=result["retrieval"]["set"])
    for name in ("embedding", "embedding_pgvector", "bm25"):
        r = result["retrieval"].get(name)
        if r:
            table.add_row(name.split("_")[0], r.get("index", "-"), f"{r['recall_at_5']:.3f}", f"{r['hit_at_1']:.3f}",
                          f"{r['mrr']:.3f}", f"{r['search_p50_ms']:.1f}")
    console.print(table)


def _plot(result: dict[str, Any], path: str) -> None:
    """Three panels: each policy's hit rate against Belady's; the predicted policy as its
    predictor errs (LRU for reference); recall of embedding search against BM25."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    policies = result["paging"]["policies"]
    errors = result["paging"]["predictor_error"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ax = axes[0]
    names = list(policies)
    ax.bar(names, [policies[n]["hit_rate_vs_belady"] for n in names], color=["C0", "C1", "C2", "C7"])
    ax.axhline(0.9, ls=":", color="grey")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("hit rate / Belady's")
    ax.set_title("eviction policies (predict: perfect predictor)")
    ax = axes[1]
    ax.plot([100 * e["error"] for e in errors], [e["hit_rate_vs_belady"] for e in errors], "o-", color="C2",
            label="predict")
    ax.axhline(policies["lru"]["hit_rate_vs_belady"], ls="--", color="C0", label="LRU")
    ax.set_xlabel("predictor's wrong bits (%)")
    ax.set_ylabel("hit rate / Belady's")
    ax.set_title("prediction-augmented paging as the predictor errs")
    ax.legend()
    ax = axes[2]
    metrics = ("recall_at_5", "hit_at_1", "mrr")
    x = np.arange(len(metrics))
    for i, name in enumerate(("embedding", "bm25")):
        r = result["retrieval"][name]
        ax.bar(x + (i - 0.5) * 0.4, [r[m] for m in metrics], 0.4,
               label=f"{name} ({r.get('index', 'words')})" if name == "embedding" else name)
    ax.set_xticks(x, ["recall@5", "hit@1", "MRR"])
    ax.set_ylim(0, 1.25)
    ax.set_title("memory search, " + result["retrieval"]["set"].split(" (")[0])
    ax.legend(loc="upper center", ncol=2)
    fig.suptitle("aios bench memory" + (" (quick)" if result["quick"] else ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
