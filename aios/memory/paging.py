"""Paging of an agent's working memory: pages (memory entries, each of some tokens) live in
working memory, which the agent keeps in its context under a token budget; when a page
must come in and the budget is full, pages are evicted to the long-term store by a policy,
and a later reference to an evicted page is a fault (a retrieval).

Policies:
  lru        evict the least recently used page
  lfu        evict the least frequently used page (ties: the least recent)
  predict    "Paging with Succinct Predictions": one bit per page from a predictor, "will it
             be needed again soon?"; evict among the pages predicted not needed (least
             recently used first), and only when there are none, by LRU. The predictor is
             pluggable: any callable (page, time) -> bool.
  belady     the offline optimum: evict the page whose next use is furthest away (it
             needs the whole trace: the bound the others are measured against)

`simulate(trace, sizes, budget, policy)` runs a trace of page references and counts hits
and faults. Everything is deterministic under a seed."""
from __future__ import annotations

import heapq
import math
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from aios.errors import ConfigError

Predictor = Callable[[int, int], bool]   # (page, time) -> needed again soon?
POLICIES = ("lru", "lfu", "predict", "belady")


@dataclass(frozen=True, slots=True)
class PagingResult:
    policy: str
    references: int
    hits: int
    faults: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        return self.hits / self.references if self.references else math.nan


def next_uses(trace: Sequence[int]) -> list[int]:
    """For each reference, when the same page is referenced next (len(trace) if never)."""
    out = [len(trace)] * len(trace)
    last: dict[int, int] = {}
    for t in range(len(trace) - 1, -1, -1):
        out[t] = last.get(trace[t], len(trace))
        last[trace[t]] = t
    return out


def oracle(trace: Sequence[int], sizes: dict[int, int] | Sequence[int], budget: int, error: float = 0.0,
           seed: int = 0) -> Predictor:
    """The paper's discard predictions, from the future: at each reference, one bit that
    says whether the offline optimum (belady) keeps the page until its next use ("needed
    soon") or evicts it before then; each bit is flipped with probability `error`, to see
    how the policy degrades with a worse predictor."""
    discarded = belady_discards(trace, sizes, budget)
    rng = np.random.default_rng(seed)
    flips = rng.random(len(trace)) < error

    def predict(page: int, t: int) -> bool:
        keep = not discarded[t] if trace[t] == page else True
        return bool(keep != flips[t])
    return predict


def recent_reuse(window: int = 1000, times: int = 2) -> Predictor:
    """An online predictor, from the past alone: a page is needed again soon if it was
    referenced at least `times` times in the last `window` references (the second-chance
    idea behind LRU-K and ARC). On the agent-like traces it stays just under LRU
    (benchmarks/bench_memory.py reports both), which is why `predict` without a predictor
    plugged in is LRU."""
    recent: deque[int] = deque()
    count: Counter[int] = Counter()

    def predict(page: int, t: int) -> bool:
        recent.append(page)
        count[page] += 1
        if len(recent) > window:
            count[recent.popleft()] -= 1
        return count[page] >= times
    return predict


def belady_discards(trace: Sequence[int], sizes: dict[int, int] | Sequence[int], budget: int) -> list[bool]:
    """For each reference: does belady evict its page before the page's next reference?"""
    last_ref: dict[int, int] = {}
    out = [False] * len(trace)

    def on_evict(page: int) -> None:
        if page in last_ref:
            out[last_ref[page]] = True

    def on_ref(page: int, t: int) -> None:
        last_ref[page] = t
    simulate(trace, sizes, budget, "belady", _hooks=(on_ref, on_evict))
    return out


def simulate(trace: Sequence[int], sizes: dict[int, int] | Sequence[int], budget: int, policy: str,
             predictor: Predictor | None = None, _hooks: tuple | None = None) -> PagingResult:
    """Runs the references of `trace` (page ids) through working memory of `budget` tokens,
    page p taking sizes[p] tokens. A page larger than the whole budget is refused."""
    if policy not in POLICIES:
        raise ConfigError(f"unknown paging policy {policy!r}", field="policy", hint=f"one of: {', '.join(POLICIES)}")
    if budget <= 0:
        raise ConfigError("a working memory budget must be positive", field="budget")
    if policy == "predict" and predictor is None:
        raise ConfigError("the predict policy needs a predictor", field="predictor")
    size = (lambda p: sizes[p])   # noqa: E731 (a dict or a sequence alike)
    for p in set(trace):
        if size(p) > budget:
            raise ConfigError(f"page {p} takes {size(p)} tokens, more than the whole budget of {budget}",
                              field="sizes", hint="split the page, or raise the budget")
    nxt = next_uses(trace) if policy == "belady" else []
    resident: OrderedDict[int, None] = OrderedDict()   # recency order, oldest first
    used = 0
    count: defaultdict[int, int] = defaultdict(int)
    next_of: dict[int, int] = {}
    soon: dict[int, bool] = {}
    far: list[tuple[int, int]] = []   # belady: (-next use, page), lazily cleaned
    hits = faults = evictions = 0
    for t, page in enumerate(trace):
        count[page] += 1
        if policy == "predict":
            soon[page] = predictor(page, t)   # type: ignore[misc]
        if page in resident:
            hits += 1
            resident.move_to_end(page)
        else:
            faults += 1
            while used + size(page) > budget:
                victim = _victim(policy, resident, count, soon, next_of, far)
                if _hooks is not None:
                    _hooks[1](victim)
                del resident[victim]
                used -= size(victim)
                evictions += 1
            resident[page] = None
            used += size(page)
        if _hooks is not None:
            _hooks[0](page, t)
        if policy == "belady":
            next_of[page] = nxt[t]
            heapq.heappush(far, (-nxt[t], page))
    return PagingResult(policy, len(trace), hits, faults, evictions)


def _victim(policy: str, resident: OrderedDict, count: dict, soon: dict,
            next_of: dict[int, int], far: list[tuple[int, int]]) -> int | str:
    match policy:
        case "lru":
            return next(iter(resident))
        case "lfu":
            return min(resident, key=lambda p: count[p])   # ties: the first in recency order
        case "predict":
            return next((p for p in resident if not soon.get(p, True)), next(iter(resident)))
    while far:   # belady: the resident page used furthest in the future
        neg, page = far[0]
        if page in resident and next_of.get(page) == -neg:
            return page
        heapq.heappop(far)
    return next(iter(resident))


class WorkingMemory:
    """One agent's working memory, online: `touch(page, size)` brings a page in (a hit if
    it was there, else a fault) and returns the pages it evicted to make room, by `policy`
    (lru, lfu, or predict with `predictor`, called with the page and this memory's count
    of references; predict without one is LRU: the online predictors tried, from each
    page's past gaps between references, did worse than LRU on agent-like traces)."""

    def __init__(self, budget: int, policy: str = "lru", predictor: Predictor | None = None):
        if policy not in ("lru", "lfu", "predict"):
            raise ConfigError(f"unknown working-memory policy {policy!r}", field="policy", hint="lru, lfu or predict")
        if budget <= 0:
            raise ConfigError("a working memory budget must be positive", field="budget")
        self.budget, self.policy, self.predictor = budget, policy, predictor
        self.references = 0
        self.resident: OrderedDict[int | str, int] = OrderedDict()   # page -> tokens, oldest use first
        self.used = 0
        self.count: defaultdict[int | str, int] = defaultdict(int)
        self.soon: dict[int | str, bool] = {}
        self.hits = self.faults = self.evictions = 0

    def touch(self, page: int | str, size: int) -> tuple[bool, list[int | str]]:
        if size > self.budget:
            raise ConfigError(f"page {page!r} takes {size} tokens, more than the whole working memory of "
                              f"{self.budget}", field="content", hint="split it, or raise the budget")
        self.count[page] += 1
        self.references += 1
        if self.policy == "predict" and self.predictor is not None:
            self.soon[page] = self.predictor(page, self.references)   # type: ignore[arg-type]
        if page in self.resident:
            self.hits += 1
            self.resident.move_to_end(page)
            return True, []
        self.faults += 1
        evicted: list[int | str] = []
        while self.used + size > self.budget:
            victim = self._victim()
            self.used -= self.resident.pop(victim)
            self.evictions += 1
            evicted.append(victim)
        self.resident[page] = size
        self.used += size
        return False, evicted

    def forget(self, page: int | str) -> None:
        if page in self.resident:
            self.used -= self.resident.pop(page)

    def _victim(self) -> int | str:
        return _victim(self.policy, self.resident, self.count, self.soon, {}, [])   # the offline rules

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.faults
        return self.hits / total if total else math.nan


def agent_trace(length: int, *, pages: int = 400, topics: int = 8, topic_len: int = 150, reuse: float = 0.7,
                seed: int = 0) -> list[int]:
    """References like an agent's: it works on a topic for a while (referring again and
    again to a small set of its pages, with a long tail), then shifts to another, sometimes
    coming back to an old one; a few references go anywhere."""
    rng = np.random.default_rng(seed)
    per_topic = max(2, pages // topics)
    trace: list[int] = []
    topic = 0
    while len(trace) < length:
        if rng.random() < 0.35 and trace:   # back to an earlier topic, or a new one
            topic = int(rng.integers(0, topics))
        else:
            topic = (topic + 1) % topics
        base = topic * per_topic
        weights = 1.0 / np.arange(1, per_topic + 1) ** 1.1
        weights /= weights.sum()
        for _ in range(int(rng.integers(topic_len // 2, topic_len * 3 // 2))):
            if rng.random() < reuse:
                trace.append(base + int(rng.choice(per_topic, p=weights)))
            else:
                trace.append(int(rng.integers(0, pages)))
    return trace[:length]
