"""History that survives a restart, and retention that bounds it: a kernel booted on the
database of an earlier one knows that one's processes (exited), their calls and
manifests; `Kernel.collect` removes the history older than a cutoff (ended calls, exited
processes and their logs) but never the files and memory agents left, nor anything live.
On SQLite and PostgreSQL alike."""
from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from aios.config import load_settings
from aios.errors import Conflict, ConfigError, NotFound
from aios.kernel import Kernel
from aios.process import ProcState
from aios.storage import retention
from tests.conftest import llm, query


def settings_for(home: Path, database_url: str, **overrides: object):
    return load_settings(env={}, overrides={"home": str(home), "database_url": database_url,
                                            "clock.mode": "wall", **overrides})


async def first_boot(home: Path, database_url: str) -> dict[str, object]:
    """A kernel whose processes ended in each way: `talker` made an LLM call and exited,
    `writer` (with a manifest) left a file, `remembers` a memory entry, `live` was still
    running when the kernel stopped."""
    async with Kernel(settings_for(home, database_url)) as k:
        talker = await k.spawn("talker")
        reply = await k.call(llm("hello"), pid=talker.pid)
        writer = await k.spawn("writer", manifest={"storage_write": ["notes/*"], "storage_read": ["notes/*"]})
        await k.call({"kind": "storage", "op": "write", "path": "notes/a.md", "data": "kept"}, pid=writer.pid)
        remembers = await k.spawn("remembers")
        await k.call({"kind": "memory", "op": "add", "content": "the user likes Lisbon"}, pid=remembers.pid)
        live = await k.spawn("live")
        for proc in (talker, writer, remembers):
            await k.kill(proc.pid, "done")
        (home / "logs").mkdir(exist_ok=True)
        for proc in (talker, writer):
            (home / "logs" / f"proc-{proc.pid}.log").write_text(f"log of {proc.name}\n")
        calls = await k.journal.history("local", pids=[talker.pid])
        return {"talker": talker.pid, "writer": writer.pid, "remembers": remembers.pid, "live": live.pid,
                "reply": reply, "talker_call": calls[0].id}


@pytest.mark.anyio
async def test_a_restarted_kernel_knows_the_processes_calls_and_manifests_of_the_last(tmp_path, database_url):
    before = await first_boot(tmp_path, database_url)
    async with Kernel(settings_for(tmp_path, database_url)) as k:
        listed = {p.pid: p for p in k.processes.visible("local", 0, include_exited=True)}
        assert set(listed) == {before["talker"], before["writer"], before["remembers"], before["live"]}
        assert all(p.state is ProcState.EXITED for p in listed.values())
        assert listed[before["talker"]].name == "talker" and listed[before["talker"]].exit_reason == "done"
        assert listed[before["live"]].exit_reason == "kernel restarted"
        assert listed[before["talker"]].usage.tokens_out > 0   # what it used is kept too
        assert k.processes.visible("local", 0) == []   # none is live
        # a call of an earlier boot by id, and by a prefix of it
        call = await k.lookup(before["talker_call"], principal="local")
        assert call.pid == before["talker"]
        # the writer's manifest still governs reads made as it
        assert k.guard.manifests[before["writer"]].storage_read == ("notes/*",)
        read = await k.call({"kind": "storage", "op": "read", "path": "notes/a.md"}, pid=before["writer"])
        assert read["data"] == "kept"
        with pytest.raises(Conflict, match="has exited"):   # writes as an exited process stay refused
            await k.call({"kind": "storage", "op": "write", "path": "notes/b.md", "data": "x"}, pid=before["writer"])
        # a new process never takes an old pid
        assert (await k.spawn("new")).pid == max(listed) + 1


@pytest.mark.anyio
async def test_retention_removes_old_history_and_keeps_data_and_anything_live(tmp_path, database_url):
    before = await first_boot(tmp_path, database_url)
    async with Kernel(settings_for(tmp_path, database_url)) as k:
        new = await k.spawn("new")   # live: never collected
        await k.call(llm("after the restart"), pid=new.pid)
        num_calls = len(await k.journal.history("local", limit=1000))

        # the default retention (30 days) keeps what is minutes old
        kept = await k.collect()
        assert (kept.num_syscalls, kept.num_processes, kept.num_logs) == (0, 0, 0)
        dry = await k.collect(0, dry_run=True)
        assert dry.dry_run and dry.num_syscalls == num_calls and dry.num_logs == 2
        assert len(await k.journal.history("local", limit=1000)) == num_calls   # a dry run removes nothing

        done = await k.collect(0)
        # the talker and the live-at-restart process go; the writer and remembers own data
        assert set(done.pids) == {before["talker"], before["live"]}
        assert done.num_syscalls == num_calls and done.num_logs == 2 and done.log_bytes > 0
        assert not (tmp_path / "logs" / f"proc-{before['talker']}.log").exists()
        assert not (tmp_path / "logs" / f"proc-{before['writer']}.log").exists()   # its log goes, its files stay
        assert await k.journal.history("local", limit=1000) == []
        with pytest.raises(NotFound, match="ps --all"):
            k.processes.find("local", 0, before["talker"])
        assert before["talker"] not in k.guard.manifests
        remaining = {p.pid for p in k.processes.visible("local", 0, include_exited=True)}
        assert remaining == {before["writer"], before["remembers"], new.pid}
        # what agents left is still theirs to read
        assert (await k.call({"kind": "storage", "op": "read", "path": "notes/a.md"},
                             pid=before["writer"]))["data"] == "kept"
        found = await k.call({"kind": "memory", "op": "search", "query": "Lisbon"}, pid=before["remembers"])
        assert "Lisbon" in str(found)
        assert k.processes.is_live(new.pid)
    rows = {pid for (pid,) in query(database_url, "SELECT pid FROM processes")}
    assert rows == {before["writer"], before["remembers"], new.pid}   # gone from the database, not only the table
    orphans = "SELECT count(*) FROM syscall_transitions WHERE call_id NOT IN (SELECT id FROM syscalls)"
    assert query(database_url, orphans)[0][0] == 0   # a call's moves went with it


@pytest.mark.anyio
async def test_a_retention_of_zero_days_keeps_everything(tmp_path):
    url = f"sqlite:///{tmp_path / 'aios.db'}"
    await first_boot(tmp_path, url)
    async with Kernel(settings_for(tmp_path, url, retention_days=0)) as k:
        done = await k.collect()
        assert (done.num_syscalls, done.num_processes, done.num_logs) == (0, 0, 0)
        assert done.cutoff == 0.0


def test_the_cutoff():
    assert retention.cutoff(1000.0, 0) == 0.0
    assert retention.cutoff(1000.0 + 86400, 1) == 1000.0
    assert retention.cutoff(1000.0, 30, older_than_s=10) == 990.0
    assert retention.cutoff(1000.0, 0, older_than_s=0) == 1000.0


def test_retention_days_may_not_be_negative(tmp_path):
    with pytest.raises(ConfigError, match="retention_days"):
        load_settings(env={}, overrides={"home": str(tmp_path), "retention_days": -1})


@pytest.mark.anyio
async def test_the_kernel_applies_retention_at_boot(tmp_path):
    """A kernel booting with a retention shorter than the history's age removes it by itself."""
    url = f"sqlite:///{tmp_path / 'aios.db'}"
    before = await first_boot(tmp_path, url)
    await anyio.sleep(0.05)
    async with Kernel(settings_for(tmp_path, url, retention_days=0.01 / 86400)) as k:   # 10 ms
        with anyio.fail_after(10):
            while k.processes.procs.get(before["talker"]) is not None:
                await anyio.sleep(0.01)
        assert not (tmp_path / "logs" / f"proc-{before['talker']}.log").exists()


# ---- the commands, on a daemon of their own (it is stopped and started again)

def test_ps_logs_history_and_gc_across_a_daemon_restart(tmp_path):
    from tests.test_cli import aios, free_port
    (tmp_path / "config.toml").write_text("[clock]\nspeed = 20.0\n")
    port = str(free_port())
    assert aios(tmp_path, "kernel", "start", "--detach", "--port", port).returncode == 0
    try:
        for program in ("agents/examples/chat.py", "agents/examples/notes.py"):
            assert aios(tmp_path, "run", program, "plan a trip", timeout=120).returncode == 0
        assert aios(tmp_path, "kernel", "stop").returncode == 0
        assert aios(tmp_path, "kernel", "start", "--detach", "--port", port).returncode == 0
        ps = aios(tmp_path, "ps", "--all")
        assert "chat" in ps.stdout and "notes" in ps.stdout, ps.stdout   # it forgot them before
        logs = aios(tmp_path, "logs", "2")
        assert logs.returncode == 0 and "wrote notes/" in logs.stdout, logs.stderr
        history = aios(tmp_path, "history", "--pid", "2", "--json")
        assert history.returncode == 0 and '"storage"' in history.stdout
        dry = aios(tmp_path, "gc", "--older-than", "0", "--dry-run")
        assert dry.returncode == 0 and dry.stdout.startswith("would remove"), dry.stdout
        # (the clock runs 20x: the first boot's times are ahead of the second's, so gc from
        # the future's point of view: a cutoff a day ahead)
        gone = aios(tmp_path, "gc", "--older-than", "0", "--json")
        assert gone.returncode == 0, gone.stderr
        bad = aios(tmp_path, "gc", "--older-than", "soon")
        assert bad.returncode == 2 and "--older-than is not a duration: 'soon'" in bad.stderr
    finally:
        aios(tmp_path, "kernel", "stop", "--cancel")
    # with no kernel running, gc works on the database itself
    offline = aios(tmp_path, "gc", "--json")
    assert offline.returncode == 0 and '"num_syscalls": 0' in offline.stdout, offline.stderr
    empty = aios(tmp_path, "logs", "1")
    assert empty.returncode != 0   # no kernel to ask


@pytest.mark.anyio
async def test_gc_over_rest_is_for_the_owner_not_for_agents(tmp_path):
    import httpx

    from aios.server import create_app
    from tests.conftest import serve
    settings = settings_for(tmp_path, f"sqlite:///{tmp_path / 'aios.db'}")
    async with Kernel(settings) as k:
        agent = await k.spawn("agent")
        async with serve(create_app(settings, kernel=k)) as url, httpx.AsyncClient(base_url=url) as c:
            refused = await c.post("/v1/kernel/gc", json={}, headers={"X-Aios-Pid": str(agent.pid)})
            assert refused.status_code == 403 and "agent process may not" in refused.json()["error"]["message"]
            bad = await c.post("/v1/kernel/gc", json={"older_than_s": -1})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "older_than_s"
            ok = await c.post("/v1/kernel/gc", json={"dry_run": True})
            assert ok.status_code == 200 and ok.json()["dry_run"] is True
            assert ok.json()["remaining"]["processes"] == 1
