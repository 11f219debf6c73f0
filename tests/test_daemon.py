"""The daemon through the real `aios` command, as a user runs it: start --detach,
status, a second start on the same port, stop (drain and cancel), and the refusals."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aios(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIOS_HOME": str(home), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "aios.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def daemon(tmp_path: Path):
    port = free_port()
    started = aios(tmp_path, "kernel", "start", "--detach", "--port", str(port))
    assert started.returncode == 0, started.stderr
    yield tmp_path, port
    aios(tmp_path, "kernel", "stop", "--cancel")


def test_start_status_stop(daemon):
    home, port = daemon
    status = aios(home, "kernel", "status", "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["url"] == f"http://127.0.0.1:{port}" and info["status"] == "ok"
    assert "sim-llama-3-8b" in info["models"]   # no configuration: the simulated models
    assert (home / "daemon.json").exists() and (home / "aios.db").exists()
    assert "loopback only" in (home / "logs" / "daemon.log").read_text()

    r = httpx.post(f"http://127.0.0.1:{port}/v1/syscalls?wait=true", json={
        "kind": "llm", "model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert r.status_code == 201 and r.json()["state"] == "done"

    stopped = aios(home, "kernel", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not (home / "daemon.json").exists()
    again = aios(home, "kernel", "status")
    assert again.returncode != 0 and "aios kernel start" in again.stderr


def test_a_second_start_on_a_port_in_use_says_so(daemon, tmp_path_factory):
    home, port = daemon
    other = tmp_path_factory.mktemp("other")
    second = aios(other, "kernel", "start", "--port", str(port))
    assert second.returncode != 0
    assert f"port {port}" in second.stderr and "in use" in second.stderr
    assert aios(home, "kernel", "status").returncode == 0   # the first one is untouched


def test_no_tokens_means_loopback_only(tmp_path):
    refused = aios(tmp_path, "kernel", "start", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode != 0
    assert "no tokens" in refused.stderr and "server.tokens" in refused.stderr


def test_status_and_stop_without_a_daemon(tmp_path):
    for command in ("status", "stop"):
        r = aios(tmp_path, "kernel", command)
        assert r.returncode != 0 and "no aios kernel is running" in r.stderr
