"""Tokens as a user meets them, through the real `aios` command against a real daemon on
loopback: the owner keeps every right whatever API tokens exist (the owner token the
daemon writes to $AIOS_HOME, used by the CLI and the SDK by themselves); agents started
by `aios run` get a token of their own process, which acts only as that process and dies
with it; revoking the last token brings loopback trust back without a restart; an owner
token file others can read is refused, naming the file and the fix."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import anyio
import httpx
import pytest

from aios import owner
from aios.config import Settings, load_settings
from aios.errors import Unauthorized
from aios.kernel import Kernel
from aios.sdk import Client
from aios.server.app import create_app

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")

AGENT = '''
def main(task, os):
    reply = os.llm.chat(task, max_tokens=3)
    os.memory.add("asked: " + task)
    return f"pid {os.pid} heard {len(reply.text.split())} words"
'''
# An agent that tries what its token must not allow, and prints its token for later.
PROBE = '''
import json
import os as system

import httpx


def main(task, os):
    url, token = system.environ["AIOS_URL"], system.environ.get("AIOS_TOKEN", "")
    mine = {"Authorization": "Bearer " + token}
    llm = {"kind": "llm", "model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "hi"}],
           "max_tokens": 2}

    def post(path, body, headers):
        r = httpx.post(url + path, json=body, headers=headers, timeout=30)
        data = r.json()
        error = data.get("error") or {}
        return [r.status_code, data.get("pid"), data.get("parent_pid"), error.get("code")]

    seen = {"own": post("/v1/syscalls?wait=true", llm, mine),
            "as_sibling": post("/v1/syscalls?wait=true", llm, {**mine, "X-Aios-Pid": task}),
            "as_account": post("/v1/syscalls?wait=true", llm, {**mine, "X-Aios-Pid": "0"}),
            "spawn": post("/v1/processes", {"name": "child"}, mine),
            "stop": post("/v1/kernel/stop", {}, mine),
            "anonymous": post("/v1/syscalls?wait=true", llm, {})}
    print("token", token, flush=True)
    return json.dumps(seen)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aios(home: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real command as the daemon's owner on this machine: no AIOS_URL, and AIOS_TOKEN
    only when given."""
    env = {k: v for k, v in os.environ.items() if k not in ("AIOS_URL", "AIOS_TOKEN", "AIOS_PID")}
    env |= {"AIOS_HOME": str(home), "NO_COLOR": "1"} | ({"AIOS_TOKEN": token} if token else {})
    return subprocess.run([sys.executable, "-m", "aios.cli.main", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=60)


def poll(ask: Callable[[], T], until: Callable[[T], bool], timeout_s: float = 10.0) -> T:
    """Asks the real server again until its answer is the one awaited (a token's creation
    or revocation reaches the server within a second); fails past the bound."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = ask()
        if until(answer):
            return answer
        if time.monotonic() > deadline:
            pytest.fail(f"the server still answers {answer!r} after {timeout_s:g} s")
        time.sleep(0.05)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[clock]\nspeed = 20.0\n")   # simulated calls 20x faster
    port = free_port()
    started = aios(home, "kernel", "start", "--detach", "--port", str(port))
    assert started.returncode == 0, started.stderr
    yield home, f"http://127.0.0.1:{port}"
    if (home / "daemon.json").exists() and aios(home, "kernel", "stop", "--cancel").returncode != 0:
        os.kill(json.loads((home / "daemon.json").read_text())["pid"], signal.SIGTERM)   # leave nothing behind


def make_token(home: Path, user: str, url: str) -> str:
    assert aios(home, "user", "add", user).returncode == 0
    made = aios(home, "token", "create", "--user", user)
    assert made.returncode == 0, made.stderr
    poll(lambda: httpx.get(f"{url}/v1/processes").status_code, lambda code: code == 401)   # the server knows
    return made.stdout.strip()


@pytest.mark.slow
def test_the_owner_keeps_every_right_whatever_tokens_exist(daemon, monkeypatch: pytest.MonkeyPatch):
    home, url = daemon
    assert aios(home, "ps").returncode == 0
    bob = make_token(home, "bob", url)

    outsider = httpx.get(f"{url}/v1/processes").json()["error"]
    assert outsider["code"] == "unauthorized"
    assert "AIOS_TOKEN" in outsider["hint"] and "aios token create" in outsider["hint"]
    assert "owner" in outsider["hint"]

    ps = aios(home, "ps", "--json")   # the owner, with no AIOS_TOKEN: the owner token, by itself
    assert ps.returncode == 0, ps.stderr
    assert aios(home, "ps", token=bob).returncode == 0
    for name in ("AIOS_URL", "AIOS_TOKEN", "AIOS_PID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIOS_HOME", str(home))
    with Client(url) as sdk:   # the SDK, too, for the daemon of $AIOS_HOME
        assert sdk.processes.spawn("owner's").principal == "local"
    monkeypatch.setenv("AIOS_HOME", str(home.parent))   # another home: no owner token is sent
    with Client(url) as stranger, pytest.raises(Unauthorized):
        stranger.processes.list()

    not_admin = aios(home, "kernel", "stop", token=bob)
    assert not_admin.returncode != 0 and "may not stop" in not_admin.stderr
    stopped = aios(home, "kernel", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not (home / "daemon.json").exists() and not (home / "owner.token").exists()


@pytest.mark.slow
def test_aios_run_agents_work_with_and_without_tokens(daemon, tmp_path: Path):
    home, url = daemon
    agent = tmp_path / "asker.py"
    agent.write_text(AGENT)
    before = aios(home, "run", str(agent), "who is there")
    assert before.returncode == 0, before.stdout + before.stderr
    assert "heard" in before.stdout

    bob = make_token(home, "bob", url)
    owners = aios(home, "run", str(agent), "still me")
    assert owners.returncode == 0, owners.stdout + owners.stderr
    bobs = aios(home, "run", str(agent), "as bob", token=bob)
    assert bobs.returncode == 0, bobs.stdout + bobs.stderr
    listed = json.loads(aios(home, "ps", "--all", "--json", token=bob).stdout)
    assert [(p["name"], p["exit_code"]) for p in listed] == [("asker", 0)]
    assert aios(home, "kernel", "stop").returncode == 0


@pytest.mark.slow
def test_a_process_token_acts_only_as_its_own_process(daemon, tmp_path: Path):
    home, url = daemon
    bob = make_token(home, "bob", url)
    with Client(url, token=bob) as client:
        sibling = client.processes.spawn("sibling").pid
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    ran = aios(home, "run", str(probe), str(sibling), token=bob)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    token_line, result = ran.stdout.strip().splitlines()[-2:]
    seen = json.loads(result)
    (me,) = [p["pid"] for p in json.loads(aios(home, "ps", "--all", "--json", token=bob).stdout)
             if p["name"] == "probe"]

    assert seen["own"][:2] == [201, me]                    # its calls are charged to it, not to pid 0
    assert seen["as_sibling"][0] == 403 and seen["as_sibling"][3] == "permission_denied"
    assert seen["as_account"][0] == 403
    assert seen["spawn"][0] == 201 and seen["spawn"][2] == me   # what it starts is its child
    assert seen["stop"][0] == 403
    assert seen["anonymous"][0] == 401                     # without its token it is nobody

    token = token_line.removeprefix("token ")
    assert token and token != bob
    dead = httpx.get(f"{url}/v1/processes", headers={"Authorization": f"Bearer {token}"})
    assert dead.status_code == 401                         # it died with its process
    denials = json.loads(aios(home, "audit", "--decision", "deny", "--json").stdout)
    assert any(d["principal"] == "bob" and str(sibling) in json.dumps(d["detail"]) for d in denials)
    assert aios(home, "kernel", "stop").returncode == 0


@pytest.mark.slow
def test_revoking_every_token_restores_loopback_trust_without_a_restart(daemon):
    home, url = daemon
    make_token(home, "bob", url)
    make_token(home, "carol", url)
    for token in json.loads(aios(home, "token", "list", "--json").stdout):
        assert aios(home, "token", "revoke", token["id"]).returncode == 0
    trusted = poll(lambda: httpx.get(f"{url}/v1/processes"), lambda r: r.status_code == 200)
    assert trusted.json() == []
    assert aios(home, "ps").returncode == 0
    assert aios(home, "kernel", "stop").returncode == 0


@pytest.mark.slow
def test_an_owner_token_file_others_can_read_is_refused(daemon):
    home, url = daemon
    path = home / "owner.token"
    assert path.stat().st_mode & 0o777 == 0o600
    make_token(home, "bob", url)
    path.chmod(0o644)
    refused = aios(home, "ps")
    assert refused.returncode != 0
    assert str(path) in refused.stderr and f"chmod 600 {path}" in refused.stderr
    denials = json.loads(aios(home, "audit", "--decision", "deny", "--json").stdout)
    assert any(d["detail"].get("file") == str(path) for d in denials)
    path.chmod(0o600)
    assert aios(home, "ps").returncode == 0
    assert aios(home, "kernel", "stop").returncode == 0


# ---- the pieces, fast

def test_the_owner_token_goes_only_to_the_daemon_its_home_records(tmp_path: Path):
    token = owner.issue(tmp_path)
    path = tmp_path / "owner.token"
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text().strip() == token
    assert owner.token_for("http://127.0.0.1:8642", tmp_path) is None   # no daemon recorded
    (tmp_path / "daemon.json").write_text(json.dumps({"pid": 1, "host": "127.0.0.1", "port": 8642, "started": 0}))
    for url in ("http://127.0.0.1:8642", "http://localhost:8642/", "http://[::1]:8642"):
        assert owner.token_for(url, tmp_path) == token, url
    for url in ("http://127.0.0.1:8643", "http://example.com:8642", "https://127.0.0.1:8642", "inproc://"):
        assert owner.token_for(url, tmp_path) is None, url
    env = {"AIOS_HOME": str(tmp_path)}
    assert owner.token_from_env("http://127.0.0.1:8642", env) == token
    assert owner.token_from_env("http://127.0.0.1:8642", env | {"AIOS_PID": "7"}) is None   # an agent: never
    assert owner.issue(tmp_path) != token   # each start writes a new one
    owner.retire(tmp_path, token)           # an older daemon's retirement leaves the new one
    assert path.exists()
    path.chmod(0o640)
    assert "0640" in owner.looseness(path)


@pytest.mark.anyio
async def test_without_tokens_only_loopback_callers_are_trusted(tmp_path: Path):
    """What revoking every token brings back must not open a server that listens beyond
    loopback (it may, while tokens exist) to the world."""
    settings: Settings = load_settings(env={}, overrides={"home": str(tmp_path), "clock.mode": "virtual"})
    async with Kernel(settings) as k:
        app = create_app(settings, kernel=k)
        async with app.router.lifespan_context(app):
            for peer, status in ((("127.0.0.1", 5000), 200), (("203.0.113.7", 5000), 401)):
                transport = httpx.ASGITransport(app=app, client=peer)
                async with httpx.AsyncClient(transport=transport, base_url="http://aios") as c:
                    with anyio.fail_after(10):
                        r = await c.get("/v1/processes")
                assert r.status_code == status, (peer, r.text)
            assert "AIOS_TOKEN" in r.json()["error"]["hint"]
