"""`aios bench hardware`: the serving papers' comparisons, reproduced on the SIMULATOR
(aios.hardware: a calibrated discrete-event model of LLM serving, not real GPUs), each on
the paper's own setup, plus the simulator's speed.

`papers` has one entry per paper: `paper` (the published ratio, from PAPERS.md), `simulated`
(the ratio the simulator gets), `metric`, `setup`, the `baseline` and `system` figures it
divided, and `note` (why a ratio differs, where known). Nothing in a scenario is chosen to
hit the published number: the setups are the papers' (model, device, parallelism, lengths,
rates, SLOs; sources in SETUPS), the calibration comes from single-operator measurements
(aios/hardware/data/calibration.toml), and where a paper leaves a parameter open the
choice and its reason are stated.

Speed: `sim_10k_requests_s` is the simulation loop of Vidur's comparison workload (10,000
requests, Llama-2-7B, one A100-80GB, vLLM scheduler, Poisson 12/s, 512 prompt and 128 output
tokens), the median of three runs; `sim_llumnix_100k_s` one run of a 16-instance Llumnix
cluster over 100,000 requests; `roofline_share` the simulated decode throughput of
Llama-2-7B on one A100 over the pure roofline bound at the same batch."""
from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aios.hardware.cluster import Cluster, ClusterConfig, DistServe, Placement
from aios.errors import ConfigError
from aios.hardware.calibration import load_calibration
from aios.hardware.conversation import Conversations, PriorityUpdates
from aios.hardware.cost import CostModel
from aios.hardware.engine import Engine, EngineConfig, EngineResult
from aios.hardware.metrics import SLO, attainment, max_rate
from aios.hardware.profiles import get_profile
from aios.hardware.specs import get_device, get_model
from aios.hardware.workload import Arrivals, Lengths, Workload, dataset, from_dataset, sessions, synthetic

SIMULATED = ("SIMULATED: every figure comes from aios.hardware, a discrete-event model of LLM serving "
             "calibrated on single-operator measurements; no GPU ran")


def cost_of(model: str, device: str, tp: int = 1, pp: int = 1, engine: str | None = None,
            profile: str | None = None) -> CostModel:
    """A cost model; `engine="eager"` for the vLLM 0.1-0.2 engines of the 2023 papers (their
    fixed and per-sequence costs, measured in Llumnix's artifact: calibration.toml);
    `profile`: an engine's measured iteration times instead of the roofline (profiles.toml)."""
    cal = load_calibration().for_device(device, engine=engine) if engine else None
    prof = get_profile(profile, model, device, tp) if profile else None
    return CostModel(get_model(model), get_device(device), tp=tp, pp=pp, calibration=cal, profile=prof)


def entry(paper: float, simulated: float, metric: str, setup: str, baseline: dict[str, Any],
          system: dict[str, Any], note: str = "", limits: str = "") -> dict[str, Any]:
    """One paper's comparison. `limits`: what the scenario does not model or had to assume,
    the first places to look when the ratio is off."""
    close = bool(paper and math.isfinite(simulated) and abs(simulated / paper - 1) <= 0.35)
    verdict = ("within 35% of the published ratio" if close else
               f"outside 35% of the published ratio ({simulated / paper:.2f}x of it)" if paper and math.isfinite(simulated)
               else "no ratio")
    return {"paper": paper, "simulated": round(simulated, 3) if math.isfinite(simulated) else simulated,
            "metric": metric, "setup": setup, "baseline": baseline, "system": system,
            "within_35pct": close, "right_direction": (paper > 1) == (simulated > 1),
            "note": "; ".join(x for x in (verdict, note) if x), "limits": limits}


def _r(x: float, nd: int = 4) -> float:
    return round(float(x), nd) if math.isfinite(x) else x


# ---- 1. vLLM (PagedAttention) vs Orca (Oracle): mean concurrent batch

def vllm_paged(quick: bool, seed: int) -> dict[str, Any]:
    rate, n = 2.0, (600 if quick else 3000)
    warmup = 0.2 * n / rate          # the mean is taken after the first fifth of the arrivals
    cost = cost_of("opt-13b", "a100-40gb", engine="eager")   # vLLM 0.1 and the Orca re-implementation: eager
    w = from_dataset("sharegpt_vllm", n, Arrivals("poisson", rate), seed=seed)
    common = {"max_batched_tokens": 2560, "max_seq_len": 2048, "block_size": 16}
    orca = Engine(cost, EngineConfig(scheduler="orca", orca_reserve="oracle", orca_buddy=True, max_num_seqs=256,
                                     **common)).run(w)
    vllm = Engine(cost, EngineConfig(scheduler="vllm", max_num_seqs=2048, **common)).run(w)
    end = float(w.arrival_s[-1])
    b_orca, b_vllm = orca.mean_resident(warmup, end), vllm.mean_resident(warmup, end)
    return entry(2.2, b_vllm / b_orca, "mean concurrent batch (running requests, time-weighted, while "
                 "requests arrive), vLLM / Orca (Oracle)",
                 f"OPT-13B, 1x A100-40GB, eager engine, {dataset('sharegpt_vllm').source}; Poisson {rate:g} req/s, "
                 f"{n} requests; max 2560 batched tokens, blocks of 16 (the paper's artifact)",
                 {"system": "Orca (Oracle) as the paper re-implemented it: prompt + true output reserved at admission "
                            "through a buddy allocator (power-of-two runs of blocks), max 256 sequences",
                  "mean_batch": _r(b_orca, 2), "kv_blocks": orca.num_blocks,
                  "ttft_p50_s": _r(float(np.nanmedian(orca.ttft_s)), 3)},
                 {"system": "vLLM: paged KV, blocks allocated on demand, recompute preemption",
                  "mean_batch": _r(b_vllm, 2), "preemptions": int(vllm.num_preemptions.sum()),
                  "ttft_p50_s": _r(float(np.nanmedian(vllm.ttft_s)), 3)},
                 note="paper figures (mean batch): Orca Max 7.00, Pow2 9.81, Oracle 13.62, vLLM 30.42 [2nd]",
                 limits="the buddy allocator's external fragmentation is not modelled (only its power-of-two "
                        "rounding); prompt and output lengths are drawn independently from the artifact's quantiles; "
                        "the eager engine's fixed and per-sequence costs were measured on vLLM 0.2 with LLaMA-7B on an "
                        "A10 (Llumnix's artifact) and are assumed to carry over to vLLM 0.1 on an A100")


def _lengths(name: str) -> tuple[Lengths, Lengths]:
    d = dataset(name)
    return d.prompt, d.output


# ---- 2. Sarathi-Serve vs vLLM: capacity under a P99 TBT SLO

def sarathi_serve(quick: bool, seed: int) -> dict[str, Any]:
    n = 400 if quick else 2048          # requests per probe (the artifact's capacity search: 2048)
    # Sarathi-Serve's engine as its paper measures it: the strict SLO is 5x a decode step of
    # batch 32 at 4k context, 0.1 s for Mistral-7B, so a step is ~20 ms: today's fixed cost
    # (24 ms here), not the 2023 vLLM engines' per-sequence costs (33 ms)
    cost = cost_of("mistral-7b", "a100-80gb")
    prompt, output = _lengths("sharegpt4")
    tbt_slo, delay_slo = 0.1, 2.0

    def score(r: EngineResult) -> float:
        """>= 1 when P99 TBT <= 0.1 s and the median scheduling delay <= 2 s."""
        delay = float(np.nanmedian(r.scheduling_delay_s))
        return min(tbt_slo / max(r.tbt_quantile(0.99), 1e-9), delay_slo / max(delay, 1e-9))

    def cap(cfg: EngineConfig) -> tuple[float, dict[str, Any]]:
        def run_at(rate: float) -> EngineResult:
            w = synthetic(n, Arrivals("poisson", rate), prompt, output, seed=seed)
            return Engine(cost, cfg).run(w)
        c = max_rate(run_at, score, 1.0, low=0.02, high=20.0, rel_tol=0.025)
        return c.rate, {"capacity_qps": _r(c.rate, 3), "probes": len(c.probes), **({"reason": c.reason} if c.reason else {})}

    base, base_info = cap(EngineConfig(scheduler="vllm", max_num_seqs=128, max_batched_tokens=8192, max_seq_len=8192))
    sarathi_rate, sarathi_info = cap(EngineConfig(scheduler="sarathi", token_budget=512, max_num_seqs=128,
                                                  max_seq_len=8192))
    return entry(2.6, sarathi_rate / base if base else math.inf,
                 "capacity (highest QPS with P99 TBT <= 0.1 s and median scheduling delay <= 2 s), Sarathi / vLLM",
                 f"Mistral-7B, 1x A100-80GB, {dataset('sharegpt4').source}; Poisson, {n} requests "
                 "per probe",
                 {"system": "vLLM: max batch 128, whole prefills first (decodes stall)", **base_info},
                 {"system": "Sarathi-Serve: chunked prefill, token budget 512, stall-free, max batch 128",
                  **sarathi_info},
                 limits="vLLM is bound by P99 TBT (a whole prefill stalls every running decode), Sarathi by the "
                        "scheduling delay at its throughput. The paper's per-cell capacities were not found in primary "
                        "form. The engine's fixed cost is today's (4 ms), which puts a decode step of batch 32 at 4k "
                        "context at 24 ms against the ~20 ms the paper's SLO definition implies; the chunking overhead "
                        "this cost model charges at chunk 512 (~7%) is below the ~25% the paper measured on Yi-34B, "
                        "so Sarathi's absolute capacity here is likely high. The output length's spread (sigma 0.8) "
                        "is assumed.")


# ---- 3. DistServe vs vLLM: per-GPU goodput at 90% SLO attainment

def distserve(quick: bool, seed: int) -> dict[str, Any]:
    # DistServe's artifact measures each (system, rate) point with one run of 25 requests per
    # GPU (vLLM on 4 GPUs: 100, DistServe on 8: 200); its goodput is where attainment crosses
    # 90%. Short runs are part of the measure: a 15 s TTFT bound tolerates a queue that grows
    # for a run of a minute. Here each point averages the attainment of several such runs.
    runs = 3 if quick else 10
    model, device = "opt-66b", "a100-80gb"
    slo = SLO(ttft_s=15.0, tpot_s=0.15)

    def workload(rate: float, count: int, run: int, outputs: Lengths = LONGBENCH_OUTPUT) -> Workload:
        """LongBench as DistServe's artifact prepares it: the answer's length is the output;
        the context is cut to min(2040 - output, U[1900, 2048]) tokens."""
        rng = np.random.default_rng([seed, run])
        arrival = Arrivals("poisson", rate).sample(rng, count)
        out = outputs.sample(rng, count)
        prompt = np.minimum(2040 - out, rng.integers(1900, 2049, size=count))
        return Workload(arrival, prompt, out)

    def goodput(serve: Callable[[Workload], EngineResult], count: int, outputs: Lengths = LONGBENCH_OUTPUT) -> Any:
        def run_at(rate: float) -> list[EngineResult]:
            return [serve(workload(rate, count, k, outputs)) for k in range(runs)]
        return max_rate(run_at, lambda rs: float(np.mean([attainment(r, slo) for r in rs])), 0.9,  # type: ignore[arg-type]
                        low=0.01, high=20.0, rel_tol=0.02,
                        what="meets the SLO for only {score:.0%} of requests (target {target:.0%})")

    # the artifact's settings: vLLM 0.2 at TP4; DistServe's C++ engine with prefill at TP4 and
    # decode at TP2 x PP2 on one 8-GPU node (KV over NVLink). Each engine's iterations are timed
    # by the profile DistServe's authors measured of it on A100-80GB (data/profiles.toml).
    vllm_cost = cost_of(model, device, tp=4, profile="vllm-0.2")
    vllm_engine = EngineConfig(scheduler="vllm", max_num_seqs=1024, max_batched_tokens=16384,
                               gpu_memory_utilization=0.95, max_seq_len=2048)
    vllm = goodput(lambda w: Engine(vllm_cost, vllm_engine).run(w), 100)
    place = Placement(cost_of(model, device, tp=4, profile="distserve"),
                      cost_of(model, device, tp=2, pp=2, profile="distserve"), 1, 1, 4, 4)
    pre_engine = EngineConfig(scheduler="vllm", max_num_seqs=128, max_batched_tokens=8192,
                              gpu_memory_utilization=0.95, max_seq_len=2048)
    dec_engine = replace(pre_engine, max_num_seqs=1024, max_batched_tokens=65536)
    full = goodput(lambda w: DistServe(place, pre_engine, dec_engine).run(w), 200)
    vllm_per_gpu, per_gpu = vllm.rate / 4, full.rate / place.num_gpus
    # the same with the other reading of the unknown answer lengths: one lognormal, no short mode
    alt_vllm = goodput(lambda w: Engine(vllm_cost, vllm_engine).run(w), 100, LONGBENCH_OUTPUT_ONE)
    alt_full = goodput(lambda w: DistServe(place, pre_engine, dec_engine).run(w), 200, LONGBENCH_OUTPUT_ONE)
    alt_ratio = (alt_full.rate / place.num_gpus) / (alt_vllm.rate / 4) if alt_vllm.rate else math.inf
    return entry(4.48, per_gpu / vllm_per_gpu if vllm_per_gpu else math.inf,
                 "per-GPU goodput (highest rate with 90% of requests within TTFT 15 s and TPOT 0.15 s, / GPUs), "
                 "DistServe / vLLM",
                 f"OPT-66B, A100-80GB SXM; LongBench prompts cut to ~1.9-2k tokens as DistServe's artifact does, "
                 f"outputs {LONGBENCH_OUTPUT.source}; Poisson; each point the mean attainment of {runs} runs of "
                 "the artifact's size (25 requests per GPU); iterations timed by the engines' measured profiles",
                 {"system": "vLLM 0.2, tensor parallelism 4, max 1024 sequences / 16384 tokens (DistServe's "
                            "profile of it)",
                  "goodput_rps": _r(vllm.rate, 3), "gpus": 4, "per_gpu_rps": _r(vllm_per_gpu, 4),
                  "requests_per_run": 100},
                 {"system": "DistServe: prefill TP4 + decode TP2 x PP2 (the artifact's placement), KV over NVLink "
                            "(its engine's profile)",
                  "goodput_rps": _r(full.rate, 3), "gpus": place.num_gpus, "per_gpu_rps": _r(per_gpu, 4),
                  "requests_per_run": 200},
                 note=f"the artifact's own run (evaluation/2-benchmark-serving/plot.ipynb, figure 9) crosses 90% at "
                      f"0.12 (vLLM) and 0.53 (DistServe) requests/s per GPU (4.24x); with the outputs "
                      f"{LONGBENCH_OUTPUT_ONE.source} instead, the ratio is {alt_ratio:.2f} (vLLM "
                      f"{alt_vllm.rate / 4:.3f}, DistServe {alt_full.rate / place.num_gpus:.3f} per GPU)",
                 limits="LongBench's answer lengths (the outputs) could not be read and are estimated per dataset; "
                        "vLLM's goodput here is bound by TPOT misses of short answers whose few decode steps meet "
                        "a whole-prefill stall, which makes it most sensitive to the share of very short answers "
                        "(the note gives the ratio without a short mode); the profiles were fitted on whole prefills "
                        "and decode-only steps; the paper's own placement search is not reproduced (the "
                        "artifact's placement is used).")


# LongBench's answers as DistServe's artifact reads them: every .jsonl of the LongBench data
# folder (its 21 datasets and the 13 of LongBench-E), the first answer's length in OPT tokens
# (with the BOS token) as the output. Per dataset: (samples, median answer tokens, sigma).
# The sample counts are LongBench's (README; LongBench-E about 300 each); the medians are
# estimates from what each dataset's answers are (a label, a number, a few words, a line of
# code, a summary), since the data cannot be downloaded here: an assumption, stated.
LONGBENCH_ANSWERS: dict[str, tuple[int, float, float]] = {
    # single- and multi-document QA: a phrase, a few words
    "narrativeqa": (200, 7, 0.6), "qasper": (200 + 224, 12, 0.8), "multifieldqa_en": (150 + 150, 20, 0.6),
    "multifieldqa_zh": (200, 40, 0.6), "hotpotqa": (200 + 300, 5, 0.4), "2wikimqa": (200 + 300, 5, 0.4),
    "musique": (200, 5, 0.4), "dureader": (200, 150, 0.6),
    # summarization: a summary
    "gov_report": (200 + 300, 700, 0.4), "qmsum": (200, 100, 0.6), "multi_news": (200 + 294, 350, 0.5),
    "vcsum": (200, 400, 0.5),
    # few-shot: a label, an answer, a dialogue summary
    "trec": (200 + 300, 4, 0.3), "triviaqa": (200 + 300, 5, 0.5), "samsum": (200 + 300, 30, 0.5),
    "lsht": (200, 6, 0.3),
    # synthetic: a count, a paragraph's name
    "passage_count": (200 + 300, 2, 0.2), "passage_retrieval_en": (200 + 300, 4, 0.2),
    "passage_retrieval_zh": (200, 6, 0.2),
    # code: the next line
    "lcc": (500 + 300, 12, 0.6), "repobench-p": (500 + 300, 15, 0.6),
}
LONGBENCH_OUTPUT_ONE = Lengths.lognormal(64, 1.0, cap=512, source="lognormal, median 64, sigma 1.0, capped at 512")
LONGBENCH_OUTPUT = Lengths.mixture(
    [(n, Lengths.lognormal(median, sigma, low=2, cap=1500)) for n, median, sigma in LONGBENCH_ANSWERS.values()],
    cap=1500, source="a mixture over LongBench's datasets by sample count, each a lognormal around an estimated "
                     "typical answer length (two-fifths are five tokens or fewer, a tenth are summaries of hundreds): "
                     "an assumption, the answers themselves could not be read")


# ---- 4. Llumnix vs INFaaS++: P99 prefill latency on 16 instances

def llumnix(quick: bool, seed: int) -> dict[str, Any]:
    n = 2000 if quick else 10_000
    cost = cost_of("llama-7b", "a10", engine="eager")   # Llumnix's engine is a vLLM 0.2.0 fork: eager
    engine = EngineConfig(scheduler="vllm", max_batched_tokens=12800, max_seq_len=12800, preemption="recompute")
    rows = []
    for (p_mean, o_mean), rates in LLUMNIX_TRACES.items():
        threshold = 10.0 if (p_mean, o_mean) in ((256, 256), (128, 512)) else 3.0
        prompt, output = (Lengths.zipf_mean(LLUMNIX_ZIPF[m], m, 6144) for m in (p_mean, o_mean))
        for rate in (rates[1:2] if quick else rates):   # quick: the middle of the artifact's sweep
            w = synthetic(n, Arrivals("poisson", rate), prompt, output, seed=seed)
            base = Cluster(cost, engine, 16, ClusterConfig(migration=False, defrag=False)).run(w)
            sys_ = Cluster(cost, engine, 16, ClusterConfig(migration=True, defrag=True, migrate_out_threshold=threshold,
                                                           migrate_in_threshold=threshold)).run(w)
            rows.append((f"{p_mean}-{o_mean}", rate, base, sys_))
    best = max(rows, key=lambda row: _p99(row[2].ttft_s) / _p99(row[3].ttft_s))
    trace, rate, base, sys_ = best
    ratio = _p99(base.ttft_s) / _p99(sys_.ttft_s)

    def by_point(k: int) -> dict[str, float]:
        return {f"{t} @ {r:g}": _r(_p99(row[k].ttft_s), 3) for row in rows for t, r in [(row[0], row[1])]}
    return entry(15.0, ratio, "P99 prefill (first-token) latency, INFaaS++ / Llumnix: the largest over the "
                 "traces and rates tried, as the paper's 'up to' (its artifact's claim file: 14.8x)",
                 f"16x LLaMA-7B, one A10 each, eager vLLM-0.2 engine, max 12800 batched tokens; the paper's "
                 f"generated power-law traces (Zipf lengths capped at 6144, means in-out "
                 f"{', '.join(f'{a}-{b}' for a, b in LLUMNIX_TRACES)}) at its artifact's rates; {n} requests per run",
                 {"system": "INFaaS++: dispatch to the instance with the most free blocks (less the queued demand) "
                            "per request, no migration",
                  "trace": trace, "rate": rate, "ttft_p99_s": _r(_p99(base.ttft_s), 3),
                  "preemptions": int(base.num_preemptions.sum()), "ttft_p99_by_point": by_point(2)},
                 {"system": "Llumnix: the same dispatch, live migration out of instances whose queued demand "
                            "outruns their free blocks (load threshold 3 or 10) or that preempted, LCFS, pairs every "
                            "0.2 s",
                  "trace": trace, "rate": rate, "ttft_p99_s": _r(_p99(sys_.ttft_s), 3),
                  "preemptions": int(sys_.num_preemptions.sum()), "migrations": int(sys_.num_migrations.sum()),
                  "ttft_p99_by_point": by_point(3)},
                 limits="at the artifact's rates the simulated cluster stays below saturation for both systems "
                        "(first-token P99 about the prefill of the longest prompts), while the paper's real cluster "
                        "was at its knee there (INFaaS++ P99 prefill 25-240 s at the top rates, and the 128-128 trace "
                        "saturated for both systems alike at 32 rps). The engine's iterations are calibrated on "
                        "Llumnix's own measurements (its figure 10) and the KV room on vLLM's memory profiling, so the "
                        "missing load is likely outside the engine: the per-request and per-token work of the "
                        "artifact's single Python manager and Ray frontend, not modelled. Past its own knee the "
                        "simulated cluster shows Llumnix ahead by a few times at P99; the 'up to' of a comparison at "
                        "the knee is fragile by nature. Auto-scaling and priorities are not part of this comparison.")


# the artifact's generated traces (mean prompt, mean output) -> request rates swept, and the
# Zipf exponent its generator uses for each mean (AlibabaPAI/llumnix, branch osdi24ae)
LLUMNIX_TRACES: dict[tuple[int, int], tuple[float, ...]] = {
    (128, 128): (32.0, 35.0, 38.0), (256, 256): (7.4, 7.7, 8.0), (512, 512): (2.6, 2.9, 3.2),
    (128, 512): (4.1, 4.25, 4.4), (512, 128): (10.0, 16.0, 22.0)}
LLUMNIX_ZIPF = {128: 2.0, 256: 1.5, 512: 1.15}


def _p99(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.quantile(x, 0.99)) if len(x) else math.nan


# ---- 5. FastSwitch vs vLLM 0.3.3: P99.9 TBT under frequent priority changes

def fastswitch(quick: bool, seed: int) -> dict[str, Any]:
    conversations = 60 if quick else 200
    cost = cost_of("qwen-32b", "a100-80gb")
    prompt, output = _lengths("sharegpt")
    w = sessions(conversations, Arrivals("poisson", 1.0 / 5.5), prompt, output, mean_turns=5.5, think_s=10.0,
                 num_priorities=4, seed=seed)
    # "update frequency 0.02" for Qwen-32B [2nd]: read as the chance that an iteration is followed
    # by a redraw of the priorities (4 levels, random pattern: both assumptions)
    updates = PriorityUpdates(per_iteration=0.02, levels=4, pattern="random", seed=seed)
    base_cfg = EngineConfig(scheduler="vllm", priority=True, preemption="swap", max_seq_len=8192)
    fs_cfg = replace(base_cfg, swap_copy_tokens=1024, swap_overlap=True, kv_reuse=True)
    base = Conversations(cost, base_cfg, updates).run(w)
    fs = Conversations(cost, fs_cfg, updates).run(w)
    ratio = base.tbt_quantile(0.999) / fs.tbt_quantile(0.999)
    base_tp, fs_tp = base.summary()["throughput_tokens_per_s"], fs.summary()["throughput_tokens_per_s"]

    def figures(r: EngineResult) -> dict[str, Any]:
        return {"tbt_p999_s": _r(r.tbt_quantile(0.999), 3), "ttft_p99_s": _r(_p99(r.ttft_s), 3),
                "throughput_tokens_per_s": _r(r.summary()["throughput_tokens_per_s"], 1),
                "swaps": int(r.num_swaps.sum())}
    return entry(11.2, ratio, "P99.9 time between tokens, vLLM 0.3.3 / FastSwitch",
                 f"Qwen-32B, 1x A100-80GB, multi-turn ShareGPT-like conversations (mean 5.5 turns), {len(w)} turns; "
                 "priorities redrawn after an iteration with probability 0.02, among 4 levels; conversations start "
                 "at 1/5.5 per second (1 request/s), 10 s mean think time (assumed)",
                 {"system": "vLLM 0.3.3 + priority preemption: swaps 16-token blocks one copy each, synchronously; "
                            "no KV kept across turns", **figures(base)},
                 {"system": "FastSwitch: block-group copies, swaps overlapped with compute, KV reused across turns",
                  **figures(fs)},
                 note=f"TTFT P99 {_p99(base.ttft_s) / _p99(fs.ttft_s):.2f}x (paper 1.4-5.8x), throughput "
                      f"{base_tp and fs_tp / base_tp:.2f}x (paper up to 1.44x)",
                 limits="FastSwitch's setup is known only from a secondary source: the meaning of 'update frequency "
                        "0.02', the number of priority levels, the think time between turns, the per-turn lengths "
                        "and the block-group size (1024 tokens here) are assumptions; P99.9 tails this extreme are "
                        "fragile, and whether the baseline is past saturation (it is, at 200 conversations) decides "
                        "much of the ratio.")


# ---- speed

def speed(quick: bool, seed: int) -> dict[str, Any]:
    cost = cost_of("llama-2-7b", "a100-80gb")
    w = synthetic(10_000, Arrivals("poisson", 12.0), Lengths.fixed(512), Lengths.fixed(128), seed=seed)
    times, result = [], None
    for _ in range(3):
        t = time.perf_counter()
        result = Engine(cost, EngineConfig(scheduler="vllm")).run(w)
        times.append(time.perf_counter() - t)
    t10k = statistics.median(times)
    assert result is not None
    out = {"sim_10k_requests_s": round(t10k, 3), "sim_requests_per_s": round(10_000 / t10k),
           "sim_iterations_per_s": round(len(result.iter_s) / t10k),
           "sim_10k_iterations": len(result.iter_s), "vidur_10k_requests_s": [5.2, 5.9]}
    n = 20_000 if quick else 100_000
    big = synthetic(n, Arrivals("poisson", 14.0), *_lengths("sharegpt"), seed=seed)
    t = time.perf_counter()
    Cluster(cost_of("llama-7b", "a10"), EngineConfig(max_seq_len=4096), 16, ClusterConfig()).run(big)
    out["sim_llumnix_100k_s" if not quick else "sim_llumnix_20k_s"] = round(time.perf_counter() - t, 2)
    # roofline share: decode at batch 32, context 640 (the middle of a 512 + 128 request)
    achieved = 32 / cost.decode_time(32, 640)
    bound = cost.decode_roofline_tokens_per_s(32, 640)
    out["roofline_share"] = round(achieved / bound, 3)
    out["roofline_setup"] = "Llama-2-7B, 1x A100-80GB, fp16, decode batch 32 at 640 tokens of context"
    return out


SCENARIOS: dict[str, Callable[[bool, int], dict[str, Any]]] = {
    "vllm_paged": vllm_paged, "sarathi_serve": sarathi_serve, "distserve": distserve, "llumnix": llumnix,
    "fastswitch": fastswitch,
}


def run(*, quick: bool = False, seed: int = 7, show_progress: bool = True, plot: str | None = None,
        only: list[str] | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    console = Console(file=sys.stderr, no_color=not show_progress)
    names = [n for n in only if n != "speed"] if only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigError(f"unknown scenario(s) {', '.join(unknown)}", field="only",
                          hint=f"one of: {', '.join(SCENARIOS)}, speed")
    with_speed = not only or "speed" in only
    result: dict[str, Any] = {"bench": "hardware", "seed": seed, "quick": quick, "simulator": SIMULATED,
                              "papers": {}}
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, disable=not show_progress, transient=True) as progress:
        task = progress.add_task("papers", total=len(names) + with_speed)
        for name in names:
            progress.update(task, description=name)
            t = time.perf_counter()
            result["papers"][name] = SCENARIOS[name](quick, seed)
            result["papers"][name]["sim_wall_s"] = round(time.perf_counter() - t, 2)
            progress.advance(task)
        if with_speed:
            progress.update(task, description="speed")
            result.update(speed(quick, seed))
            progress.advance(task)
    close = sum(e["within_35pct"] for e in result["papers"].values())
    result["within_35pct"] = f"{close} of {len(result['papers'])}"
    result["bench_wall_s"] = round(time.perf_counter() - start, 1)
    if show_progress:
        table = Table(title=f"Serving papers on the simulator ({SIMULATED.split(':')[0]})")
        for col in ("paper", "metric", "published", "simulated", "within 35%"):
            table.add_column(col)
        for name, e in result["papers"].items():
            table.add_row(name, e["metric"].split(",")[0], f"{e['paper']:g}x", f"{e['simulated']:.2f}x",
                          "yes" if e["within_35pct"] else "no")
        console.print(table)
    if plot:
        _plot(result, plot)
    return result


def _plot(result: dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(result["papers"])
    paper = [result["papers"][n]["paper"] for n in names]
    sim = [result["papers"][n]["simulated"] for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(x - 0.2, paper, 0.4, label="published")
    ax.bar(x + 0.2, sim, 0.4, label="simulated")
    ax.set_xticks(x, names)
    ax.set_yscale("log")
    ax.set_ylabel("ratio, system / baseline")
    ax.set_title("Serving papers: published vs simulated (aios.hardware, a simulator)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
