"""SLO attainment, goodput and the capacity search, on the engine with a stand-in cost."""
from __future__ import annotations

import numpy as np
import pytest

from aios.errors import ConfigError
from aios.hardware.engine import Engine, EngineConfig
from aios.hardware.metrics import SLO, attainment, capacity, goodput
from aios.hardware.workload import Arrivals, Lengths, Workload, synthetic
from tests.test_hardware_engine import AffineCost


def test_attainment_by_hand():
    cost = AffineCost(per_ctx=0.0)
    r = Engine(cost, EngineConfig()).run(Workload(np.array([0.0]), np.array([100]), np.array([4])))
    ttft, tpot = 0.01 + 1e-4 * 100, 0.01 + 1e-4
    assert attainment(r, SLO(ttft_s=ttft * 1.001, tpot_s=tpot * 1.001)) == 1.0
    assert attainment(r, SLO(ttft_s=ttft * 0.999)) == 0.0
    assert attainment(r, SLO(tpot_s=tpot * 0.999)) == 0.0
    assert goodput(r, SLO()) == pytest.approx(1 / r.makespan_s)


def run_at(rate: float):
    w = synthetic(300, Arrivals("poisson", rate), Lengths.fixed(200), Lengths.fixed(50), seed=1)
    return Engine(AffineCost(capacity=50_000), EngineConfig(scheduler="sarathi")).run(w)


def test_capacity_search_brackets_the_knee():
    slo = SLO(ttft_s=0.5, tpot_s=0.05)
    cap = capacity(run_at, slo, low=1.0, high=200.0)
    assert 1.0 < cap.rate < 200.0 and cap.attainment >= 0.9 and not cap.reason
    assert attainment(run_at(cap.rate * 1.2), slo) < 0.9     # 20% more load misses the target
    assert len(cap.probes) <= 20


def test_an_slo_nobody_meets_is_an_explicit_zero():
    cap = capacity(run_at, SLO(ttft_s=1e-6), low=1.0, high=100.0)
    assert cap.rate == 0.0 and "meets the SLO for only 0%" in cap.reason
    with pytest.raises(ConfigError):
        SLO(ttft_s=0)
    with pytest.raises(ConfigError):
        capacity(run_at, SLO(), low=5, high=1)
