"""`aios bench hardware`: the JSON's shape on a small run (the full run is the benchmark)."""
from __future__ import annotations

import pytest

from aios.benchmarks.bench_hardware import SCENARIOS, run
from aios.errors import ConfigError


def test_a_paper_entry_has_the_published_and_the_simulated_ratio():
    out = run(quick=True, only=["vllm_paged", "fastswitch"], show_progress=False)
    assert out["simulator"].startswith("SIMULATED")
    for name in ("vllm_paged", "fastswitch"):
        e = out["papers"][name]
        assert isinstance(e["paper"], float) and isinstance(e["simulated"], float)
        assert e["right_direction"] == ((e["paper"] > 1) == (e["simulated"] > 1))
        assert e["within_35pct"] == (abs(e["simulated"] / e["paper"] - 1) <= 0.35)
        assert e["metric"] and e["setup"] and e["limits"]
        assert e["baseline"]["system"] and e["system"]["system"]
    assert "sim_10k_requests_s" not in out   # speed not asked for
    assert set(SCENARIOS) == {"vllm_paged", "sarathi_serve", "distserve", "llumnix", "fastswitch"}


def test_an_unknown_scenario_is_refused():
    with pytest.raises(ConfigError, match="unknown scenario"):
        run(quick=True, only=["orca"], show_progress=False)
