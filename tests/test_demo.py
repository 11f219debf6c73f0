"""`make demo` runs `aios demo`; this runs the same code, smaller and faster, so the demo
cannot break unnoticed."""
from __future__ import annotations

import pytest

from aios.benchmarks.demo import run

pytestmark = pytest.mark.slow


def test_the_demo_runs_every_policy_to_the_end(capsys):
    run(speed=400.0, quick=True)
    out = capsys.readouterr().out
    for policy in ("fifo", "rr", "priority", "fair"):
        assert policy in out
    assert "interactive latency p99" in out and "preemptions" in out
