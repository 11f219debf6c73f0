"""One kernel per database (aios.storage.lease): a second kernel on a live database is
refused before it writes anything, naming the running one; a killed kernel's lease is
taken over and said so; `:memory:` needs none; admin commands are not kernels. Against a
real daemon subprocess on SQLite, and two kernels on one real PostgreSQL database."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aios.config import load_settings
from aios.errors import KernelRunning
from aios.kernel import Kernel
from aios.server.daemon import is_alive, read_info
from tests.conftest import fresh_postgres_database, llm, query
from tests.test_daemon import aios, free_port

TAKEOVER = "took over the lease of kernel pid {} (no longer running)"


def wait_until(predicate, timeout_s: float = 30.0) -> None:   # noqa: ANN001
    """Bounded polling of another process's state (no event to await across processes)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout_s:g} s: {predicate}")
        time.sleep(0.05)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Path, str, int]]:
    """A daemon subprocess on tmp_path (wall clock, real speed): its home, URL and pid."""
    port = free_port()
    started = aios(tmp_path, "kernel", "start", "--detach", "--port", str(port))
    assert started.returncode == 0, started.stderr
    pid = json.loads((tmp_path / "daemon.json").read_text())["pid"]
    yield tmp_path, f"http://127.0.0.1:{port}", pid
    aios(tmp_path, "kernel", "stop", "--cancel")
    if is_alive(pid):   # daemon.json no longer named it (a second kernel took the home over)
        os.kill(pid, signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.anyio
async def test_an_in_process_kernel_on_a_live_daemons_home_is_refused_and_touches_nothing(live):
    """The README's in-process snippet run beside the daemon: refused, naming the daemon;
    the daemon's call in flight and its process table are as they were."""
    home, url, pid = live
    db = home / "aios.db"
    with httpx.Client(base_url=url, timeout=60.0) as c:
        agent = c.post("/v1/processes", json={"name": "bare"}).json()["pid"]
        call = c.post("/v1/syscalls", json=llm("a long answer", max_tokens=300), headers={"X-Aios-Pid": str(agent)})
        call_id = call.json()["id"]
        wait_until(lambda: query(db, "SELECT state FROM syscalls WHERE id = ?", call_id) == [("running",)])
        boots = query(db, "SELECT count(*) FROM kernel_boots")

        with pytest.raises(KernelRunning) as refused:
            async with Kernel(load_settings(env={"AIOS_HOME": str(home)})):
                pytest.fail("a second kernel booted on the daemon's database")
        assert f"pid {pid}" in refused.value.message and url in refused.value.message
        assert refused.value.hint and f'aios.sdk.Client("{url}")' in refused.value.hint and "AIOS_HOME" in refused.value.hint

        # nothing was written: no boot, no recovery, the process still runs, the call still runs
        assert query(db, "SELECT count(*) FROM kernel_boots") == boots
        assert query(db, "SELECT state, exit_reason FROM processes WHERE pid = ?", agent) == [("running", None)]
        assert query(db, "SELECT state FROM syscalls WHERE id = ?", call_id) == [("running",)]
        assert c.get(f"/v1/syscalls/{call_id}/events").status_code == 200   # streams until it ends
        assert c.get(f"/v1/syscalls/{call_id}").json()["state"] == "done"
        states = [s for (s,) in query(db, "SELECT state FROM syscall_transitions WHERE call_id = ? ORDER BY id",
                                      call_id)]
        assert states[-1] == "done" and "failed" not in states and states.count("running") == 1, states
        assert c.post("/v1/processes", json={"name": "next"}).status_code == 201   # pids are the daemon's alone


@pytest.mark.slow
def test_a_second_start_on_a_live_home_or_database_is_refused_before_it_boots(live, tmp_path_factory):
    home, url, pid = live
    boots = query(home / "aios.db", "SELECT count(*) FROM kernel_boots")
    other_home = tmp_path_factory.mktemp("other")
    attempts = {
        "same home, another port": (home, ("kernel", "start", "--port", str(free_port()))),
        "same home, detached": (home, ("kernel", "start", "--detach", "--port", str(free_port()))),
        "another home, the same database": (other_home, ("kernel", "start", "--port", str(free_port()),
                                                         "--db", f"sqlite:///{home / 'aios.db'}")),
    }
    for name, (where, args) in attempts.items():
        env = {**os.environ, "AIOS_HOME": str(where), "NO_COLOR": "1"}
        second = subprocess.Popen([sys.executable, "-m", "aios.cli.main", *args], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            _, err = second.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            second.kill()
            second.communicate()
            pytest.fail(f"{name}: a second kernel started and kept serving")
        finally:
            stray = read_info(home)
            if stray is not None and stray.pid != pid:   # a detached second daemon took the home over
                os.kill(stray.pid, signal.SIGTERM)
        assert second.returncode != 0, name
        assert f"pid {pid}" in err and url in err and "AIOS_URL" in err, (name, err)
    assert query(home / "aios.db", "SELECT count(*) FROM kernel_boots") == boots   # none of them booted
    assert json.loads((home / "daemon.json").read_text())["pid"] == pid
    r = httpx.post(f"{url}/v1/syscalls?wait=true", json=llm("still here", max_tokens=3), timeout=30)
    assert r.status_code == 201 and r.json()["state"] == "done"


@pytest.mark.slow
def test_a_killed_daemons_lease_is_taken_over_and_said_so(tmp_path: Path):
    port = free_port()
    assert aios(tmp_path, "kernel", "start", "--detach", "--port", str(port)).returncode == 0
    first = json.loads((tmp_path / "daemon.json").read_text())["pid"]
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not is_alive(first))
    assert json.loads((tmp_path / "aios.db.lock").read_text())["pid"] == first   # the dead holder's record

    again = aios(tmp_path, "kernel", "start", "--detach", "--port", str(port))
    try:
        assert again.returncode == 0, again.stderr
        second = json.loads((tmp_path / "daemon.json").read_text())["pid"]
        assert TAKEOVER.format(first) in (tmp_path / "logs" / "daemon.log").read_text()
        assert json.loads((tmp_path / "aios.db.lock").read_text())["pid"] == second
    finally:
        stopped = aios(tmp_path, "kernel", "stop", "--cancel")
    assert stopped.returncode == 0, stopped.stderr
    assert (tmp_path / "aios.db.lock").read_text() == ""   # a clean stop leaves no holder to take over from


@pytest.mark.anyio
async def test_two_kernels_on_one_postgresql_database(postgres: str, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture):
    settings = load_settings(env={}, overrides={"home": str(tmp_path), "clock.mode": "virtual",
                                                "database_url": fresh_postgres_database(postgres)})
    async with Kernel(settings) as first:
        with pytest.raises(KernelRunning) as refused:
            async with Kernel(settings):
                pytest.fail("a second kernel booted on the first one's database")
        assert f"pid {os.getpid()} on host" in refused.value.message
        assert "no REST endpoint" in refused.value.message and "AIOS_HOME" in (refused.value.hint or "")
        assert (await first.call(llm("the first still serves")))["usage"]["completion_tokens"] == 8
        assert query(settings.db_url, "SELECT epoch, pid FROM kernel_leases") == [(1, os.getpid())]
    assert query(settings.db_url, "SELECT epoch, pid FROM kernel_leases") == [(1, None)]
    with caplog.at_level(logging.WARNING, logger="aios.storage.lease"):
        async with Kernel(settings):   # released on close: the next one takes it, and takes nothing over
            pass
    assert "took over" not in caplog.text


HOLDER = textwrap.dedent('''
    import sys, anyio
    from aios.config import load_settings
    from aios.kernel import Kernel

    async def main() -> None:
        async with Kernel(load_settings(env={}, overrides={"home": sys.argv[1], "database_url": sys.argv[2]})):
            print("booted", flush=True)
            await anyio.sleep(3600)

    anyio.run(main)
''')


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_killed_kernels_postgresql_lease_is_taken_over_and_said_so(postgres: str, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture):
    url = fresh_postgres_database(postgres)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "booted"
    finally:
        holder.kill()
        holder.wait(30)
    # PostgreSQL ends the killed client's session (and drops its lock) when it sees the socket close
    wait_until(lambda: query(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)])
    settings = load_settings(env={}, overrides={"home": str(tmp_path), "clock.mode": "virtual", "database_url": url})
    with caplog.at_level(logging.WARNING, logger="aios.storage.lease"):
        async with Kernel(settings):
            assert query(url, "SELECT epoch, pid FROM kernel_leases") == [(2, os.getpid())]
    assert TAKEOVER.format(holder.pid) in caplog.text


@pytest.mark.anyio
async def test_memory_databases_need_no_lease(tmp_path: Path):
    settings = load_settings(env={}, overrides={"home": str(tmp_path), "clock.mode": "wall", "clock.speed": 100.0,
                                                "database_url": "sqlite:///:memory:"})   # two virtual clocks cannot share a loop
    async with Kernel(settings) as one, Kernel(settings) as two:
        for k in (one, two):
            assert (await k.call(llm("alone")))["usage"]["completion_tokens"] == 8
    assert not list(tmp_path.glob("*.lock"))


@pytest.mark.slow
def test_admin_commands_are_not_kernels_and_work_beside_the_daemon(live):
    home, url, _ = live
    for args in (("user", "add", "ada"), ("user", "list"), ("token", "list"), ("audit", "--json"),
                 ("fs", "write", "notes.md", "--data", "one"), ("fs", "ls"), ("ps", "--all")):
        done = aios(home, *args)
        assert done.returncode == 0, (args, done.stderr)
    assert "ada" in aios(home, "user", "list").stdout
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200


def test_the_refusal_is_a_conflict_over_http():
    from aios.errors import Conflict
    from aios.server.errors import STATUS
    assert issubclass(KernelRunning, Conflict) and STATUS[KernelRunning.code] == 409
