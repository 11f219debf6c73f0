"""What a serving run is judged by: SLO attainment, goodput, and capacity (the highest
request rate that still meets an attainment target, found by bisection), the measures of
DistServe and Sarathi-Serve."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from aios.errors import ConfigError
from aios.hardware.engine import EngineResult


@dataclass(frozen=True, slots=True)
class SLO:
    """Per request: time to first token at most `ttft_s`, and time per output token after
    the first (TPOT) at most `tpot_s`. None leaves that bound out."""
    ttft_s: float | None = None
    tpot_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_s", "tpot_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"an SLO's {name} must be positive, got {value}", field=name)


def attainment(result: EngineResult, slo: SLO) -> float:
    """The fraction of all requests that finished within the SLO (an unserved request
    misses it)."""
    n = len(result.arrival_s)
    if n == 0:
        return math.nan
    ok = ~np.isnan(result.finish_s)
    if slo.ttft_s is not None:
        ok &= result.ttft_s <= slo.ttft_s
    if slo.tpot_s is not None:
        steps = np.maximum(result.output_tokens - 1, 1)
        tpot = np.where(result.output_tokens > 1, (result.finish_s - result.first_token_s) / steps, 0.0)
        ok &= tpot <= slo.tpot_s
    return float(np.count_nonzero(ok)) / n


def goodput(result: EngineResult, slo: SLO) -> float:
    """Requests per second that finished within the SLO, over the run's makespan."""
    if not result.makespan_s:
        return 0.0
    return attainment(result, slo) * len(result.arrival_s) / result.makespan_s


@dataclass(frozen=True, slots=True)
class Capacity:
    rate: float               # the highest rate found that meets the target (0 if none)
    attainment: float         # at that rate
    reason: str = ""          # why the rate is 0, when it is
    probes: tuple[tuple[float, float], ...] = ()   # (rate, attainment) of each run


def capacity(run_at: Callable[[float], EngineResult], slo: SLO, *, target: float = 0.9, low: float = 0.1,
             high: float = 64.0, rel_tol: float = 0.03, max_probes: int = 20) -> Capacity:
    """The highest arrival rate in [low, high] whose run meets `target` attainment, by
    bisection (attainment is taken to fall as the rate rises). `run_at(rate)` simulates
    the workload at that rate. If even `low` misses, the answer is 0 with the reason."""
    if not 0 < target <= 1:
        raise ConfigError(f"an attainment target must be in (0, 1], not {target}", field="target")
    return max_rate(run_at, lambda r: attainment(r, slo), target, low=low, high=high, rel_tol=rel_tol,
                    max_probes=max_probes, what="meets the SLO for only {score:.0%} of requests (target {target:.0%})")


def max_rate(run_at: Callable[[float], EngineResult], score: Callable[[EngineResult], float], target: float, *,
             low: float = 0.1, high: float = 64.0, rel_tol: float = 0.03, max_probes: int = 20,
             what: str = "scores {score:.3g} (target {target:.3g})") -> Capacity:
    """The highest rate in [low, high] whose run has `score(result) >= target`, by bisection
    on a log scale (the score is taken to fall as the rate rises). `what` words a miss at
    `low` for the reason (formatted with score and target)."""
    if not 0 < low < high or not target > 0:
        raise ConfigError("a rate search needs 0 < low < high and a positive target", field="target")
    probes: list[tuple[float, float]] = []

    def meets(rate: float) -> bool:
        a = score(run_at(rate))
        probes.append((rate, a))
        return a >= target

    if not meets(low):
        return Capacity(0.0, probes[-1][1], f"even {low:g} requests/s " + what.format(score=probes[-1][1], target=target),
                        tuple(probes))
    if meets(high):
        return Capacity(high, probes[-1][1], f"the search's upper end {high:g} requests/s still meets it",
                        tuple(probes))
    lo, hi = low, high
    while hi / lo - 1 > rel_tol and len(probes) < max_probes:
        mid = math.sqrt(lo * hi)   # rates span orders of magnitude: bisect on a log scale
        if meets(mid):
            lo = mid
        else:
            hi = mid
    at_lo = max((a for r, a in probes if r == lo), default=math.nan)
    return Capacity(lo, at_lo, "", tuple(probes))
