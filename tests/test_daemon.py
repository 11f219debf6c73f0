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


def test_a_daemon_killed_mid_load_keeps_every_acknowledged_syscall(tmp_path):
    """SIGKILL while clients submit over HTTP; after a restart, every syscall that got a
    2xx answer is there (queued ones are re-queued and finish)."""
    import signal
    import threading

    port = free_port()
    config = tmp_path / "aios.toml"
    config.write_text("[clock]\nspeed = 50.0\n")   # simulated calls 50x faster than real time
    start = ("kernel", "start", "--detach", "--port", str(port), "--config", str(config))
    assert aios(tmp_path, *start).returncode == 0
    url = f"http://127.0.0.1:{port}"
    pid = json.loads((tmp_path / "daemon.json").read_text())["pid"]
    acked: list[str] = []
    lock = threading.Lock()
    enough = threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=5.0) as c:
            for i in range(200):
                try:
                    r = c.post("/v1/syscalls", json={"kind": "llm", "model": "sim-llama-3-8b", "max_tokens": 64,
                                                     "messages": [{"role": "user", "content": f"c{n} {i}"}]})
                except httpx.HTTPError:
                    return   # the daemon is gone
                if 200 <= r.status_code < 300:
                    with lock:
                        acked.append(r.json()["id"])
                        if len(acked) >= 60:
                            enough.set()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    assert enough.wait(30), "the clients never got 60 answers"
    os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
    with lock:
        acknowledged = list(acked)

    assert aios(tmp_path, *start).returncode == 0
    try:
        with httpx.Client(base_url=url, timeout=60.0) as c:
            states = {cid: c.get(f"/v1/syscalls/{cid}").json()["state"] for cid in acknowledged}
            assert all(s in ("queued", "running", "done") for s in states.values()), states
            last = acknowledged[-1]
            assert c.get(f"/v1/syscalls/{last}/events").status_code == 200   # it finishes after the restart
            assert c.get(f"/v1/syscalls/{last}").json()["state"] == "done"
    finally:
        aios(tmp_path, "kernel", "stop", "--cancel")


def test_the_daemon_reads_config_toml_in_its_home(tmp_path):
    (tmp_path / "config.toml").write_text('[scheduler]\npolicy = "fair"\n')
    port = free_port()
    assert aios(tmp_path, "kernel", "start", "--detach", "--port", str(port)).returncode == 0
    try:
        stats = httpx.get(f"http://127.0.0.1:{port}/v1/kernel/stats", timeout=10).json()
        assert stats["policy"] == "fair"
    finally:
        aios(tmp_path, "kernel", "stop", "--cancel")
