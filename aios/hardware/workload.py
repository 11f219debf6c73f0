"""Workloads for the serving simulator: when requests arrive and how long they are.

A workload is a set of numpy arrays, one entry per request, sorted by arrival time; the
simulator reads them without per-request Python objects. It is built from an arrival
process and two length distributions (prompt, output), from a dataset's shape, from
multi-turn sessions, or from a trace file (`load_trace`; `aios trace export` writes one
from the kernel's journal).

The datasets themselves cannot be downloaded here, so their shapes are lognormal fits
to the statistics the papers publish (`DATASETS`, each with its source); a fit from a
median and a P90 uses sigma = ln(P90 / median) / z(0.9)."""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aios.errors import ConfigError

Z90 = 1.2815515655446004   # the standard normal's 0.9 quantile


# ---- length distributions

@dataclass(frozen=True, slots=True)
class Lengths:
    """Token counts: `kind` is fixed | uniform | lognormal | zipf | quantiles | mixture;
    all are clipped to [low, cap]."""
    kind: str
    value: float = 0.0          # fixed: the length; lognormal: the median; zipf: the exponent a
    sigma: float = 0.0          # lognormal: sigma of the log
    low: int = 1
    cap: int = 1 << 20          # uniform and zipf: the upper end
    source: str = ""
    mean: float = 0.0           # zipf: if > 0, each sample set is rescaled to this mean (Llumnix's generator)
    points: tuple[tuple[float, float], ...] = ()   # quantiles: (probability, length), linear between
    parts: tuple[tuple[float, Lengths], ...] = ()   # mixture: (weight, distribution), each sample from one

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "lognormal", "zipf", "quantiles", "mixture"):
            raise ConfigError(f"unknown length distribution {self.kind!r}", field="kind",
                              hint="one of: fixed, uniform, lognormal, zipf, quantiles, mixture")
        if self.kind == "mixture" and (not self.parts or any(not w > 0 for w, _ in self.parts)):
            raise ConfigError("a mixture needs at least one part, each with a positive weight", field="parts")
        if self.kind == "quantiles":
            qs = [q for q, _ in self.points]
            vs = [v for _, v in self.points]
            if len(qs) < 2 or qs[0] != 0 or qs[-1] != 1 or any(b <= a for a, b in zip(qs, qs[1:], strict=False)) \
                    or any(b < a for a, b in zip(vs, vs[1:], strict=False)):
                raise ConfigError("quantile points need probabilities rising from 0 to 1 and lengths that never fall",
                                  field="points")
        if self.low < 1 or self.cap < self.low:
            raise ConfigError(f"lengths need 1 <= low <= cap, got low={self.low}, cap={self.cap}", field="low")
        if self.kind in ("fixed", "lognormal") and not self.value >= 1:
            raise ConfigError(f"a {self.kind} length needs value >= 1, got {self.value}", field="value")
        if self.kind == "zipf" and not self.value > 1:
            raise ConfigError(f"a zipf exponent must be > 1, got {self.value}", field="value")
        if self.sigma < 0:
            raise ConfigError("sigma must be >= 0", field="sigma")

    @classmethod
    def fixed(cls, n: int) -> Lengths:
        return cls("fixed", n, low=1, cap=max(1, n))

    @classmethod
    def uniform(cls, low: int, high: int) -> Lengths:
        return cls("uniform", low=low, cap=high)

    @classmethod
    def lognormal(cls, median: float, sigma: float, *, low: int = 1, cap: int = 1 << 20, source: str = "") -> Lengths:
        return cls("lognormal", median, sigma, low, cap, source)

    @classmethod
    def from_median_p90(cls, median: float, p90: float, **kw: Any) -> Lengths:
        return cls.lognormal(median, math.log(p90 / median) / Z90, **kw)

    @classmethod
    def zipf(cls, a: float, low: int, high: int) -> Lengths:
        return cls("zipf", a, low=low, cap=high)

    @classmethod
    def quantiles(cls, probabilities: list[float], lengths: list[float], *, cap: int = 1 << 20, source: str = "") -> Lengths:
        """An empirical distribution given by its quantiles (inverse CDF, linear between)."""
        return cls("quantiles", cap=cap, source=source, points=tuple(zip(probabilities, lengths, strict=True)))

    @classmethod
    def mixture(cls, parts: Sequence[tuple[float, Lengths]], *, cap: int = 1 << 20, source: str = "") -> Lengths:
        """Each sample drawn from one of `parts`, chosen with probability proportional to its
        weight (a dataset made of sub-datasets of different lengths)."""
        return cls("mixture", cap=cap, source=source, parts=tuple((float(w), d) for w, d in parts))

    @classmethod
    def zipf_mean(cls, a: float, mean: float, cap: int) -> Lengths:
        """Power-law lengths as Llumnix's benchmark generates them: ranks 1 .. 2 mean - 1
        drawn with probability proportional to rank^-a, the sample rescaled (rounding up) so
        that its mean is `mean`, then capped at `cap` (which lowers the mean a little)."""
        return cls("zipf", a, low=1, cap=cap, mean=mean)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        match self.kind:
            case "fixed":
                out = np.full(n, int(self.value))
            case "uniform":
                out = rng.integers(self.low, self.cap + 1, size=n)
            case "lognormal":
                out = np.rint(self.value * np.exp(rng.normal(0.0, self.sigma, size=n)))
            case "quantiles":
                qs, vs = zip(*self.points, strict=True)
                out = np.rint(np.interp(rng.random(n), qs, vs))
            case "mixture":
                weights = np.array([w for w, _ in self.parts])
                which = rng.choice(len(self.parts), size=n, p=weights / weights.sum())
                out = np.zeros(n, np.int64)
                for k, (_, part) in enumerate(self.parts):
                    picked = which == k
                    out[picked] = part.sample(rng, int(picked.sum()))
            case _ if self.mean > 0:   # zipf over ranks 1 .. 2 mean - 1, rescaled to the mean
                ranks = np.arange(1, max(2, int(2 * self.mean)))
                weights = ranks ** -self.value
                out = rng.choice(ranks, size=n, p=weights / weights.sum())
                if n:
                    out = np.ceil(out * (self.mean / out.mean()))
            case _:   # zipf: numpy's is unbounded; shift it to start at `low`
                out = self.low - 1 + rng.zipf(self.value, size=n)
        return np.clip(out, self.low, self.cap).astype(np.int64)


# ---- arrivals

@dataclass(frozen=True, slots=True)
class Arrivals:
    """When requests arrive: `poisson` at `rate` per second, or `gamma` at `rate` with a
    coefficient of variation `cv` (cv > 1 is burstier than Poisson, which is cv = 1)."""
    kind: str
    rate: float
    cv: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("poisson", "gamma"):
            raise ConfigError(f"unknown arrival process {self.kind!r}", field="kind", hint="poisson or gamma")
        if not self.rate > 0:
            raise ConfigError(f"an arrival rate must be positive, got {self.rate}", field="rate")
        if not self.cv > 0:
            raise ConfigError(f"cv must be positive, got {self.cv}", field="cv")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "poisson":
            gaps = rng.exponential(1.0 / self.rate, size=n)
        else:   # gamma with mean 1/rate and the given cv: shape 1/cv^2, scale cv^2/rate
            shape = 1.0 / self.cv**2
            gaps = rng.gamma(shape, 1.0 / (self.rate * shape), size=n)
        return np.cumsum(gaps)


# ---- datasets (shapes only)

@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    prompt: Lengths
    output: Lengths
    source: str
    max_total: int = 0          # pairs with prompt + output above it are redrawn (0: no limit)


# quantiles of the vLLM paper's ShareGPT lengths (OPT tokenizer, pairs with prompt + output <= 2048)
SHAREGPT_VLLM_Q = (0, .05, .1, .15, .2, .25, .3, .35, .4, .45, .5, .55, .6, .65, .7, .75, .8, .85, .9, .92, .94, .96,
                   .98, .99, .995, 1)
SHAREGPT_VLLM_PROMPT = (1, 7, 9, 11, 13, 15, 18, 21, 24, 29, 35, 44, 55, 71, 94, 133, 203, 324, 507, 620, 775, 986,
                        1230, 1464, 1639, 2028)
SHAREGPT_VLLM_OUTPUT = (1, 22, 45, 75, 101, 128, 157, 188, 216, 244, 271, 300, 330, 364, 405, 458, 525, 619, 754,
                        786, 846, 961, 1139, 1280, 1443, 2009)

DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("sharegpt4", Lengths.from_median_p90(1730, 5696, cap=8192), Lengths.lognormal(415, 0.8, cap=8192),
            "Sarathi-Serve's openchat_sharegpt4: prompt median 1730, P90 5696, output median 415, cap 8192 "
            "(the output's sigma 0.8 is an assumption: only its median is published)"),
    Dataset("arxiv_summarization", Lengths.from_median_p90(7059, 12985, cap=16384),
            Lengths.lognormal(208, 0.6, cap=16384),
            "Sarathi-Serve's arxiv_summarization: prompt median 7059, P90 12985, output median 208, cap 16384 "
            "(output sigma 0.6 assumed)"),
    Dataset("sharegpt", Lengths.lognormal(246 / math.exp(1.0**2 / 2), 1.0, cap=4096),
            Lengths.lognormal(322 / math.exp(0.9**2 / 2), 0.9, cap=4096),
            "ShareGPT means from NanoFlow's trace table: 246 prompt, 322 output tokens; lognormal with "
            "sigma 1.0 / 0.9 (assumed), medians set so the means match"),
    Dataset("sharegpt_vllm", Lengths.quantiles(list(SHAREGPT_VLLM_Q), list(SHAREGPT_VLLM_PROMPT)),
            Lengths.quantiles(list(SHAREGPT_VLLM_Q), list(SHAREGPT_VLLM_OUTPUT)),
            "ShareGPT as the vLLM paper samples it: pairs with prompt + output <= 2048 (OPT's context), "
            "mean 161.31 prompt and 337.99 output tokens; drawn from 26 quantiles of each length computed "
            "from the paper's artifact (sosp-ae-39/sosp-ae-astra, datasets/sharegpt_opt_text_completion_"
            "length.pkl, 79,731 pairs), independently (their correlation is 0.04)", max_total=2048),
    Dataset("humaneval", Lengths.lognormal(150, 0.4, cap=1024), Lengths.lognormal(120, 0.5, cap=1024),
            "HumanEval-like code completion (DistServe's code workload): short prompts and outputs; "
            "medians 150 / 120 and sigmas are assumptions (the problems' prompts are 100-300 tokens)"),
    Dataset("longbench_summarization", Lengths.lognormal(6000, 0.5, cap=16384), Lengths.lognormal(180, 0.5, cap=1024),
            "LongBench-like summarization (DistServe): long prompts, short outputs; medians 6000 / 180 "
            "and sigmas are assumptions"),
)}


def dataset(name: str) -> Dataset:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}", field="dataset",
                          hint=f"one of: {', '.join(sorted(DATASETS))}") from None


# ---- the workload

@dataclass(slots=True)
class Workload:
    """Requests as arrays, sorted by arrival. `session` and `turn` tie the turns of one
    conversation (-1 / 0 for single requests); `prefix` is how many of a prompt's tokens
    are the conversation's earlier turns (KV that a multi-turn cache can reuse)."""
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    priority: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    session: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    turn: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    prefix: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for name in ("priority", "session", "turn", "prefix"):
            if len(getattr(self, name)) == 0 and n:
                setattr(self, name, np.full(n, -1 if name == "session" else 0, np.int64))
        for name in ("prompt_tokens", "output_tokens", "priority", "session", "turn", "prefix"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"workload column {name} has {len(getattr(self, name))} entries, not {n}",
                                  field=name)
        if n and (np.any(self.prompt_tokens < 1) or np.any(self.output_tokens < 1)):
            raise ConfigError("every request needs at least one prompt and one output token", field="tokens")
        if n and np.any(np.diff(self.arrival_s) < 0):
            order = np.argsort(self.arrival_s, kind="stable")
            for name in ("arrival_s", "prompt_tokens", "output_tokens", "priority", "session", "turn", "prefix"):
                setattr(self, name, getattr(self, name)[order])

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0


def synthetic(n: int, arrivals: Arrivals, prompt: Lengths, output: Lengths, *, seed: int = 0,
              source: str = "", max_total: int = 0) -> Workload:
    """`n` requests: arrival times, then prompt and output lengths, from one seeded generator;
    with `max_total`, a pair longer than that is redrawn (as a dataset filtered by context)."""
    if n < 0:
        raise ConfigError("a workload needs n >= 0 requests", field="n")
    rng = np.random.default_rng(seed)
    arrival = arrivals.sample(rng, n)
    p, o = prompt.sample(rng, n), output.sample(rng, n)
    if max_total:
        if max_total < 2:
            raise ConfigError("max_total must leave room for one prompt and one output token", field="max_total")
        for _ in range(100):
            bad = np.flatnonzero(p + o > max_total)
            if not len(bad):
                break
            p[bad], o[bad] = prompt.sample(rng, len(bad)), output.sample(rng, len(bad))
        else:
            raise ConfigError(f"the lengths rarely fit max_total={max_total}", field="max_total",
                              hint="raise max_total or shorten the length distributions")
    return Workload(arrival, p, o, source=source)


def from_dataset(name: str, n: int, arrivals: Arrivals, *, seed: int = 0) -> Workload:
    d = dataset(name)
    return synthetic(n, arrivals, d.prompt, d.output, seed=seed, source=f"{d.name}: {d.source}",
                     max_total=d.max_total)


def sessions(num_sessions: int, arrivals: Arrivals, prompt: Lengths, output: Lengths, *, mean_turns: float = 5.5,
             think_s: float = 10.0, num_priorities: int = 1, seed: int = 0) -> Workload:
    """Multi-turn conversations (FastSwitch's multi-round ShareGPT averages 5.5 turns):
    sessions start by `arrivals`; each has a geometric number of turns with `mean_turns`;
    a turn comes `think_s` (exponential) after the previous reply is due, estimated here
    as its arrival (the simulator shifts it if the reply is late: see `turn`). Each turn's
    prompt carries the conversation so far as `prefix`."""
    rng = np.random.default_rng(seed)
    starts = arrivals.sample(rng, num_sessions)
    turns = rng.geometric(1.0 / mean_turns, size=num_sessions)
    cols: dict[str, list[Any]] = {k: [] for k in ("arrival_s", "prompt", "output", "priority", "session", "turn", "prefix")}
    for s in range(num_sessions):
        t, history = float(starts[s]), 0
        prio = int(rng.integers(0, num_priorities))
        new_prompts, outputs = prompt.sample(rng, int(turns[s])), output.sample(rng, int(turns[s]))
        for k in range(int(turns[s])):
            cols["arrival_s"].append(t)
            cols["prompt"].append(history + int(new_prompts[k]))
            cols["output"].append(int(outputs[k]))
            cols["priority"].append(prio)
            cols["session"].append(s)
            cols["turn"].append(k)
            cols["prefix"].append(history)
            history += int(new_prompts[k]) + int(outputs[k])
            t += float(rng.exponential(think_s))
    return Workload(np.array(cols["arrival_s"], float), np.array(cols["prompt"], np.int64),
                    np.array(cols["output"], np.int64), np.array(cols["priority"], np.int64),
                    np.array(cols["session"], np.int64), np.array(cols["turn"], np.int64),
                    np.array(cols["prefix"], np.int64), source="multi-turn sessions")


# ---- traces

TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")
OPTIONAL_COLUMNS = ("priority", "session", "turn", "prefix")


def load_trace(path: str | Path) -> Workload:
    """A trace: CSV with a header, or JSON lines, with columns arrival_s, prompt_tokens,
    output_tokens (and optionally priority, session, turn, prefix). Errors name the line."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read trace {p}: {e.strerror}", field="trace") from None
    rows: list[Mapping[str, Any]]
    if p.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        first_line = 2
    else:
        rows, first_line = [], 1
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{p}:{n} is not JSON: {e.msg}", field="trace") from None
    cols: dict[str, list[float]] = {c: [] for c in TRACE_COLUMNS + OPTIONAL_COLUMNS}
    for n, row in enumerate(rows, first_line):
        if not isinstance(row, Mapping):
            raise ConfigError(f"{p}:{n} is not an object with named columns", field="trace")
        for c in TRACE_COLUMNS + OPTIONAL_COLUMNS:
            if c not in row or row[c] in ("", None):
                if c in TRACE_COLUMNS:
                    raise ConfigError(f"{p}:{n} has no {c}", field="trace", hint=f"columns: {', '.join(TRACE_COLUMNS)}")
                continue
            try:
                value = float(row[c])
            except (TypeError, ValueError):
                raise ConfigError(f"{p}:{n}: {c} is not a number: {row[c]!r}", field="trace") from None
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"{p}:{n}: {c} must be a finite number >= 0, got {row[c]!r}", field="trace")
            cols[c].append(value)
    present = [c for c in OPTIONAL_COLUMNS if len(cols[c]) == len(rows) and rows]
    return Workload(np.array(cols["arrival_s"], float), np.array(cols["prompt_tokens"], np.int64),
                    np.array(cols["output_tokens"], np.int64),
                    **{c: np.array(cols[c], np.int64) for c in present}, source=str(p))


def save_trace(workload: Workload, path: str | Path, columns: Sequence[str] = TRACE_COLUMNS + OPTIONAL_COLUMNS) -> None:
    """Writes a trace `load_trace` reads back (CSV for a .csv name, else JSON lines)."""
    p = Path(path)
    data = {c: getattr(workload, c) for c in columns}
    records = [{c: (float(data[c][i]) if c == "arrival_s" else int(data[c][i])) for c in columns}
               for i in range(len(workload))]
    if p.suffix == ".csv":
        with p.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(records)
    else:
        p.write_text("".join(json.dumps(r) + "\n" for r in records))
