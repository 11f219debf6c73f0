"""Serving instances, simulated iteration by iteration: a paged KV cache and a scheduler
that forms each iteration's batch; the cost model gives each iteration's time.

Schedulers (`EngineConfig.scheduler`):
  orca     iteration-level batching with memory reserved at admission for the request's
           whole length (`orca_reserve`: oracle = prompt + output, pow2 = the next power of
           two, max = max_seq_len); never preempts. The baseline of the vLLM paper, whose
           re-implementation reserved through a buddy allocator (`orca_buddy`: each
           reservation a power-of-two run of blocks; the allocator's external fragmentation
           is not modelled).
  vllm     continuous batching on a paged KV cache (blocks of `block_size` tokens, allocated
           as tokens are produced, above a watermark); an iteration runs either new
           prompts' prefills (FCFS, up to max_batched_tokens) or every running request's
           decode; when a decode needs a block and none is free, the newest running request
           is preempted, by recompute or by swap to host memory (vLLM v0).
  sarathi  chunked prefill with a token budget, stall-free: every iteration first takes one
           token of each running decode, then fills the rest of the budget with prefill
           chunks (Sarathi-Serve).

Components that combine with any scheduler:
  priority     queues ordered by request priority (higher first, then arrival); a waiting
               or swapped request of higher priority than a running one that does not fit
               preempts the lowest-priority running requests (FastSwitch's fairness setting).
  swap I/O     how a swap moves KV: one copy per `swap_copy_tokens` tokens per layer and K/V
               tensor (vLLM copies 16-token blocks one by one; FastSwitch copies block groups),
               synchronous (the iteration waits) or overlapped with compute (`swap_overlap`);
               with `kv_reuse`, a host copy stays valid after swap-in (KV is append-only), so
               a later swap-out copies only the tokens added since.
  role         `both`, or `prefill` / `decode` for disaggregated serving (DistServe): a
               prefill instance hands a request off once its first token is out (its KV
               stays until the driver releases it); a decode instance takes requests whose
               KV arrived from elsewhere (`add(..., resident=True)`).

Every request's state lives in a `Ledger` (numpy arrays indexed by request id) shared by the
instances of one run, so that a request can move between instances (migration, hand-off).
`Instance.step(horizon)` runs one iteration, or one jump over a run of decode iterations
whose batch cannot change (no arrival before `horizon`, no completion, enough free blocks
for every growth): their times form an arithmetic series, since a decode iteration's cost
is affine in the batch's total context (attention reads every KV token once; the GEMMs do
not change). `Engine(cost, config).run(workload)` drives one instance over a workload."""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from aios.errors import ConfigError
from aios.hardware.workload import Workload

Scheduler = Literal["orca", "vllm", "sarathi"]
Role = Literal["both", "prefill", "decode"]
_INF = math.inf


@dataclass(frozen=True, slots=True)
class EngineConfig:
    scheduler: Scheduler = "vllm"
    block_size: int = 16
    max_num_seqs: int = 256
    max_batched_tokens: int = 4096      # vllm: prefill tokens per iteration; orca: per iteration
    token_budget: int = 512             # sarathi: tokens per iteration, decodes included
    watermark: float = 0.01             # fraction of blocks kept free when admitting
    gpu_memory_utilization: float = 0.9
    preemption: Literal["recompute", "swap"] = "recompute"
    orca_reserve: Literal["oracle", "pow2", "max"] = "oracle"
    orca_buddy: bool = False            # orca: reservations in power-of-two runs of blocks (a buddy allocator)
    max_seq_len: int = 2048
    priority: bool = False              # order queues by priority; preempt lower for higher
    swap_copy_tokens: int = 0           # tokens per host<->device copy; 0 = block_size (vLLM)
    swap_overlap: bool = False          # swaps overlap compute (FastSwitch) instead of stalling it
    kv_reuse: bool = False              # a host copy stays valid; swap-out copies only new tokens
    role: Role = "both"
    record: bool = True                 # keep per-iteration and per-gap history (off for a live, long-lived instance)
    max_iterations: int = 50_000_000    # a bound on the loop, so a bug cannot hang a run

    def __post_init__(self) -> None:
        if self.scheduler not in ("orca", "vllm", "sarathi"):
            raise ConfigError(f"unknown scheduler {self.scheduler!r}", field="scheduler",
                              hint="one of: orca, vllm, sarathi")
        if self.role not in ("both", "prefill", "decode"):
            raise ConfigError(f"unknown role {self.role!r}", field="role", hint="one of: both, prefill, decode")
        for name in ("block_size", "max_num_seqs", "max_batched_tokens", "token_budget", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1", field=name)
        if self.swap_copy_tokens < 0:
            raise ConfigError("swap_copy_tokens must be >= 0 (0 = one copy per block)", field="swap_copy_tokens")
        if not 0 < self.gpu_memory_utilization <= 1 or not 0 <= self.watermark < 1:
            raise ConfigError("gpu_memory_utilization must be in (0, 1] and watermark in [0, 1)",
                              field="gpu_memory_utilization")
        if self.preemption not in ("recompute", "swap"):
            raise ConfigError(f"unknown preemption {self.preemption!r}", field="preemption",
                              hint="recompute or swap")


class Ledger:
    """Every request's state, as arrays indexed by request id, grown on demand."""
    INT = ("prompt", "output", "priority", "target", "prefilled", "done", "blocks", "preempts", "swaps",
           "migrations", "host_kv", "prefix_in")
    FLOAT = ("arrival", "first", "finish", "last", "start")

    def __init__(self, capacity: int = 64):
        self.n = 0
        capacity = max(1, capacity)
        for name in self.INT:
            setattr(self, name, np.zeros(capacity, np.int64))
        for name in self.FLOAT:
            setattr(self, name, np.full(capacity, np.nan))
        self.unserved: dict[int, str] = {}
        self.tbt_s: list[np.ndarray] = []   # gaps between tokens, one array per step
        self.tbt_w: list[float] = []        # the weight of every gap in the matching array

    @classmethod
    def of(cls, w: Workload) -> Ledger:
        led = cls(len(w))
        n = led.n = len(w)
        led.arrival[:n] = w.arrival_s
        led.prompt[:n] = w.prompt_tokens
        led.output[:n] = w.output_tokens
        led.priority[:n] = w.priority
        led.target[:n] = w.prompt_tokens
        return led

    def add(self, arrival: float, prompt: int, output: int, priority: int = 0) -> int:
        if self.n == len(self.arrival):
            for name in self.INT + self.FLOAT:
                old = getattr(self, name)
                new = np.zeros(2 * len(old), old.dtype) if name in self.INT else np.full(2 * len(old), np.nan)
                new[:len(old)] = old
                setattr(self, name, new)
        rid = self.n
        self.n += 1
        self.arrival[rid], self.prompt[rid], self.output[rid] = arrival, prompt, output
        self.priority[rid], self.target[rid] = priority, prompt
        return rid

    def tbt(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.tbt_s:
            return np.zeros(0), np.zeros(0)
        sizes = np.fromiter((len(a) for a in self.tbt_s), np.int64, len(self.tbt_s))
        return np.concatenate(self.tbt_s), np.repeat(np.asarray(self.tbt_w), sizes)


@dataclass
class EngineResult:
    """Per request: first token, finish, preemptions (NaN times for a request that was
    never served, with `unserved_reason`); per iteration: duration and batch size."""
    arrival_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    output_tokens: np.ndarray
    num_preemptions: np.ndarray
    num_swaps: np.ndarray
    iter_s: np.ndarray              # each iteration's duration
    iter_batch: np.ndarray          # sequences in each iteration
    iter_tokens: np.ndarray         # tokens each iteration processed (prefill chunks + one per decode)
    tbt_s: np.ndarray               # time between tokens, one entry per gap (or group, see tbt_weight)
    tbt_weight: np.ndarray
    makespan_s: float
    num_blocks: int
    unserved: dict[int, str] = field(default_factory=dict)
    num_migrations: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    num_gpus: int = 1
    extra: dict[str, Any] = field(default_factory=dict)   # a driver's own counts (migrations aborted, ...)
    scheduled_s: np.ndarray = field(default_factory=lambda: np.zeros(0))   # when each was first scheduled
    iter_t: np.ndarray = field(default_factory=lambda: np.zeros(0))        # each iteration's start
    iter_resident: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    compute_util: float = math.nan     # FLOPs done over peak FLOP/s x makespan, per GPU
    bandwidth_util: float = math.nan   # HBM bytes moved over peak bandwidth x makespan, per GPU

    @property
    def scheduling_delay_s(self) -> np.ndarray:
        """Arrival to first scheduled (Sarathi-Serve's capacity criterion)."""
        return self.scheduled_s - self.arrival_s

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    @property
    def tpot_s(self) -> np.ndarray:
        """Mean time per output token after the first (NaN for one-token replies)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.output_tokens > 1, (self.finish_s - self.first_token_s)
                            / np.maximum(self.output_tokens - 1, 1), np.nan)

    def mean_batch(self, start_s: float | None = None, end_s: float | None = None) -> float:
        """Sequences per iteration, weighted by iteration time, over the iterations that
        start in [start_s, end_s) when given."""
        return self._time_mean(self.iter_batch, start_s, end_s)

    def mean_resident(self, start_s: float | None = None, end_s: float | None = None) -> float:
        """Requests holding KV on the GPU (running, in vLLM's terms), weighted by time: the
        mean concurrent batch of the vLLM paper, whose prefill-only iterations still hold
        every running request."""
        return self._time_mean(self.iter_resident, start_s, end_s)

    def _time_mean(self, values: np.ndarray, start_s: float | None, end_s: float | None) -> float:
        keep = np.ones(len(self.iter_s), bool)
        if start_s is not None:
            keep &= self.iter_t >= start_s
        if end_s is not None:
            keep &= self.iter_t < end_s
        s = self.iter_s[keep]
        return float(np.sum(s * values[keep]) / max(np.sum(s), 1e-12))

    def tbt_quantile(self, q: float) -> float:
        if not len(self.tbt_s):
            return math.nan
        order = np.argsort(self.tbt_s)
        cum = np.cumsum(self.tbt_weight[order])
        return float(self.tbt_s[order][min(np.searchsorted(cum, q * cum[-1]), len(cum) - 1)])

    def summary(self) -> dict[str, Any]:
        done = ~np.isnan(self.finish_s)
        tokens = int(self.output_tokens[done].sum())
        return {"requests": len(self.arrival_s), "finished": int(done.sum()), "unserved": len(self.unserved),
                "throughput_tokens_per_s": tokens / self.makespan_s if self.makespan_s else 0.0,
                "ttft_p50_s": _q(self.ttft_s[done], 0.5), "ttft_p99_s": _q(self.ttft_s[done], 0.99),
                "tbt_p50_s": self.tbt_quantile(0.5), "tbt_p99_s": self.tbt_quantile(0.99),
                "e2e_p50_s": _q(self.e2e_s[done], 0.5), "mean_batch": self.mean_batch(),
                "preemptions": int(self.num_preemptions.sum()), "swaps": int(self.num_swaps.sum()),
                "migrations": int(self.num_migrations.sum()),
                "compute_util": self.compute_util, "bandwidth_util": self.bandwidth_util,
                "iterations": len(self.iter_s), "makespan_s": self.makespan_s}


def _q(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q)) if len(values) else math.nan


def kv_blocks(cost: Any, config: EngineConfig, share: float = 1.0) -> int:
    """KV blocks of an instance (`share` of them for a virtual engine); a ConfigError if none."""
    blocks = int(cost.kv_capacity_tokens(config.gpu_memory_utilization) * share // config.block_size)
    if blocks < 1:
        raise ConfigError("no room for the KV cache next to the weights",
                          hint="use a device with more memory, or more tensor parallelism")
    return blocks


class Instance:
    """One serving instance (tp x pp GPUs) over a shared `Ledger`.

    `add(rid)` queues a request; `step(horizon)` runs one iteration (or a jump of decode
    iterations that ends at the first one starting after `horizon`) and advances `now`;
    `remove(rid)` takes a request out with its KV (for migration; the caller moves it).
    Finished requests are appended to `finished`, and (role "prefill") requests whose
    prompt is in to `handoff`; `suspend`, `resume` and `cancel` serve the kernel's context
    switch (aios.llm.simulated)."""

    def __init__(self, cost: Any, config: EngineConfig, ledger: Ledger, name: str = "0", share: float = 1.0):
        self.cost, self.config, self.L, self.name = cost, config, ledger, name
        # pipeline parallelism: a batch crosses pp stages, so a token takes pp stage times;
        # a pp-stage instance runs as pp virtual engines (`virtual_engines`), each with 1/pp
        # of the KV blocks, whose batches follow each other through the stages
        self.stages = int(getattr(cost, "pp", 1))
        self.num_blocks = kv_blocks(cost, config, share)
        self.free = self.num_blocks
        self.watermark = int(config.watermark * self.num_blocks)
        self.now = 0.0
        self.waiting: list[int] = []     # FCFS, or by priority (preempted requests go to the front)
        self.running: list[int] = []
        self.swapped: list[int] = []     # KV in host memory (or, role decode, arriving from elsewhere)
        self.resident_in: set[int] = set()   # swapped-queue entries whose KV needs no copy in
        self.held: set[int] = set()      # suspended by the caller (kernel context switch)
        self.finished: list[int] = []
        self.handoff: list[int] = []
        self.iter_s: list[float] = []
        self.iter_t: list[float] = []    # each iteration's start
        self.iter_resident: list[int] = []   # requests holding KV on the GPU during it
        self.iter_batch: list[int] = []
        self.iter_tokens: list[int] = []
        self.iterations = 0              # iterations run (counted whether or not `record` keeps them)
        self.flops = self.bytes = 0.0    # work done per GPU (cost models with `step_work`)
        self._work = getattr(cost, "step_work", None)
        self.pending_swap_s = 0.0        # swap-out copies to charge to the next iteration
        self.copy_tokens = config.swap_copy_tokens or config.block_size
        self._orca = config.scheduler == "orca"

    # ---- queues

    def _key(self, rid: int) -> tuple[int, float, int]:
        return (-int(self.L.priority[rid]), float(self.L.arrival[rid]), rid)

    def _enqueue(self, queue: list[int], rid: int, front: bool = False) -> None:
        if self.config.priority:
            keys = [self._key(r) for r in queue]
            queue.insert(bisect.bisect_left(keys, self._key(rid)), rid)
        elif front:
            queue.insert(0, rid)
        else:
            queue.append(rid)

    def need_blocks(self, tokens: int) -> int:
        return -(-tokens // self.config.block_size)

    def reservation(self, rid: int) -> int:
        """Blocks a request holds for its whole life (orca), or at most needs (the others)."""
        cfg, L = self.config, self.L
        total = int(L.prompt[rid] + L.output[rid])
        if self._orca and cfg.orca_reserve == "max":
            total = max(total, cfg.max_seq_len)
        elif self._orca and cfg.orca_reserve == "pow2":
            total = 1 << (total - 1).bit_length()
        blocks = self.need_blocks(total)
        if self._orca and cfg.orca_buddy:   # the vLLM paper's Orca: a buddy allocator rounds up
            blocks = 1 << (blocks - 1).bit_length()
        return blocks

    def fits_ever(self, rid: int) -> str | None:
        """Why a request can never run here (None if it can)."""
        L = self.L
        full = self.reservation(rid)
        if full > self.num_blocks - self.watermark:
            return (f"needs {full} KV blocks ({int(L.prompt[rid] + L.output[rid])} tokens) but the "
                    f"instance has {self.num_blocks - self.watermark}")
        return None

    def add(self, rid: int, *, resident: bool = False, host_prefix: int = 0) -> bool:
        """Queues a request; False (and the reason in the ledger) if it can never fit.
        `resident`: its KV (prompt and first token) arrives from another instance, already
        paid for by the caller. `host_prefix`: that many tokens of its prompt have KV in host
        memory (an earlier turn kept by `kv_reuse`), copied in at admission, not prefilled."""
        why = self.fits_ever(rid)
        if why:
            self.L.unserved[rid] = why
            return False
        if resident:
            self.resident_in.add(rid)
            self._enqueue(self.swapped, rid)
        else:
            if host_prefix:
                self.L.prefix_in[rid] = min(host_prefix, int(self.L.target[rid]) - 1)
            self._enqueue(self.waiting, rid)
        return True

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.swapped)

    def remove(self, rid: int) -> int:
        """Takes a running request out (for migration); returns the KV tokens it held."""
        L = self.L
        self.running.remove(rid)
        self.free += int(L.blocks[rid])
        L.blocks[rid] = 0
        return int(L.prefilled[rid] + L.done[rid])

    def suspend(self, rid: int) -> None:
        """Takes a request out of scheduling (the kernel's context switch): a running one is
        preempted as the engine would (swap-out charged to the next iteration, or its KV
        dropped for recompute); it stays out of the queues until `resume`."""
        if rid in self.running:
            self._preempt(rid)
        for queue in (self.waiting, self.swapped):
            if rid in queue:
                queue.remove(rid)
        self.held.add(rid)

    def resume(self, rid: int) -> None:
        """Puts a suspended request back in its queue (swapped: its KV comes back in). A
        request that finished before it was suspended stays finished."""
        self.held.discard(rid)
        L = self.L
        if not math.isnan(L.finish[rid]):
            return
        if L.host_kv[rid] and L.prefilled[rid]:
            self._enqueue(self.swapped, rid)
        else:
            self._enqueue(self.waiting, rid)

    def cancel(self, rid: int) -> None:
        """Drops a request wherever it is, freeing its KV."""
        self.held.discard(rid)
        self.resident_in.discard(rid)
        for queue in (self.running, self.waiting, self.swapped, self.handoff):
            if rid in queue:
                queue.remove(rid)
        self.free += int(self.L.blocks[rid])
        self.L.blocks[rid] = 0

    def release(self, rid: int) -> None:
        """Frees a handed-off request's KV (role prefill, once the decoder has pulled it)."""
        self.free += int(self.L.blocks[rid])
        self.L.blocks[rid] = 0

    def reprioritize(self) -> None:
        """Re-sorts the queues after priorities changed in the ledger."""
        if self.config.priority:
            self.waiting.sort(key=self._key)
            self.swapped.sort(key=self._key)

    # ---- load, for global schedulers

    def used_blocks(self) -> int:
        return self.num_blocks - self.free

    def head_demand_blocks(self) -> int:
        """Blocks the head-of-line queued request needs to start (0 with an empty queue):
        the queued part of Llumnix's virtual usage."""
        head = self._head()
        return 0 if head is None else self._start_blocks(head)

    def demand_blocks(self) -> int:
        """Blocks the queued requests would take to start (their prompts; swapped: all KV)."""
        L, bs, total = self.L, self.config.block_size, 0
        if self.waiting:
            total += int((-(-(L.target[self.waiting] + 1) // bs)).sum())
        if self.swapped:
            total += int((-(-(L.prefilled[self.swapped] + L.done[self.swapped] + 1) // bs)).sum())
        return total

    # ---- swaps

    def _copy_s(self, tokens: int) -> float:
        return self.cost.kv_transfer_s(tokens, "pcie", copy_tokens=self.copy_tokens) if tokens > 0 else 0.0

    def _preempt(self, rid: int) -> None:
        """Out of the running set: swap the KV to host memory, or drop it for recompute."""
        L, cfg = self.L, self.config
        self.running.remove(rid)
        L.preempts[rid] += 1
        self.free += int(L.blocks[rid])
        L.blocks[rid] = 0
        if cfg.preemption == "swap" and not self._orca:
            L.swaps[rid] += 1
            ctx = int(L.prefilled[rid] + L.done[rid])
            self.pending_swap_s += self._copy_s(ctx - int(L.host_kv[rid]) if cfg.kv_reuse else ctx)
            L.host_kv[rid] = ctx
            self._enqueue(self.swapped, rid)
        else:
            L.target[rid] = L.prompt[rid] + L.done[rid]
            L.prefilled[rid] = 0
            L.host_kv[rid] = 0
            self._enqueue(self.waiting, rid, front=True)

    def _head(self) -> int | None:
        """The queued request that goes next: the swapped queue's head, unless (priority
        order) the waiting queue's head outranks it."""
        if self.swapped and not (self.config.priority and self.waiting
                                 and self._key(self.waiting[0]) < self._key(self.swapped[0])):
            return self.swapped[0]
        return self.waiting[0] if self.waiting else None

    def _start_blocks(self, rid: int) -> int:
        """Blocks a queued request takes to start: all its KV and the next token if swapped,
        else its prompt and first token (orca: its reservation)."""
        L = self.L
        if rid in self.swapped:
            return self.need_blocks(int(L.prefilled[rid] + L.done[rid]) + 1)
        if self._orca:
            return self.reservation(rid)
        if self.config.scheduler == "sarathi":   # the first chunk
            return self.need_blocks(min(int(L.target[rid]), max(1, self.config.token_budget - len(self.running))))
        return self.need_blocks(int(L.target[rid]) + 1)

    def _fits(self, rid: int) -> bool:
        return (len(self.running) < self.config.max_num_seqs
                and self.free - self._start_blocks(rid) >= (0 if self._orca else self.watermark))

    def _preempt_for_priority(self) -> None:
        """The next queued request, when it outranks the lowest-priority running one and
        does not fit, takes its place (as often as needed)."""
        L = self.L
        head = self._head()
        while self.running and head is not None and not self._fits(head):
            victim = max(self.running, key=self._key)
            if L.priority[victim] >= L.priority[head]:
                return
            self._preempt(victim)
            head = self._head()

    # ---- one step

    def step(self, horizon: float = _INF) -> None:
        """One scheduling round at `now`: forms a batch and runs it (or jumps over a run of
        decode iterations up to the first one that starts after `horizon`)."""
        cfg, L = self.config, self.L
        running, waiting, swapped = self.running, self.waiting, self.swapped
        if cfg.priority and (waiting or swapped):
            self._preempt_for_priority()
        pre_ids: list[int] = []
        pre_len: list[int] = []
        swap_s = self.pending_swap_s
        self.pending_swap_s = 0.0
        # swapped (or arriving) requests come back first, while room allows
        while swapped and len(running) < cfg.max_num_seqs and self._head() == swapped[0]:
            i = swapped[0]
            ctx = int(L.prefilled[i] + L.done[i])
            b = self.need_blocks(ctx + 1)
            if self.free - b < self.watermark:
                break
            swapped.pop(0)
            self.free -= b
            L.blocks[i] = b
            if i in self.resident_in:
                self.resident_in.discard(i)
            else:
                swap_s += self._copy_s(ctx)
                if not cfg.kv_reuse:
                    L.host_kv[i] = 0
            running.append(i)
        if self._orca or cfg.scheduler == "vllm":   # whole prompts, FCFS, within the token budget
            budget = cfg.max_batched_tokens - (len(running) if self._orca else 0)   # orca's decodes share it
            floor = 0 if self._orca else self.watermark
            # vLLM v0 takes no new prompt while requests wait in host memory
            while waiting and len(running) + len(pre_ids) < cfg.max_num_seqs and (self._orca or self._head() == waiting[0]):
                i = waiting[0]
                todo = int(L.target[i]) - int(L.prefix_in[i])
                # orca reserves the request's whole length; vllm the prompt and its first token
                b = self.reservation(i) if self._orca else self.need_blocks(int(L.target[i]) + 1)
                if self.free - b < floor or (todo > budget and pre_ids):   # a long prompt goes alone
                    break
                waiting.pop(0)
                self.free -= b
                L.blocks[i] = b
                swap_s += self._take_prefix(i)
                if L.start[i] != L.start[i]:   # NaN: first scheduled now
                    L.start[i] = self.now
                pre_ids.append(i)
                pre_len.append(todo)
                budget -= todo
            if self._orca:   # selective batching: decodes run beside the new prompts
                dec_ids = list(running)
            else:            # vLLM v0: an iteration is prefills only, or decodes only
                dec_ids = [] if pre_ids else list(running)
        else:   # sarathi: decodes first, then prefill chunks within the budget
            dec_ids = [i for i in running if L.prefilled[i] >= L.target[i]]
            budget = cfg.token_budget - len(dec_ids)
            for i in running:
                if budget <= 0:
                    break
                if L.prefilled[i] >= L.target[i]:
                    continue
                chunk = min(int(L.target[i] - L.prefilled[i]), budget)
                b = self.need_blocks(int(L.prefilled[i]) + chunk) - int(L.blocks[i])
                if b > self.free:
                    break
                self.free -= b
                L.blocks[i] += b
                pre_ids.append(i)
                pre_len.append(chunk)
                budget -= chunk
            while waiting and budget > 0 and len(running) < cfg.max_num_seqs and self._head() == waiting[0]:
                i = waiting[0]
                swap_in = int(L.prefix_in[i])
                chunk = min(int(L.target[i]) - swap_in, budget)
                b = self.need_blocks(swap_in + chunk)
                if self.free - b < self.watermark:
                    break
                waiting.pop(0)
                self.free -= b
                L.blocks[i] = b
                swap_s += self._take_prefix(i)
                if L.start[i] != L.start[i]:
                    L.start[i] = self.now
                running.append(i)
                pre_ids.append(i)
                pre_len.append(chunk)
                budget -= chunk

        # ---- decodes need room for their next token (not orca: reserved); preempt if not
        dec = np.asarray(dec_ids, np.int64)
        ctx = L.prefilled[dec] + L.done[dec]
        if not self._orca and len(dec):
            grow = -(-(ctx + 1) // cfg.block_size) - L.blocks[dec]
            want = int(grow.sum())
            while want > self.free and dec_ids:
                victim = max(dec_ids, key=self._key)   # the lowest priority, then the newest
                dec_ids.remove(victim)
                self._preempt(victim)
                dec = np.asarray(dec_ids, np.int64)
                ctx = L.prefilled[dec] + L.done[dec]
                grow = -(-(ctx + 1) // cfg.block_size) - L.blocks[dec]
                want = int(grow.sum())
            swap_s += self.pending_swap_s
            self.pending_swap_s = 0.0
            if len(dec):
                L.blocks[dec] += grow
                self.free -= want
        num_dec = len(dec)
        if not pre_ids and not num_dec:
            self.now += swap_s
            return

        # ---- the iteration's time, and how many identical decode iterations one jump covers
        dec_ctx = int(ctx.sum())
        pre_ctx = L.prefilled[pre_ids].tolist() if pre_ids else []
        compute = self.stages * self.cost.step_time(pre_len, pre_ctx, num_dec, dec_ctx)
        t0 = max(compute, swap_s) if cfg.swap_overlap else compute + swap_s
        k = 1
        if not pre_ids and num_dec and not self._blocked_queue_can_move():
            k = int((L.output[dec] - L.done[dec]).min())
            if k > 1 and horizon < _INF:
                k = min(k, max(1, int((horizon - self.now) // max(t0, 1e-9)) + 1))
            if k > 1 and not self._orca:
                while k > 1 and int((-(-(ctx + k) // cfg.block_size) - L.blocks[dec]).sum()) > self.free:
                    k //= 2
        if k > 1:
            slope = self.stages * self.cost.step_time(pre_len, [], num_dec, dec_ctx + num_dec) - compute
            durations = t0 + slope * np.arange(k)
            if horizon < _INF:   # stop at the first iteration that starts after the horizon
                starts = np.cumsum(durations[:-1])
                k = 1 + int(np.searchsorted(starts, horizon - self.now, side="right"))
                durations = durations[:k]
            if not self._orca:
                grow = -(-(ctx + k) // cfg.block_size) - L.blocks[dec]
                L.blocks[dec] += grow
                self.free -= int(grow.sum())
            total = float(durations.sum())
            first_end = self.now + float(durations[0])
            if cfg.record:
                self.iter_s.extend(durations.tolist())
                self.iter_t.append(self.now)
                self.iter_t.extend((self.now + np.cumsum(durations[:-1])).tolist())
        else:
            total = t0
            first_end = self.now + t0
            if cfg.record:
                self.iter_s.append(t0)
                self.iter_t.append(self.now)
        end = self.now + total
        batch = num_dec + len(pre_ids)
        tokens = num_dec + sum(pre_len)
        resident = len(running) + (0 if cfg.scheduler == "sarathi" else len(pre_ids))
        self.iterations += k
        if self._work is not None:   # the work is affine in the decodes' context: k times its mean
            f, b = self._work(pre_len, pre_ctx, num_dec, dec_ctx + num_dec * (k - 1) / 2)
            self.flops += f * k
            self.bytes += b * k
        if cfg.record:
            self.iter_batch.extend([batch] * k)
            self.iter_tokens.extend([tokens] * k)
            self.iter_resident.extend([resident] * k)
        # the first token gap of each decode, then the uniform gaps of the rest of the run
        if num_dec and cfg.record:
            L.tbt_s.append(first_end - L.last[dec])
            L.tbt_w.append(1.0)
            if k > 1:
                L.tbt_s.append(durations[1:])
                L.tbt_w.append(float(num_dec))
        # ---- advance
        finished = self.finished
        for i, length in zip(pre_ids, pre_len, strict=True):
            L.prefilled[i] += length
            if L.prefilled[i] >= L.target[i]:   # the prompt is in: the first (or next) token comes out
                if L.target[i] > L.prompt[i]:   # a recompute re-prefilled the tokens made so far:
                    L.prefilled[i] = L.target[i] = L.prompt[i]   # its KV is prompt + done again
                if math.isnan(L.first[i]):
                    L.first[i] = first_end
                L.done[i] += 1
                L.last[i] = first_end
                if L.done[i] >= L.output[i]:
                    L.finish[i] = first_end
                    if i in running:
                        running.remove(i)
                    self.free += int(L.blocks[i])
                    L.blocks[i] = 0
                    finished.append(i)
                elif cfg.role == "prefill":
                    if i in running:
                        running.remove(i)
                    self.handoff.append(i)
                elif i not in running:
                    running.append(i)
        if num_dec:
            L.done[dec] += k
            L.last[dec] = end
            ends = dec[L.done[dec] >= L.output[dec]]
            for i in ends.tolist():
                L.finish[i] = end
                running.remove(i)
                self.free += int(L.blocks[i])
                L.blocks[i] = 0
                finished.append(i)
        self.now = end

    def _take_prefix(self, rid: int) -> float:
        """At admission: the host-held prefix of the prompt (an earlier turn) is copied in."""
        tokens = int(self.L.prefix_in[rid])
        if not tokens:
            return 0.0
        self.L.prefix_in[rid] = 0
        self.L.prefilled[rid] = tokens
        return self._copy_s(tokens)

    def _blocked_queue_can_move(self) -> bool:
        """Whether a queued request could join during a decode run. Free blocks only shrink
        while decodes grow, so a head that does not fit now will not fit until a request
        finishes (which ends the run anyway)."""
        head = self._head()
        return head is not None and self._fits(head)

    def give_up(self, why: str) -> None:
        """Reports every queued request as unserved (the run is over and they never fit)."""
        for i in self.waiting + self.swapped:
            self.L.unserved[i] = why
        self.waiting.clear()
        self.swapped.clear()


def virtual_engines(cost: Any, config: EngineConfig, ledger: Ledger, name: str = "0") -> list[Instance]:
    """One serving instance as the engines a scheduler sees: one, or with pipeline
    parallelism pp, pp virtual engines sharing the KV memory (vLLM's virtual engines), so
    that pp batches are in flight at once, one per stage."""
    pp = int(getattr(cost, "pp", 1))
    if pp == 1:
        return [Instance(cost, config, ledger, name)]
    return [Instance(cost, config, ledger, f"{name}.{k}", share=1 / pp) for k in range(pp)]


def result_of(ledger: Ledger, instances: list[Instance], makespan: float, num_gpus: int = 1) -> EngineResult:
    n = ledger.n
    tbt, tbt_w = ledger.tbt()
    util = [math.nan, math.nan]
    if makespan > 0 and all(hasattr(x.cost, "peak_flops") for x in instances):
        physical = sum(1 / x.stages for x in instances)   # a pp instance is pp virtual engines on one set of GPUs
        util = [sum(x.flops / x.cost.peak_flops for x in instances) / makespan / physical,
                sum(x.bytes / x.cost.peak_bytes_per_s for x in instances) / makespan / physical]
    return EngineResult(ledger.arrival[:n].copy(), ledger.first[:n].copy(), ledger.finish[:n].copy(),
                        ledger.output[:n].copy(), ledger.preempts[:n].copy(), ledger.swaps[:n].copy(),
                        np.concatenate([np.asarray(x.iter_s) for x in instances]),
                        np.concatenate([np.asarray(x.iter_batch, np.int64) for x in instances]),
                        np.concatenate([np.asarray(x.iter_tokens, np.int64) for x in instances]),
                        tbt, tbt_w, float(makespan), sum(x.num_blocks for x in instances), dict(ledger.unserved),
                        ledger.migrations[:n].copy(), num_gpus, {}, ledger.start[:n].copy(),
                        np.concatenate([np.asarray(x.iter_t) for x in instances]),
                        np.concatenate([np.asarray(x.iter_resident, np.int64) for x in instances]), *util)


class Engine:
    """`Engine(cost, config).run(workload)`: one instance over a workload. `cost` is an
    aios.hardware.cost.CostModel (or anything with `step_time(prefill_lens, prefill_ctx,
    num_decodes, decode_ctx_tokens)`, `kv_capacity_tokens(utilization)` and
    `kv_transfer_s(tokens, link, copy_tokens=None)`)."""

    def __init__(self, cost: Any, config: EngineConfig | None = None):
        self.cost = cost
        self.config = config or EngineConfig()
        self.num_blocks = kv_blocks(cost, self.config)   # checks that there is room at all

    def run(self, w: Workload) -> EngineResult:
        if int(getattr(self.cost, "pp", 1)) > 1:
            raise ConfigError(f"an Engine is one pipeline stage; this cost model has pp={self.cost.pp}",
                              field="pp", hint="aios.hardware.cluster.serve runs pp stages as virtual engines")
        ledger = Ledger.of(w)
        inst = Instance(self.cost, self.config, ledger)
        arrivals = w.arrival_s.tolist()   # Python floats: scalar reads in the loop are cheaper
        n, j = len(w), 0
        for _ in range(self.config.max_iterations):
            while j < n and arrivals[j] <= inst.now:
                inst.add(j)
                j += 1
            if not inst.has_work():
                if j >= n:
                    break
                inst.now = max(inst.now, arrivals[j])
                continue
            before = inst.iterations, inst.now
            inst.step(arrivals[j] if j < n else _INF)
            if (inst.iterations, inst.now) == before:   # nothing could run
                if j < n:
                    inst.now = max(inst.now, arrivals[j])
                else:
                    inst.give_up("could not be scheduled: no KV room was ever free for it")
        else:
            raise ConfigError(f"the simulation passed {self.config.max_iterations} iterations",
                              field="max_iterations")
        return result_of(ledger, [inst], inst.now)
