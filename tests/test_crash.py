"""Exactly once where the kernel owns the effect, at most once elsewhere: a kernel killed
the instant a write commits, and a daemon killed under concurrent REST clients; after a
restart every acknowledged call is found and terminal, and none acted twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import anyio
import httpx
import pytest

from aios.config import load_settings
from aios.kernel import Kernel
from aios.syscall import CallState
from tests.conftest import query
from tests.test_daemon import aios, free_port

pytestmark = pytest.mark.slow

# A kernel that dies (SIGKILL, no clean-up) the moment a store's write returns, that is,
# once the write's transaction has committed and before anything else runs.
DIES_AFTER_WRITE = textwrap.dedent("""
    import os, signal, sys
    import anyio
    from aios.config import load_settings
    from aios.kernel import Kernel
    from aios.memory import MemoryManager
    from aios.storage import FileStore

    def dying(execute):
        async def run(self, call, now, **kw):
            result = await execute(self, call, now, **kw)
            if call.is_store_write:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return run

    FileStore.execute = dying(FileStore.execute)
    MemoryManager.execute = dying(MemoryManager.execute)

    async def main(home, url, kind):
        settings = load_settings(env={}, overrides={"home": home, "database_url": url})
        async with Kernel(settings) as k:
            proc = await k.spawn("writer")
            body = ({"kind": "storage", "op": "write", "path": "notes/a", "data": "once"} if kind == "storage"
                    else {"kind": "memory", "op": "add", "key": "k1", "content": "once"})
            ticket = await k.submit(body, pid=proc.pid)
            print(ticket.id, flush=True)   # acknowledged
            await ticket.wait()
            print("survived", flush=True)

    anyio.run(main, *sys.argv[1:])
""")


@pytest.mark.parametrize("kind", ["storage", "memory"])
def test_a_write_killed_as_it_commits_is_done_once(tmp_path: Path, database_url: str, kind: str) -> None:
    """Before the fix the write committed while its record said queued (or running): a
    restart ran it again (two versions, `already exists`) or failed it as interrupted."""
    script = tmp_path / "dies.py"
    script.write_text(DIES_AFTER_WRITE)
    home = tmp_path / "home"
    p = subprocess.run([sys.executable, str(script), str(home), database_url, kind],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    call_id = p.stdout.split()[0]
    assert "survived" not in p.stdout

    settings = load_settings(env={}, overrides={"home": str(home), "database_url": database_url})

    async def restart() -> None:
        async with Kernel(settings) as k:
            assert call_id not in k.tickets   # nothing to re-run: it is done
            call = await k.lookup(call_id)
            assert call.state is CallState.DONE, call.error
            assert call.result == ({"path": "notes/a", "bytes": 4, "version": 1} if kind == "storage"
                                   else {"key": "k1"})

    anyio.run(restart)
    if kind == "storage":
        assert query(database_url, "SELECT version FROM file_versions WHERE path = 'notes/a'") == [(1,)]
    else:
        assert query(database_url, "SELECT key FROM memory_entries") == [("k1",)]
    moves = [s for (s,) in query(database_url, "SELECT state FROM syscall_transitions WHERE call_id = ? "
                                               "ORDER BY id", call_id)]
    assert moves == ["queued", "running", "done"]


def test_a_daemon_killed_under_load_runs_no_call_twice(tmp_path: Path) -> None:
    """16 REST clients write files, add keyed memories and call the LLM; the daemon is
    SIGKILLed mid-load and started again on the same home. Every acknowledged call is
    found and ends terminal; no write has two versions, no add finds its own key."""
    port = free_port()
    config = tmp_path / "aios.toml"
    config.write_text("[clock]\nspeed = 50.0\n")
    start = ("kernel", "start", "--detach", "--port", str(port), "--config", str(config))
    started = aios(tmp_path, *start)
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    pid = json.loads((tmp_path / "daemon.json").read_text())["pid"]
    acked: list[tuple[str, str | None]] = []   # (call id, the path a storage write wrote)
    lock = threading.Lock()
    enough = threading.Event()
    deadline = time.monotonic() + 30

    def client(w: int) -> None:
        with httpx.Client(base_url=url, timeout=5.0) as c:
            for i in range(400):
                if time.monotonic() > deadline:
                    return
                write = {"kind": "storage", "op": "write", "path": f"c/{w}/{i}", "data": f"{w}:{i}"}
                note = {"kind": "memory", "op": "add", "key": f"k{w}-{i}", "content": f"note {w} {i}"}
                chat = {"kind": "llm", "model": "sim-llama-3-8b", "max_tokens": 16,
                        "messages": [{"role": "user", "content": f"{w} {i}"}]}
                try:
                    for body, path in ((write, write["path"]), (note, None), (chat, None)):
                        r = c.post("/v1/syscalls", json=body)
                        if r.status_code == 201:
                            with lock:
                                acked.append((r.json()["id"], path if body is write else None))
                                if len(acked) >= 600:
                                    enough.set()
                except httpx.HTTPError:
                    return   # the daemon is gone

    threads = [threading.Thread(target=client, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    assert enough.wait(40), f"the clients got only {len(acked)} answers"
    os.kill(pid, signal.SIGKILL)
    for t in threads:
        t.join(30)
    with lock:
        acknowledged = list(acked)

    restarted = aios(tmp_path, *start)
    assert restarted.returncode == 0, restarted.stderr
    lost, twice, stuck, untrue = [], [], [], []
    try:
        with httpx.Client(base_url=url, timeout=30.0) as c:
            for cid, path in acknowledged:
                r = c.get(f"/v1/syscalls/{cid}")
                if r.status_code == 404:
                    lost.append(cid)
                    continue
                if r.json()["state"] not in ("done", "failed", "cancelled"):
                    r = c.get(f"/v1/syscalls/{cid}/events")   # to its end (bounded by the client's timeout)
                    r = c.get(f"/v1/syscalls/{cid}")
                call = r.json()
                if call["state"] not in ("done", "failed", "cancelled"):
                    stuck.append(cid)
                if "already exists" in str((call.get("error") or {}).get("message", "")):
                    twice.append(cid)
                if path is not None:   # a write did all it says, once: done with one version, else none
                    v = c.post("/v1/syscalls?wait=true", json={"kind": "storage", "op": "versions", "path": path})
                    num_versions = len((v.json()["result"] or {"versions": []})["versions"])
                    if num_versions > 1:
                        twice.append(cid)
                    elif num_versions != (call["state"] == "done"):
                        untrue.append(cid)
            states = {c.get(f"/v1/syscalls/{cid}").json()["state"] for cid, _ in acknowledged[-30:]}
    finally:
        aios(tmp_path, "kernel", "stop", "--cancel")
    print(f"acknowledged {len(acknowledged)}, lost {len(lost)}, run twice {len(twice)}, stuck {len(stuck)}, "
          f"state not matching the effect {len(untrue)}")
    assert (lost, twice, stuck, untrue) == ([], [], [], []), (len(acknowledged), lost[:5], twice[:5], stuck[:5],
                                                               untrue[:5])
    assert states <= {"done", "failed", "cancelled"}
