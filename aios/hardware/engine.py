"""One serving instance, simulated iteration by iteration: a paged KV cache and a
scheduler that forms each iteration's batch; the cost model gives each iteration's time.

Schedulers (`EngineConfig.scheduler`):
  orca     iteration-level batching with memory reserved at admission for the request's
           whole length (`orca_reserve`: oracle = prompt + output, pow2 = the next power of
           two, max = max_seq_len); never preempts. The baseline of the vLLM paper.
  vllm     continuous batching on a paged KV cache (blocks of `block_size` tokens, allocated
           as tokens are produced, above a watermark); an iteration runs either new
           prompts' prefills (FCFS, up to max_batched_tokens) or every running request's
           decode; when a decode needs a block and none is free, the newest running request
           is preempted, by recompute or by swap to host memory (vLLM v0).
  sarathi  chunked prefill with a token budget, stall-free: every iteration first takes one
           token of each running decode, then fills the rest of the budget with prefill
           chunks (Sarathi-Serve).

The loop keeps per-request state in numpy arrays and jumps over runs of decode iterations
whose batch cannot change (no arrival, completion or block shortage before their end):
their times form an arithmetic series, since a decode iteration's cost is affine in the
batch's total context (attention reads every KV token once; the GEMMs do not change)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from aios.errors import ConfigError
from aios.hardware.workload import Workload

Scheduler = Literal["orca", "vllm", "sarathi"]


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
    max_seq_len: int = 2048
    max_iterations: int = 50_000_000    # a bound on the loop, so a bug cannot hang a run

    def __post_init__(self) -> None:
        if self.scheduler not in ("orca", "vllm", "sarathi"):
            raise ConfigError(f"unknown scheduler {self.scheduler!r}", field="scheduler",
                              hint="one of: orca, vllm, sarathi")
        for name in ("block_size", "max_num_seqs", "max_batched_tokens", "token_budget", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1", field=name)
        if not 0 < self.gpu_memory_utilization <= 1 or not 0 <= self.watermark < 1:
            raise ConfigError("gpu_memory_utilization must be in (0, 1] and watermark in [0, 1)",
                              field="gpu_memory_utilization")


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

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    @property
    def e2e_s(self) -> np.ndarray:
        return self.finish_s - self.arrival_s

    def mean_batch(self) -> float:
        """Sequences per iteration, weighted by iteration time (the mean concurrent batch)."""
        return float(np.sum(self.iter_s * self.iter_batch) / max(np.sum(self.iter_s), 1e-12))

    def tbt_quantile(self, q: float) -> float:
        if not len(self.tbt_s):
            return math.nan
        order = np.argsort(self.tbt_s)
        cum = np.cumsum(self.tbt_weight[order])
        return float(self.tbt_s[order][np.searchsorted(cum, q * cum[-1])])

    def summary(self) -> dict[str, Any]:
        done = ~np.isnan(self.finish_s)
        tokens = int(self.output_tokens[done].sum())
        return {"requests": len(self.arrival_s), "finished": int(done.sum()), "unserved": len(self.unserved),
                "throughput_tokens_per_s": tokens / self.makespan_s if self.makespan_s else 0.0,
                "ttft_p50_s": _q(self.ttft_s[done], 0.5), "ttft_p99_s": _q(self.ttft_s[done], 0.99),
                "tbt_p50_s": self.tbt_quantile(0.5), "tbt_p99_s": self.tbt_quantile(0.99),
                "e2e_p50_s": _q(self.e2e_s[done], 0.5), "mean_batch": self.mean_batch(),
                "preemptions": int(self.num_preemptions.sum()), "swaps": int(self.num_swaps.sum()),
                "iterations": len(self.iter_s), "makespan_s": self.makespan_s}


def _q(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q)) if len(values) else math.nan


class Engine:
    """`Engine(cost, config).run(workload)`; `cost` is an aios.hardware.cost.CostModel (or
    anything with `iteration(prefill_lens, prefill_ctx, decode_ctx)` returning an object
    with `time_s`, `kv_capacity_tokens(utilization)` and `kv_transfer_s(tokens, link)`)."""

    def __init__(self, cost: Any, config: EngineConfig | None = None):
        self.cost = cost
        self.config = config or EngineConfig()
        self.num_blocks = int(cost.kv_capacity_tokens(self.config.gpu_memory_utilization) // self.config.block_size)
        if self.num_blocks < 1:
            raise ConfigError("no room for the KV cache next to the weights",
                              hint="use a device with more memory, or more tensor parallelism")

    def run(self, w: Workload) -> EngineResult:
        cfg = self.config
        n = len(w)
        bs = cfg.block_size
        prompt = w.prompt_tokens.astype(np.int64)
        output = w.output_tokens.astype(np.int64)
        first = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        preempts = np.zeros(n, np.int64)
        swaps = np.zeros(n, np.int64)
        done_tokens = np.zeros(n, np.int64)     # output tokens produced
        prefilled = np.zeros(n, np.int64)       # prompt (+ recomputed) tokens in the KV cache
        target = prompt.copy()                   # tokens to prefill before decoding (grows on recompute)
        blocks = np.zeros(n, np.int64)           # blocks held (or reserved, for orca)
        last_token = np.zeros(n)
        swapped: list[int] = []                  # preempted by swap: KV in host memory
        unserved: dict[int, str] = {}
        free = self.num_blocks
        watermark = int(cfg.watermark * self.num_blocks)
        waiting: list[int] = []                  # FCFS (preempted requests go to the front)
        running: list[int] = []
        next_arrival = 0
        arrivals = w.arrival_s.tolist()          # Python floats: scalar reads in the loop are cheaper
        now = 0.0
        iter_s: list[float] = []
        iter_batch: list[int] = []
        iter_tokens: list[int] = []
        tbt_s: list[np.ndarray] = []
        tbt_w: list[np.ndarray] = []
        empty = np.zeros(0, np.int64)

        def need_blocks(tokens: int) -> int:
            return -(-tokens // bs)

        def reservation(i: int) -> int:
            total = int(prompt[i] + output[i])
            if cfg.orca_reserve == "max":
                total = max(total, cfg.max_seq_len)
            elif cfg.orca_reserve == "pow2":
                total = 1 << (total - 1).bit_length()
            return need_blocks(total)

        for _ in range(cfg.max_iterations):
            while next_arrival < n and arrivals[next_arrival] <= now:
                i = next_arrival
                next_arrival += 1
                full = reservation(i) if cfg.scheduler == "orca" else need_blocks(int(prompt[i] + output[i]))
                if full > self.num_blocks - watermark:
                    unserved[i] = (f"needs {full} KV blocks ({int(prompt[i] + output[i])} tokens) but the "
                                   f"instance has {self.num_blocks - watermark}")
                    continue
                waiting.append(i)
            if not running and not waiting and not swapped:
                if next_arrival >= n:
                    break
                now = max(now, arrivals[next_arrival])
                continue

            # ---- form the batch
            pre_ids: list[int] = []
            pre_len: list[int] = []
            swap_in_s = 0.0
            if swapped and cfg.scheduler == "vllm":   # swapped requests come back first, when room allows
                while swapped and free - watermark >= blocks[swapped[0]] and len(running) < cfg.max_num_seqs:
                    i = swapped.pop(0)
                    free -= int(blocks[i])
                    swap_in_s += self.cost.kv_transfer_s(int(prefilled[i] + done_tokens[i]), "pcie")
                    running.append(i)
            if cfg.scheduler in ("orca", "vllm"):   # whole prompts, FCFS, within the token budget
                orca = cfg.scheduler == "orca"
                budget = cfg.max_batched_tokens - (len(running) if orca else 0)   # orca's decodes share it
                floor = 0 if orca else watermark
                while waiting and len(running) + len(pre_ids) < cfg.max_num_seqs:
                    i = waiting[0]
                    # orca reserves the request's whole length; vllm the prompt and its first token
                    b = reservation(i) if orca else need_blocks(int(target[i]) + 1)
                    if free - b < floor or (int(target[i]) > budget and pre_ids):   # a long prompt goes alone
                        break
                    waiting.pop(0)
                    free -= b
                    blocks[i] = b
                    pre_ids.append(i)
                    pre_len.append(int(target[i]))
                    budget -= int(target[i])
                if orca:   # selective batching: decodes run beside the new prompts
                    dec_ids = [i for i in running if prefilled[i] >= target[i]]
                else:      # vLLM v0: an iteration is prefills only, or decodes only
                    dec_ids = [] if pre_ids else list(running)
            else:   # sarathi: decodes first, then prefill chunks within the budget
                dec_ids = [i for i in running if prefilled[i] >= target[i]]
                budget = cfg.token_budget - len(dec_ids)
                for i in [i for i in running if prefilled[i] < target[i]]:
                    if budget <= 0:
                        break
                    chunk = min(int(target[i] - prefilled[i]), budget)
                    b = need_blocks(int(prefilled[i]) + chunk) - int(blocks[i])
                    if b > free:
                        break
                    free -= b
                    blocks[i] += b
                    pre_ids.append(i)
                    pre_len.append(chunk)
                    budget -= chunk
                while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
                    i = waiting[0]
                    chunk = min(int(target[i]), budget)
                    b = need_blocks(chunk)
                    if free - b < watermark:
                        break
                    waiting.pop(0)
                    free -= b
                    blocks[i] = b
                    running.append(i)
                    pre_ids.append(i)
                    pre_len.append(chunk)
                    budget -= chunk

            # ---- decodes need room for their next token (vllm, sarathi); preempt if not
            if cfg.scheduler != "orca" and dec_ids:
                ctx = prefilled[dec_ids] + done_tokens[dec_ids]
                want = int((need_blocks_vec(ctx + 1, bs) - blocks[dec_ids]).sum())
                while want > free and dec_ids:
                    victim = max(dec_ids, key=lambda j: (w.arrival_s[j], j))   # the newest
                    dec_ids.remove(victim)
                    running.remove(victim)
                    preempts[victim] += 1
                    if cfg.preemption == "swap" and cfg.scheduler == "vllm":
                        swaps[victim] += 1
                        swap_in_s += self.cost.kv_transfer_s(int(prefilled[victim] + done_tokens[victim]), "pcie")
                        free += int(blocks[victim])
                        swapped.append(victim)
                    else:   # recompute: drop the KV; the prompt and what was generated prefill again
                        free += int(blocks[victim])
                        blocks[victim] = 0
                        target[victim] = prompt[victim] + done_tokens[victim]
                        prefilled[victim] = 0
                        waiting.insert(0, victim)
                    ctx = prefilled[dec_ids] + done_tokens[dec_ids]
                    want = int((need_blocks_vec(ctx + 1, bs) - blocks[dec_ids]).sum())
                if dec_ids:
                    grow = need_blocks_vec(ctx + 1, bs) - blocks[dec_ids]
                    blocks[dec_ids] += grow
                    free -= int(grow.sum())
            if not pre_ids and not dec_ids:
                if swap_in_s:
                    now += swap_in_s
                    continue
                if next_arrival >= n and not running:
                    for i in waiting + swapped:
                        unserved[i] = "could not be scheduled: no KV room was ever free for it"
                    break
                if next_arrival < n:   # nothing fits until something arrives or finishes
                    now = max(now, arrivals[next_arrival])
                    continue
                for i in waiting + swapped:
                    unserved[i] = "could not be scheduled"
                break

            # ---- how many identical decode iterations can run in one jump
            dec = np.asarray(dec_ids, np.int64)
            ctx = prefilled[dec] + done_tokens[dec] if len(dec) else empty
            pl = np.asarray(pre_len, np.int64)
            pc = prefilled[pre_ids] if pre_ids else empty
            t0 = self.cost.iteration(pl, pc, ctx).time_s + swap_in_s
            k = 1
            if not pre_ids and len(dec) and not waiting and not swapped:
                k = self._run_length(dec, ctx, output, done_tokens, blocks, free, bs, w, next_arrival, now, t0)
            if k > 1:
                slope = self.cost.iteration(pl, pc, ctx + 1).time_s + swap_in_s - t0
                durations = t0 + slope * np.arange(k)
                grow = need_blocks_vec(ctx + k, bs) - blocks[dec]
                blocks[dec] += grow
                free -= int(grow.sum())
            else:
                durations = np.array([t0])
            # the first token gap of each decode, then the uniform gaps of the rest of the run
            if len(dec):
                tbt_s.append(now + durations[0] - last_token[dec])
                tbt_w.append(np.ones(len(dec)))
                if k > 1:
                    tbt_s.append(durations[1:])
                    tbt_w.append(np.full(k - 1, float(len(dec))))
            end = now + float(durations.sum())
            iter_s.extend(durations.tolist())
            iter_batch.extend([len(dec) + len(pre_ids)] * k)
            iter_tokens.extend([len(dec) + int(pl.sum())] * k)
            # ---- advance
            for i, length in zip(pre_ids, pre_len, strict=True):
                prefilled[i] += length
                if prefilled[i] >= target[i]:   # the prompt is in: the first (or next) token comes out
                    if np.isnan(first[i]):
                        first[i] = now + durations[0]
                    done_tokens[i] += 1
                    last_token[i] = now + durations[0]
                    if i not in running:
                        running.append(i)
            if len(dec):
                done_tokens[dec] += k
                last_token[dec] = end
            now = end
            finished = [i for i in pre_ids if done_tokens[i] >= output[i]]
            if len(dec):
                finished += dec[done_tokens[dec] >= output[dec]].tolist()
            for i in finished:
                finish[i] = now
                running.remove(i)
                free += int(blocks[i])
                blocks[i] = 0
        else:
            raise ConfigError(f"the simulation passed {cfg.max_iterations} iterations", field="max_iterations")
        return EngineResult(w.arrival_s, first, finish, output, preempts, swaps, np.array(iter_s),
                            np.array(iter_batch), np.array(iter_tokens), np.concatenate(tbt_s) if tbt_s else np.zeros(0),
                            np.concatenate(tbt_w) if tbt_w else np.zeros(0), now, self.num_blocks, unserved)

    def _run_length(self, dec: np.ndarray, ctx: np.ndarray, output: np.ndarray, done_tokens: np.ndarray,
                    blocks: np.ndarray, free: int, bs: int, w: Workload, next_arrival: int, now: float,
                    t0: float) -> int:
        """Decode iterations that can run before the batch changes: up to the first
        completion, the next arrival, and while the free blocks cover every growth."""
        k = int((output[dec] - done_tokens[dec]).min())
        if next_arrival < len(w):
            gap = float(w.arrival_s[next_arrival]) - now
            k = min(k, max(1, int(gap // max(t0, 1e-9)) + 1))
        while k > 1 and int((need_blocks_vec(ctx + k, bs) - blocks[dec]).sum()) > free:
            k //= 2
        return max(1, k)


def need_blocks_vec(tokens: np.ndarray, bs: int) -> np.ndarray:
    return -(-tokens // bs)
