"""Smoke test of `aios bench server`'s cheapest parts against a real daemon subprocess: it
starts, answers calls over HTTP beside an in-process kernel, runs a trivial agent, stops;
and a daemon is stopped on the error path too."""
from __future__ import annotations

import random
from pathlib import Path

import anyio
import httpx
import pytest

from aios.benchmarks.bench_server import (INSTANT_CONFIG, TRIVIAL_AGENT, Daemon, overhead, running,
                                          spawn_to_exit)
from aios.config import load_settings
from aios.kernel import Kernel
from aios.process.inproc import KernelTransport
from aios.sdk import AsyncClient

pytestmark = pytest.mark.slow


def test_daemon_serves_calls_and_agents_then_stops(tmp_path: Path) -> None:
    config = tmp_path / "instant.toml"
    config.write_text(INSTANT_CONFIG)
    agent = tmp_path / "agent.py"
    agent.write_text(TRIVIAL_AGENT)
    with running(Daemon(tmp_path / "daemon", config)) as d:
        assert 0 < d.start() < 20
        assert d.memory_kib()["VmRSS"] > 0

        async def main() -> tuple[dict, list[float]]:
            settings = load_settings(config, env={}, overrides={"home": str(tmp_path / "inproc")})
            async with Kernel(settings) as k, AsyncClient(d.url) as client, \
                    httpx.AsyncClient(base_url=d.url, timeout=30.0) as http:
                lat = await overhead(client, AsyncClient(transport=KernelTransport(k)), random.Random(7), 20, lambda n: None, block=10)
                return lat, await spawn_to_exit(client, http, agent, "inproc", 2, lambda n: None)

        lat, spawn_ms = anyio.run(main)
        assert lat["num_calls_per_path"] == 20 and lat["http_p50_ms"] > 0 and lat["inproc_p50_ms"] > 0
        assert len(spawn_ms) == 2 and min(spawn_ms) > 0
        assert d.stop() > 0
    assert d.proc is not None and d.proc.returncode is not None


def test_a_daemon_is_stopped_when_the_benchmark_fails(tmp_path: Path) -> None:
    config = tmp_path / "instant.toml"
    config.write_text(INSTANT_CONFIG)
    d = Daemon(tmp_path / "daemon", config)
    with pytest.raises(RuntimeError, match="boom"), running(d):
        d.start()
        raise RuntimeError("boom")
    assert d.proc is not None and d.proc.returncode is not None
