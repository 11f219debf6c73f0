"""`aios sim`: a serving simulation described by a TOML file (the model on its devices, the
engine, the workload, an optional SLO and a sweep over arrival rates), run, and reported
with the simulator's own speed.

Invariant: every mistake in a file is a ConfigError that names the file, the section and
the field, raised by `load_config` (or `parse_config`); after that, `simulate` fails only
on a trace it cannot read, which load_trace names by file and line.

    [model]    name, device, tp, pp, dtype
    [engine]   any EngineConfig field but role (aios.hardware.engine)
    [workload] requests, arrivals (poisson | gamma), rate, cv, seed, and one source of
               lengths: dataset = "sharegpt", or prompt = {dist = "fixed", n = 512} and
               output = {...}, or trace = "file.csv" (relative to the file's folder)
    [slo]      ttft_s, tpot_s, attainment (the target fraction)
    [sweep]    rates = [...] (latency against load), capacity = true (the highest rate
               meeting the SLO, by bisection between min_rate and max_rate)
    [system]   kind: how the requests are served; one entry of SYSTEMS"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model

from aios.config import read_toml
from aios.errors import AiosError, ConfigError
from aios.hardware.cost import CostModel
from aios.hardware.engine import Engine, EngineConfig, EngineResult
from aios.hardware.metrics import SLO, Capacity, attainment, capacity, goodput
from aios.hardware.specs import Dtype, get_device, get_model
from aios.hardware.cluster import Cluster, ClusterConfig, DistServe, Placement, serve
from aios.hardware.conversation import Conversations, PriorityUpdates
from aios.hardware.workload import (DATASETS, Arrivals, Lengths, Workload, dataset, from_dataset, load_trace, sessions,
                                    synthetic)

DEFAULT_REQUESTS = 1000
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


# ---- the file's schema (pydantic, at the edge only)

class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ModelSection(_Section):
    name: str = Field(description="a model of aios/hardware/data/models.toml")
    device: str = Field(description="a device of aios/hardware/data/devices.toml")
    tp: int = Field(1, gt=0, description="tensor parallelism: GPUs per pipeline stage")
    pp: int = Field(1, gt=0, description="pipeline stages")
    dtype: Dtype = "fp16"


# Every EngineConfig field, with its default, so the file follows the engine as it grows.
# `role` is left out: it is a system's choice (DistServe's prefill and decode instances).
_ENGINE_TYPES = get_type_hints(EngineConfig)
EngineSection = create_model(
    "EngineSection", __base__=_Section,
    **{f.name: (_ENGINE_TYPES[f.name], f.default) for f in dataclasses.fields(EngineConfig) if f.name != "role"})


class FixedLengths(_Section):
    dist: Literal["fixed"]
    n: int = Field(ge=1)

    def lengths(self) -> Lengths:
        return Lengths.fixed(self.n)

    def describe(self) -> str:
        return f"fixed {self.n}"


class UniformLengths(_Section):
    dist: Literal["uniform"]
    low: int = Field(ge=1)
    high: int = Field(ge=1)

    def lengths(self) -> Lengths:
        return Lengths.uniform(self.low, self.high)

    def describe(self) -> str:
        return f"uniform {self.low}-{self.high}"


class LognormalLengths(_Section):
    """By its median and either sigma (of the log) or its P90."""
    dist: Literal["lognormal"]
    median: float = Field(ge=1)
    sigma: float | None = Field(None, ge=0)
    p90: float | None = Field(None, gt=0)
    low: int = Field(1, ge=1)
    cap: int = Field(1 << 20, ge=1)

    def lengths(self) -> Lengths:
        if (self.sigma is None) == (self.p90 is None):
            raise ConfigError("a lognormal length needs sigma or p90 (one of them)", field="sigma")
        if self.p90 is not None:
            if self.p90 < self.median:
                raise ConfigError(f"p90 {self.p90:g} is below the median {self.median:g}", field="p90")
            return Lengths.from_median_p90(self.median, self.p90, low=self.low, cap=self.cap)
        return Lengths.lognormal(self.median, self.sigma, low=self.low, cap=self.cap)

    def describe(self) -> str:
        spread = f"sigma {self.sigma:g}" if self.sigma is not None else f"p90 {self.p90:g}"
        return f"lognormal median {self.median:g} {spread}"


class ZipfLengths(_Section):
    """Power-law lengths in [low, high]; with `mean`, rescaled to it (Llumnix's generator)."""
    dist: Literal["zipf"]
    a: float = Field(gt=1)
    low: int = Field(1, ge=1)
    high: int = Field(ge=1)
    mean: float | None = Field(None, gt=0)

    def lengths(self) -> Lengths:
        return Lengths("zipf", self.a, low=self.low, cap=self.high, mean=self.mean or 0.0)

    def describe(self) -> str:
        return f"zipf a={self.a:g} {self.low}-{self.high}" + (f" mean {self.mean:g}" if self.mean else "")


class QuantileLengths(_Section):
    """An empirical distribution: lengths at probabilities from 0 to 1, linear between."""
    dist: Literal["quantiles"]
    probabilities: list[float]
    lengths_at: list[float] = Field(alias="lengths")
    cap: int = Field(1 << 20, ge=1)

    def lengths(self) -> Lengths:
        if len(self.probabilities) != len(self.lengths_at):
            raise ConfigError(f"{len(self.probabilities)} probabilities but {len(self.lengths_at)} lengths",
                              field="lengths")
        try:
            return Lengths.quantiles(self.probabilities, self.lengths_at, cap=self.cap)
        except ConfigError as e:
            raise ConfigError(e.message, field="probabilities" if e.field == "points" else e.field) from None

    def describe(self) -> str:
        return f"quantiles ({len(self.probabilities)} points)"


LengthsSection = Annotated[FixedLengths | UniformLengths | LognormalLengths | ZipfLengths | QuantileLengths,
                           Field(discriminator="dist")]
LENGTH_KINDS = ("fixed", "uniform", "lognormal", "zipf", "quantiles")


class WorkloadSection(_Section):
    requests: int | None = Field(None, ge=1, description=f"default {DEFAULT_REQUESTS}, or a trace's every row")
    arrivals: Literal["poisson", "gamma"] = "poisson"
    rate: float | None = Field(None, gt=0, description="requests per second (none for a trace)")
    cv: float = Field(1.0, gt=0, description="gamma arrivals: coefficient of variation of the gaps")
    seed: int = 0
    dataset: str | None = Field(None, description="a shape of aios.hardware.workload.DATASETS")
    prompt: LengthsSection | None = None
    output: LengthsSection | None = None
    trace: str | None = Field(None, description="CSV or JSON lines; relative to the config file's folder")
    sessions: int | None = Field(None, ge=1, description="multi-turn conversations instead of single requests; "
                                 "`rate` is then conversations started per second")
    mean_turns: float = Field(5.5, ge=1)
    think_s: float = Field(10.0, ge=0)
    priorities: int = Field(1, ge=1, description="sessions: priority levels drawn at a session's start")


class SLOSection(_Section):
    ttft_s: float | None = Field(None, gt=0)
    tpot_s: float | None = Field(None, gt=0)
    attainment: float = Field(0.9, gt=0, le=1, description="the fraction of requests that must meet it")


class SweepSection(_Section):
    rates: list[Annotated[float, Field(gt=0)]] = Field(default_factory=list)
    capacity: bool = False
    min_rate: float = Field(0.1, gt=0, description="capacity: the search's lower end, requests/s")
    max_rate: float = Field(64.0, gt=0, description="capacity: the search's upper end, requests/s")


class SystemSection(_Section):
    """How the requests are served. kind single: one instance of [model] and [engine].
    cluster: `instances` of them under a global scheduler (dispatch, Llumnix migration).
    distserve: prefill and decode instances, each with its own parallelism.
    conversations: one instance serving [workload] sessions turn by turn, with priority
    changes (FastSwitch's setting; [engine] priority must be on)."""
    kind: str = "single"
    # cluster
    instances: int = Field(1, ge=1)
    dispatch: Literal["round_robin", "least_load"] = "least_load"
    migration: bool = False
    defrag: bool = True
    poll_s: float = Field(0.05, gt=0)
    migrate_out_threshold: float = 3.0
    migrate_in_threshold: float = 3.0
    # distserve
    prefill_instances: int = Field(1, ge=1)
    prefill_tp: int = Field(1, ge=1)
    prefill_pp: int = Field(1, ge=1)
    decode_instances: int = Field(1, ge=1)
    decode_tp: int = Field(1, ge=1)
    decode_pp: int = Field(1, ge=1)
    transfer_link: Literal["nvlink", "pcie"] = "nvlink"
    # conversations
    priority_interval_s: float = Field(0.0, ge=0)
    priority_per_iteration: float = Field(0.0, ge=0, le=1)
    priority_levels: int = Field(4, ge=1)
    priority_pattern: Literal["random", "markov"] = "random"
    priority_scope: Literal["all", "each"] = "all"


class SimConfig(_Section):
    model: ModelSection
    engine: EngineSection = EngineSection()   # type: ignore[valid-type]
    workload: WorkloadSection
    slo: SLOSection | None = None
    sweep: SweepSection | None = None
    system: SystemSection = SystemSection()
    _path: str = PrivateAttr("<sim config>")

    @property
    def path(self) -> str:
        """The file it was read from, for messages."""
        return self._path


# ---- errors that name the file, the section and the field

def _error(path: str, section: str, field: str | None, message: str, hint: str | None = None) -> ConfigError:
    where = f"[{section}] {field}" if field else f"[{section}]"
    return ConfigError(f"{path}: {where}: {message}", field=f"{section}.{field}" if field else section, hint=hint)


@contextmanager
def _blame(config: SimConfig, section: str, field: str | None = None) -> Iterator[None]:
    """Any AiosError inside becomes a ConfigError about `section`.`field` of the file
    (the error's own field when none is given)."""
    try:
        yield
    except AiosError as e:
        raise _error(config.path, section, field or e.field, e.message, e.hint) from None


def _from_validation(path: str, e: ValidationError) -> ConfigError:
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"] if p not in LENGTH_KINDS]   # drop the union's tag
    hint = f"{e.error_count()} problems in the file; this is the first" if e.error_count() > 1 else None
    if not loc:
        return ConfigError(f"{path}: {err['msg']}", field="config", hint=hint)
    if err["type"] == "missing" and len(loc) == 1:
        return _error(path, loc[0], None, "the section is missing", hint)
    if err["type"] == "extra_forbidden":
        if len(loc) == 1:
            return _error(path, loc[0], None, "no such section",
                          hint=f"sections: {', '.join(SimConfig.model_fields)}")
        known = SimConfig.model_fields.get(loc[0])
        fields = getattr(known.annotation, "model_fields", None) if known else None
        return _error(path, loc[0], ".".join(loc[1:]), "no such field",
                      hint=f"[{loc[0]}] takes: {', '.join(fields)}" if fields and len(loc) == 2 else hint)
    return _error(path, loc[0], ".".join(loc[1:]) or None, err["msg"], hint)


# ---- reading a file

def load_config(path: str | Path, *, seed: int | None = None) -> SimConfig:
    """A sim config file, checked: every model, device, dataset and length it names exists
    and fits; `seed` overrides [workload] seed."""
    data = read_toml(path, "sim config")
    if seed is not None:
        workload = data.get("workload")
        if isinstance(workload, dict):
            data["workload"] = {**workload, "seed": seed}
    return parse_config(data, path=str(path), folder=Path(path).parent)


def parse_config(data: dict[str, Any], *, path: str = "<sim config>", folder: Path | None = None) -> SimConfig:
    """`data` as a SimConfig, checked as `load_config` does; a relative trace path is
    taken from `folder` (the current directory without one)."""
    try:
        config = SimConfig.model_validate(data)
    except ValidationError as e:
        raise _from_validation(path, e) from None
    if config.workload.trace is not None:
        trace = Path(config.workload.trace).expanduser()
        if folder is not None and not trace.is_absolute():
            trace = folder / trace
        config = config.model_copy(update={"workload": config.workload.model_copy(update={"trace": str(trace)})})
    config._path = path
    _check(config)
    return config


def _check(config: SimConfig) -> None:
    """What the schema cannot say: names that must exist, the model fitting its devices,
    one source of lengths, and a sweep that can run."""
    def fail(section: str, field: str | None, message: str, hint: str | None = None) -> ConfigError:
        return _error(config.path, section, field, message, hint)

    if config.system.kind not in SYSTEMS:
        raise fail("system", "kind", f"unknown system {config.system.kind!r}", f"one of: {', '.join(SYSTEMS)}")
    with _blame(config, "model", "name"):
        get_model(config.model.name)
    with _blame(config, "model", "device"):
        get_device(config.model.device)
    cost = cost_model(config)
    engine = engine_config(config)
    with _blame(config, "engine", "gpu_memory_utilization"):
        Engine(cost, engine)   # is there room for the KV cache?

    w = config.workload
    if w.trace is not None:
        for name in ("dataset", "prompt", "output", "rate"):
            if getattr(w, name) is not None:
                raise fail("workload", name, "a trace gives the arrivals and lengths itself",
                           "leave out dataset, prompt, output and rate, or the trace")
        if not Path(w.trace).is_file():
            raise fail("workload", "trace", f"no trace file {w.trace}")
    else:
        if w.rate is None:
            raise fail("workload", "rate", "a synthetic workload needs an arrival rate (requests/s)")
        if w.dataset is not None and (w.prompt is not None or w.output is not None):
            raise fail("workload", "dataset", "give a dataset or prompt and output lengths, not both")
        if w.dataset is None and (w.prompt is None or w.output is None):
            missing = "output" if w.prompt is not None else "prompt"
            raise fail("workload", missing, "the lengths need a dataset, or both prompt and output",
                       f'e.g. {missing} = {{dist = "fixed", n = 128}}, or dataset = "sharegpt"')
        if w.dataset is not None and w.dataset not in DATASETS:
            raise fail("workload", "dataset", f"unknown dataset {w.dataset!r}", f"one of: {', '.join(DATASETS)}")
        for name in ("prompt", "output"):
            lengths = getattr(w, name)
            if lengths is not None:
                try:
                    lengths.lengths()
                except ConfigError as e:
                    raise fail("workload", f"{name}.{e.field}", e.message, e.hint) from None
        if w.cv != 1.0 and w.arrivals != "gamma":
            raise fail("workload", "cv", "cv shapes gamma arrivals only", 'set arrivals = "gamma"')
    kind = config.system.kind
    if (w.sessions is not None) != (kind == "conversations"):
        raise fail("workload" if w.sessions is not None else "system", "sessions" if w.sessions is not None else "kind",
                   "multi-turn sessions are served by system kind conversations, and only sessions are",
                   'set both [workload] sessions = N and [system] kind = "conversations", or neither')
    if w.sessions is not None and w.trace is not None:
        raise fail("workload", "sessions", "a trace cannot also be sessions", "leave out one of them")
    if kind == "conversations" and not engine.priority and (config.system.priority_interval_s
                                                            or config.system.priority_per_iteration):
        raise fail("engine", "priority", "priority changes need priority scheduling", "set [engine] priority = true")
    if kind == "distserve":
        for phase, c in zip(("prefill", "decode"), phase_costs(config), strict=True):
            with _blame(config, "system", f"{phase}_tp"):
                Engine(c, engine)   # is there room for the KV cache?

    if config.slo is not None and config.slo.ttft_s is None and config.slo.tpot_s is None:
        raise fail("slo", None, "an SLO needs ttft_s, tpot_s or both")
    s = config.sweep
    if s is not None:
        if not s.rates and not s.capacity:
            raise fail("sweep", "rates", "a sweep needs rates, capacity = true, or both")
        if w.trace is not None:
            raise fail("sweep", "rates" if s.rates else "capacity", "a trace has its own arrival times",
                       "sweep a synthetic workload (dataset or prompt/output lengths)")
        if s.capacity and config.slo is None:
            raise fail("sweep", "capacity", "a capacity search needs an [slo]")
        if s.capacity and not s.min_rate < s.max_rate:
            raise fail("sweep", "min_rate", f"min_rate {s.min_rate:g} must be below max_rate {s.max_rate:g}")


# ---- the file's objects for the simulator

def cost_model(config: SimConfig) -> CostModel:
    m = config.model
    with _blame(config, "model"):
        return CostModel(get_model(m.name), get_device(m.device), tp=m.tp, pp=m.pp, dtype=m.dtype)


def engine_config(config: SimConfig) -> EngineConfig:
    with _blame(config, "engine"):
        return EngineConfig(**config.engine.model_dump())


def slo(config: SimConfig) -> SLO | None:
    return None if config.slo is None else SLO(config.slo.ttft_s, config.slo.tpot_s)


def build_workload(config: SimConfig, rate: float | None = None) -> Workload:
    """The requests of [workload], at `rate` instead of its own when given (a sweep point;
    the same seed, so the runs differ only in the arrival rate)."""
    w = config.workload
    if w.trace is not None:
        with _blame(config, "workload", "trace"):
            trace = load_trace(w.trace)
        return trace if w.requests is None else _head(trace, w.requests)
    arrivals = Arrivals(w.arrivals, rate if rate is not None else w.rate, w.cv)
    n = w.requests or DEFAULT_REQUESTS
    if w.sessions is not None:
        if w.dataset is not None:
            d = dataset(w.dataset)
            prompt, output = d.prompt, d.output
        else:
            prompt, output = w.prompt.lengths(), w.output.lengths()
        return sessions(w.sessions, arrivals, prompt, output, mean_turns=w.mean_turns, think_s=w.think_s,
                        num_priorities=w.priorities, seed=w.seed)
    if w.dataset is not None:
        return from_dataset(w.dataset, n, arrivals, seed=w.seed)
    return synthetic(n, arrivals, w.prompt.lengths(), w.output.lengths(), seed=w.seed,
                     source=f"prompt {w.prompt.describe()}, output {w.output.describe()}")


def _head(w: Workload, n: int) -> Workload:
    return Workload(w.arrival_s[:n], w.prompt_tokens[:n], w.output_tokens[:n], w.priority[:n], w.session[:n],
                    w.turn[:n], w.prefix[:n], source=w.source)


def describe(config: SimConfig, rates: list[float] | None = None) -> str:
    """The setup in one line, for titles; `rates` stands for [workload] rate when a chart
    shows several runs."""
    m, w = config.model, config.workload
    gpus = m.tp * m.pp
    head = f"{m.name} on {gpus}x {m.device} (tp={m.tp}, pp={m.pp}, {m.dtype}), {config.engine.scheduler}"
    sysc = config.system
    if sysc.kind == "cluster":
        head += (f", cluster of {sysc.instances} instances ({sysc.dispatch} dispatch"
                 f"{', migration' if sysc.migration else ''})")
    elif sysc.kind == "distserve":
        head += (f", distserve: {sysc.prefill_instances} prefill x tp{sysc.prefill_tp} pp{sysc.prefill_pp} + "
                 f"{sysc.decode_instances} decode x tp{sysc.decode_tp} pp{sysc.decode_pp}")
    elif sysc.kind != "single":
        head += f", {sysc.kind}"
    if w.trace is not None:
        return f"{head}; trace {Path(w.trace).name}" + (f", first {w.requests} requests" if w.requests else "")
    arrivals = w.arrivals if w.arrivals == "poisson" else f"gamma cv={w.cv:g}"
    lengths = (f"{w.dataset}" if w.dataset is not None
               else f"prompt {w.prompt.describe()}, output {w.output.describe()}")
    rate = f"{w.rate:g}" if not rates else ", ".join(f"{r:g}" for r in sorted(rates))
    if w.sessions is not None:
        return f"{head}; {arrivals} {rate} sessions/s, {lengths}, {w.sessions} sessions of ~{w.mean_turns:g} turns"
    return f"{head}; {arrivals} {rate} req/s, {lengths}, {w.requests or DEFAULT_REQUESTS} requests"


# ---- systems: how a workload is served

# progress(runs done, runs planned or None when not known, what runs now)
Progress = Callable[[int, int | None, str], None]
Runner = Callable[[SimConfig, Workload, Progress | None], EngineResult]


def run_single(config: SimConfig, workload: Workload, progress: Progress | None) -> EngineResult:
    """One serving instance (tp x pp GPUs)."""
    return serve(cost_model(config), engine_config(config), workload)


def run_cluster(config: SimConfig, workload: Workload, progress: Progress | None) -> EngineResult:
    """`instances` copies of the instance under a global scheduler."""
    s = config.system
    with _blame(config, "system"):
        cluster = ClusterConfig(dispatch=s.dispatch, migration=s.migration, defrag=s.defrag, poll_s=s.poll_s,
                                migrate_out_threshold=s.migrate_out_threshold,
                                migrate_in_threshold=s.migrate_in_threshold)
    m = config.model
    return Cluster(cost_model(config), engine_config(config), s.instances, cluster, m.tp * m.pp).run(workload)


def phase_costs(config: SimConfig) -> tuple[CostModel, CostModel]:
    """The prefill and the decode instances' cost models ([system] prefill_tp/pp, decode_tp/pp)."""
    s, m = config.system, config.model
    costs = []
    for phase, tp, pp in (("prefill", s.prefill_tp, s.prefill_pp), ("decode", s.decode_tp, s.decode_pp)):
        with _blame(config, "system", f"{phase}_tp"):
            costs.append(CostModel(get_model(m.name), get_device(m.device), tp=tp, pp=pp, dtype=m.dtype))
    return costs[0], costs[1]


def run_distserve(config: SimConfig, workload: Workload, progress: Progress | None) -> EngineResult:
    """Prefill and decode instances of [model] on its device, each with its own parallelism."""
    s = config.system
    costs = phase_costs(config)
    place = Placement(costs[0], costs[1], s.prefill_instances, s.decode_instances, s.prefill_tp * s.prefill_pp,
                      s.decode_tp * s.decode_pp, s.transfer_link)
    engine = engine_config(config)
    return DistServe(place, engine, engine).run(workload)


def run_conversations(config: SimConfig, workload: Workload, progress: Progress | None) -> EngineResult:
    """Sessions turn by turn on one instance, with priority changes."""
    s = config.system
    with _blame(config, "system"):
        updates = PriorityUpdates(interval_s=s.priority_interval_s, per_iteration=s.priority_per_iteration,
                                  levels=s.priority_levels, pattern=s.priority_pattern, scope=s.priority_scope,
                                  seed=config.workload.seed)
        return Conversations(cost_model(config), engine_config(config), updates).run(workload)


SYSTEMS: dict[str, Runner] = {
    "single": run_single,
    "cluster": run_cluster,
    "distserve": run_distserve,
    "conversations": run_conversations,
}


# ---- a simulation and its report

@dataclass(frozen=True, slots=True)
class SweepPoint:
    rate: float
    result: EngineResult


@dataclass(frozen=True, slots=True)
class SimReport:
    config: SimConfig
    result: EngineResult             # the run at [workload] rate (or of the trace)
    sweep: tuple[SweepPoint, ...]    # one per [sweep] rate, in the file's order
    capacity: Capacity | None        # [sweep] capacity = true
    sim_s: float                     # wall seconds inside the runners; building workloads and plotting are not in it
    num_runs: int
    num_requests: int                # over every run
    num_iterations: int

    @property
    def requests_per_s(self) -> float:
        return self.num_requests / self.sim_s if self.sim_s else math.nan

    @property
    def iterations_per_s(self) -> float:
        return self.num_iterations / self.sim_s if self.sim_s else math.nan

    def summary(self, result: EngineResult | None = None) -> dict[str, Any]:
        return summarize(result if result is not None else self.result, self.config.slo)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; NaN (no data) becomes None."""
        cap = self.capacity
        return _json_safe({
            "simulated": True,   # every figure below comes from the simulator, not from hardware
            "note": "simulated figures: a model of LLM serving on the devices described, calibrated from "
                    "single-operator measurements; no accelerator ran",
            "setup": describe(self.config),
            "config": self.config.model_dump(mode="json", by_alias=True),
            "summary": self.summary(),
            "sweep": [{"rate": p.rate, **self.summary(p.result)} for p in self.sweep],
            "capacity": None if cap is None else {
                "rate": cap.rate, "attainment": cap.attainment, "target": self.config.slo.attainment,
                "reason": cap.reason, "probes": [list(p) for p in cap.probes]},
            "timing": {"sim_s": self.sim_s, "runs": self.num_runs, "requests": self.num_requests,
                       "iterations": self.num_iterations, "requests_per_s": self.requests_per_s,
                       "iterations_per_s": self.iterations_per_s},
        })


def summarize(result: EngineResult, slo_section: SLOSection | None) -> dict[str, Any]:
    """EngineResult.summary(), the reasons requests went unserved (with counts), and with
    an SLO its attainment and goodput."""
    out = result.summary()
    out["unserved_reasons"] = unserved_reasons(result.unserved)
    if slo_section is not None:
        spec = SLO(slo_section.ttft_s, slo_section.tpot_s)
        out["slo_attainment"] = attainment(result, spec)
        out["slo_target"] = slo_section.attainment
        out["goodput_requests_per_s"] = goodput(result, spec)
    return out


def unserved_reasons(unserved: dict[int, str]) -> dict[str, int]:
    """The reasons, counted, with the ones that differ only in their numbers merged (a
    number that varies becomes its range): "needs 183-221 KV blocks ... has 150": 11."""
    groups: dict[str, list[str]] = {}
    for why in unserved.values():
        groups.setdefault(_NUMBER.sub("#", why), []).append(why)
    merged = {}
    for pattern, whys in groups.items():
        parts = pattern.split("#")
        text = parts[0]
        for values, part in zip(zip(*(_NUMBER.findall(w) for w in whys), strict=True), parts[1:], strict=True):
            low, high = min(values, key=float), max(values, key=float)
            text += (low if low == high else f"{low}-{high}") + part
        merged[text] = len(whys)
    return dict(sorted(merged.items(), key=lambda item: -item[1]))


def simulate(config: SimConfig, progress: Progress | None = None) -> SimReport:
    """Runs the workload at its own rate, then at each sweep rate, then the capacity
    search; a rate already run is not run again. `progress` hears of each run as it starts."""
    runner = SYSTEMS[config.system.kind]
    sweep = config.sweep or SweepSection()
    own_rate = config.workload.rate
    planned = len({own_rate, *sweep.rates})
    results: dict[float | None, EngineResult] = {}
    totals = {"sim_s": 0.0, "requests": 0, "iterations": 0}

    def run_at(rate: float | None) -> EngineResult:
        if rate in results:
            return results[rate]
        workload = build_workload(config, rate)
        if progress is not None:
            label = "trace" if rate is None else f"{rate:g} req/s"
            progress(len(results), None if len(results) >= planned else planned, label)
        start = time.perf_counter()
        result = runner(config, workload, progress)
        totals["sim_s"] += time.perf_counter() - start
        totals["requests"] += len(workload)
        totals["iterations"] += len(result.iter_s)
        results[rate] = result
        return result

    main = run_at(own_rate)
    points = tuple(SweepPoint(rate, run_at(rate)) for rate in sweep.rates)
    found = None
    if sweep.capacity:
        found = capacity(run_at, slo(config), target=config.slo.attainment, low=sweep.min_rate,
                         high=sweep.max_rate)
    if progress is not None:
        progress(len(results), len(results), "done")
    return SimReport(config, main, points, found, totals["sim_s"], len(results), totals["requests"],
                     totals["iterations"])


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
