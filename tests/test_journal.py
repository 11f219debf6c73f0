"""The syscall journal: durability on submit, every state change in order, group commit,
the database refusing to boot when it cannot be written, and the recovery rule."""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import create_engine, event, insert
from sqlalchemy.exc import OperationalError

from aios.clock import VirtualClock
from aios.config import Settings, load_settings
from aios.errors import InvalidSyscall, JournalUnavailable
from aios.kernel import Kernel
from aios.llm import count_tokens
from aios.storage import Database, Journal
from aios.storage.db import describe
from aios.storage.models import ProcessRow, SyscallRow
from aios.syscall import CallState, LLMSyscall
from tests.conftest import llm, query


@pytest.fixture
def make_sqlite_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings on SQLite only: the tests of a database file's own failure modes."""
    def make(**overrides: Any) -> Settings:
        return load_settings(env={}, overrides={"home": str(tmp_path), "clock.mode": "virtual", **overrides})
    return make


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    """The shared fixture's settings, on each database: SQLite, and a real PostgreSQL."""
    def make(**overrides: Any) -> Settings:
        base = {"home": str(tmp_path), "clock.mode": "virtual", "database_url": database_url}
        return load_settings(env={}, overrides={**base, **overrides})
    return make



def db_file(settings: Settings) -> str:
    """The database to read behind the kernel's back: its URL (SQLite or PostgreSQL)."""
    return settings.db_url


def db_path(settings: Settings) -> Path:
    """The SQLite file itself, for the tests of SQLite's own failure modes."""
    return settings.home / "aios.db"


def states(path: Path, call_id: str) -> list[str]:
    return [s for (s,) in query(path, "SELECT state FROM syscall_transitions WHERE call_id = ? ORDER BY id",
                                call_id)]


# ---- durability and order

@pytest.mark.anyio
async def test_submitted_call_is_in_the_database_when_submit_returns(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with Kernel(settings) as k:
        ticket = await k.submit(llm("durable?"))
        # no await between: the kernel has not run anything since submit returned
        rows = query(db_file(settings), "SELECT kind, state, payload FROM syscalls WHERE id = ?", ticket.id)
        assert len(rows) == 1
        kind, state, payload = rows[0]
        # an effect-free call may start while its record commits, so it can be running by now
        assert kind == "llm" and state in ("queued", "running")
        assert '"durable?"' in payload
        assert states(db_file(settings), ticket.id) in (["queued"], ["queued", "running"])
        await ticket.wait()
    assert states(db_file(settings), ticket.id) == ["queued", "running", "done"]


@pytest.mark.anyio
async def test_a_payload_that_is_not_json_is_refused_at_submit(make_sqlite_settings: Callable[..., Settings]) -> None:
    """Decoded once: a dict payload holding a value JSON cannot store is refused when it is
    submitted, naming the payload; before, it was taken, and its journal batch failed with
    every other call's records in it."""
    settings = make_sqlite_settings()
    async with Kernel(settings) as k:
        k.register_tool("echo", lambda text: text)
        with pytest.raises(InvalidSyscall, match="payload is not JSON") as err:
            await k.submit({"kind": "tool", "tool": "echo", "arguments": {"text": {1, 2}}})
        assert "strings, numbers, lists and dicts" in (err.value.hint or "")
        ok = await k.submit(llm("after"))   # the journal goes on
        assert (await ok.wait()).state is CallState.DONE
    assert query(db_path(settings), "SELECT kind, state FROM syscalls") == [("llm", "done")]


@pytest.mark.anyio
async def test_the_journal_stores_the_payload_as_checked(make_sqlite_settings: Callable[..., Settings]) -> None:
    """The payload's JSON is encoded once, at decode; a payload the check changes (an LLM
    call's max_tokens cut to its budget, a path normalised) is journaled as it will run."""
    settings = make_sqlite_settings()
    async with Kernel(settings) as k:
        proc = await k.spawn("budgeted", manifest={"budget": {"run": {"tokens": 40}}})
        ticket = await k.submit(llm("short", max_tokens=1000), pid=proc.pid)
        assert isinstance(ticket.call, LLMSyscall) and ticket.call.max_tokens is not None
        cut = ticket.call.max_tokens
        assert cut < 40
        write = await k.submit({"kind": "storage", "op": "write", "path": "./notes//a.txt", "data": "x"})
        await ticket.wait()
        await write.wait()
    rows = dict(query(db_path(settings), "SELECT id, payload FROM syscalls"))
    assert json.loads(rows[ticket.id])["max_tokens"] == cut
    assert json.loads(rows[write.id])["path"] == "notes/a.txt"


@pytest.mark.anyio
async def test_a_call_whose_record_fails_is_refused_and_leaves_nothing(
        make_sqlite_settings: Callable[..., Settings]) -> None:
    """An LLM call starts while its record commits; when that commit fails, submit raises,
    the call ends, none of its later records is written (they would break the journal's
    next commits), and the next call is journaled as usual."""
    settings = make_sqlite_settings()
    async with Kernel(settings) as k:
        assert k.db.engine is not None
        with k.db.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TRIGGER poison BEFORE INSERT ON syscalls WHEN NEW.payload LIKE '%poison%' "
                                 "BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END")
        with pytest.raises(JournalUnavailable, match="simulated write failure"):
            await k.submit(llm("poison", max_tokens=64))
        with anyio.fail_after(10):
            for ticket in list(k.tickets.values()):   # the started call ends
                await ticket.wait()
        assert not k.tickets
        ok = await k.call(llm("fine"))
        assert ok["message"]["content"]
    assert query(db_path(settings), "SELECT count(*) FROM syscalls WHERE payload LIKE '%poison%'") == [(0,)]
    assert query(db_path(settings), "SELECT state, count(*) FROM syscalls GROUP BY state") == [("done", 1)]
    assert query(db_path(settings), "SELECT count(*) FROM syscall_transitions") == [(3,)]


@pytest.mark.anyio
async def test_every_state_change_is_recorded_in_order(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with Kernel(settings) as k:
        ticket = await k.submit(llm(max_tokens=5))
        call = await ticket.wait()
        from_journal = await k.journal.transitions(ticket.id)
    assert call.state is CallState.DONE
    assert states(db_file(settings), ticket.id) == ["queued", "running", "done"]
    assert [s for s, _, _ in from_journal] == ["queued", "running", "done"]
    times = [at for _, at, _ in from_journal]
    assert times == sorted(times)
    assert times[0] == call.created and times[-1] == call.finished


@pytest.mark.anyio
async def test_preempted_call_records_preempted_queued_pairs(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**{"scheduler.policy": "rr", "scheduler.rr_slice_tokens": 2,
                                "backends": [{"kind": "hardware", "num_slots": 1}]})
    async with Kernel(settings) as k:
        tickets = [await k.submit(llm(f"turn {i}", max_tokens=6)) for i in range(2)]
        with anyio.fail_after(10):
            calls = [await t.wait() for t in tickets]
    for call in calls:
        seq = states(db_file(settings), call.id)
        assert call.state is CallState.DONE
        assert seq[:2] == ["queued", "running"] and seq[-1] == "done"
        middle = seq[2:-1]
        assert len(middle) % 3 == 0 and middle == ["preempted", "queued", "running"] * (len(middle) // 3)
        assert call.num_preemptions == seq.count("preempted") >= 1
        (num_preemptions,) = query(db_file(settings), "SELECT num_preemptions FROM syscalls WHERE id = ?",
                                   call.id)[0]
        assert num_preemptions == call.num_preemptions


@pytest.mark.anyio
async def test_usage_and_result_are_recorded(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with Kernel(settings) as k:
        ticket = await k.submit(llm("count my tokens", max_tokens=7))
        result = await ticket.result()
        loaded = await k.journal.load(ticket.id)
    (row,) = query(db_file(settings), "SELECT state, tokens_in, tokens_out, service_s, started, finished, result "
                   "FROM syscalls WHERE id = ?", ticket.id)
    state, tokens_in, tokens_out, service_s, started, finished, stored = row
    assert state == "done"
    assert tokens_in == count_tokens([{"role": "user", "content": "count my tokens"}])
    assert tokens_out == 7
    assert service_s > 0 and finished >= started
    assert loaded is not None and loaded.result == result
    assert result["message"]["content"] in stored
    assert (loaded.usage.tokens_in, loaded.usage.tokens_out) == (tokens_in, tokens_out)


@pytest.mark.anyio
async def test_failed_call_records_its_error(make_settings: Callable[..., Settings]) -> None:
    def broken() -> None:
        raise RuntimeError("disk on fire")

    async with Kernel(make_settings()) as k:
        k.register_tool("broken", broken)
        ticket = await k.submit({"kind": "tool", "tool": "broken"})
        await ticket.wait()
        loaded = await k.journal.load(ticket.id)
    assert loaded is not None and loaded.state is CallState.FAILED
    assert loaded.error["code"] == "tool_error" and "disk on fire" in loaded.error["message"]


@pytest.mark.anyio
async def test_group_commit(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    n = 40
    async with Kernel(settings) as k:
        commits_before, records_before = k.journal.num_commits, k.journal.num_records
        tickets: list[Any] = []

        async def submit(i: int) -> None:
            tickets.append(await k.submit(llm(f"call {i}")))

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(submit, i)
        num_commits = k.journal.num_commits - commits_before
        num_records = k.journal.num_records - records_before
        assert len(tickets) == n
        assert num_records >= n
        assert num_commits < n          # submits shared commits
        assert num_commits < num_records
        ids = {id_ for (id_,) in query(db_file(settings), "SELECT id FROM syscalls")}
        assert {t.id for t in tickets} <= ids   # every one durable when its submit returned
        for t in tickets:
            await t.wait()
    assert k.journal.num_commits < k.journal.num_records


@pytest.mark.anyio
async def test_wal_and_synchronous_full(make_sqlite_settings: Callable[..., Settings]) -> None:
    settings = make_sqlite_settings()
    async with Kernel(settings) as k:
        assert k.db.engine is not None
        with k.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2   # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    assert query(db_path(settings), "PRAGMA journal_mode") == [("wal",)]   # persists in the file


# ---- a database the kernel cannot write

async def two_done_calls(settings: Settings) -> list[str]:
    async with Kernel(settings) as k:
        return [(await k.submit(llm(f"keep {i}"))).id for i in range(2)]


@pytest.mark.anyio
async def test_read_only_database_refuses_to_boot(make_sqlite_settings: Callable[..., Settings]) -> None:
    settings = make_sqlite_settings()
    ids = await two_done_calls(settings)
    path = db_path(settings)
    boots = query(path, "SELECT count(*) FROM kernel_boots")
    read_only = settings.model_copy(update={"database_url": f"sqlite:///file:{path}?mode=ro&uri=true"})
    with pytest.raises(JournalUnavailable) as info:
        async with Kernel(read_only):
            pytest.fail("a kernel booted on a read-only database")
    assert "read-only" in info.value.message
    assert info.value.hint and "write access" in info.value.hint
    assert {(i, s) for i, s in query(path, "SELECT id, state FROM syscalls")} == {(i, "done") for i in ids}
    assert query(path, "SELECT count(*) FROM kernel_boots") == boots


@pytest.mark.anyio
async def test_corrupt_database_refuses_to_boot(tmp_path: Path, make_sqlite_settings: Callable[..., Settings]) -> None:
    path = tmp_path / "aios.db"
    garbage = bytes(range(256)) * 64
    path.write_bytes(garbage)
    with pytest.raises(JournalUnavailable) as info:
        async with Kernel(make_sqlite_settings()):
            pytest.fail("a kernel booted on a corrupt database")
    assert "corrupt" in info.value.message
    assert str(path) in info.value.message
    assert path.read_bytes() == garbage


@pytest.mark.anyio
async def test_database_turning_read_only_mid_run(make_sqlite_settings: Callable[..., Settings]) -> None:
    settings = make_sqlite_settings()
    async with Kernel(settings) as k:
        before = [await k.submit(llm(f"before {i}")) for i in range(3)]
        for t in before:
            await t.wait()
        writable = True

        def on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
            dbapi_conn.execute(f"PRAGMA query_only={'OFF' if writable else 'ON'}")

        assert k.db.engine is not None
        event.listen(k.db.engine, "checkout", on_checkout)
        writable = False
        refused = LLMSyscall(model="sim-llama-3-8b", messages=[{"role": "user", "content": "lost?"}])
        with pytest.raises(JournalUnavailable) as info:
            await k.submit(refused)
        assert "read-only" in info.value.message
        assert refused.id not in k.tickets
        # the kernel is still up: it reads, and takes calls again once it can write
        assert k.is_accepting
        assert (await k.lookup(before[0].id)).state is CallState.DONE
        writable = True
        after = await k.call(llm("after"))
        assert after["usage"]["completion_tokens"] == 8
    rows = dict(query(db_path(settings), "SELECT id, state FROM syscalls"))
    assert all(rows[t.id] == "done" for t in before)
    assert all(states(db_path(settings), t.id) == ["queued", "running", "done"] for t in before)
    assert refused.id not in rows


# ---- the recovery rule

def row(call_id: str, kind: str, state: str, created: float, payload: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": call_id, "kind": kind, "pid": 0, "principal": "local", "priority": 0, "deadline": None,
            "state": state, "payload": payload, "result": None, "error": None, "created": created,
            "started": None, "finished": None, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0,
            "service_s": 0.0, "num_preemptions": 0, **extra}


LLM = {"model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "recover me"}], "max_tokens": 4}
TOOL = {"tool": "echo", "arguments": {"text": "hi"}}

CRASHED = [
    row("q-llm", "llm", "queued", 1.0, LLM),
    row("p-llm", "llm", "preempted", 2.0, LLM, started=2.5, num_preemptions=1, tokens_out=2),
    row("r-llm", "llm", "running", 3.0, LLM, started=3.5),
    row("q-tool", "tool", "queued", 4.0, TOOL),
    row("r-tool", "tool", "running", 5.0, TOOL, started=5.5),
    row("r-mem", "memory", "running", 6.0, {"op": "add", "key": "k", "content": "c", "query": None, "k": 5},
        started=6.5),
    row("r-proc", "process", "running", 7.0, {"op": "kill", "target_pid": 3}, started=7.5),
    row("d-llm", "llm", "done", 0.5, LLM, started=0.6, finished=0.9, result={"message": {"content": "x"}}),
    row("f-tool", "tool", "failed", 0.6, TOOL, finished=0.7, error={"code": "tool_error", "message": "m"}),
    row("c-llm", "llm", "cancelled", 0.7, LLM, finished=0.8, error={"code": "cancelled", "message": "m"}),
]


def write_rows(url: str, rows: list[dict[str, Any]], processes: Sequence[dict[str, Any]] = ()) -> None:
    """Writes rows as a kernel that crashed would have left them."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(SyscallRow.__table__), rows)
            if processes:
                conn.execute(insert(ProcessRow.__table__), list(processes))
    finally:
        engine.dispose()


@pytest.mark.anyio
async def test_recovery_rule(tmp_path: Path) -> None:
    path = tmp_path / "aios.db"
    db = Database(f"sqlite:///{path}", VirtualClock())
    db.open()
    try:
        write_rows(db.url, CRASHED)
        journal = Journal(db)
        requeued, failed = await journal.recover(now=10.0)
    finally:
        db.close()
    # queued and preempted calls, and running LLM calls, are re-queued, oldest first
    assert [c.id for c in requeued] == ["q-llm", "p-llm", "r-llm", "q-tool"]
    assert all(c.state is CallState.QUEUED for c in requeued)
    by_id = {c.id: c for c in requeued}
    assert by_id["r-llm"].started == 3.5 and by_id["p-llm"].num_preemptions == 1
    assert by_id["p-llm"].usage.tokens_out == 2
    # running calls with side effects are failed, not re-run
    assert [c.id for c in failed] == ["r-tool", "r-mem", "r-proc"]
    for call in failed:
        assert call.state is CallState.FAILED and call.finished == 10.0
        assert call.error["code"] == "interrupted"
        assert "may already have acted" in call.error["message"] and call.error["hint"]
    # all of it is in the database, with the moves that got it there
    assert dict(query(path, "SELECT id, state FROM syscalls")) == {
        "q-llm": "queued", "p-llm": "queued", "r-llm": "queued", "q-tool": "queued",
        "r-tool": "failed", "r-mem": "failed", "r-proc": "failed",
        "d-llm": "done", "f-tool": "failed", "c-llm": "cancelled"}
    moves = query(path, "SELECT call_id, state, at, detail FROM syscall_transitions ORDER BY id")
    assert [(c, s) for c, s, _, _ in moves] == [
        ("p-llm", "queued"), ("r-llm", "preempted"), ("r-llm", "queued"),
        ("r-tool", "failed"), ("r-mem", "failed"), ("r-proc", "failed")]
    assert all(at == 10.0 and json.loads(detail) == {"recovered": True} for _, _, at, detail in moves)
    (error,) = query(path, "SELECT error FROM syscalls WHERE id = 'r-tool'")[0]
    assert '"interrupted"' in error
    # the boot row of this boot says what recovery did
    assert query(path, "SELECT num_requeued, num_failed FROM kernel_boots ORDER BY id DESC LIMIT 1") == [(4, 3)]


@pytest.mark.anyio
async def test_recovery_with_nothing_to_recover(tmp_path: Path) -> None:
    path = tmp_path / "aios.db"
    db = Database(f"sqlite:///{path}", VirtualClock())
    db.open()
    try:
        write_rows(db.url, CRASHED[-3:])
        assert await Journal(db).recover(now=1.0) == ([], [])
    finally:
        db.close()
    assert query(path, "SELECT count(*) FROM syscall_transitions") == [(0,)]
    assert query(path, "SELECT num_requeued, num_failed FROM kernel_boots") == [(0, 0)]


@pytest.mark.anyio
async def test_recovery_that_cannot_be_journaled_refuses_to_boot(tmp_path: Path) -> None:
    path = tmp_path / "aios.db"
    db = Database(f"sqlite:///{path}", VirtualClock())
    db.open()
    try:
        write_rows(db.url, CRASHED[:3])
        assert db.engine is not None
        with db.engine.begin() as conn:   # the journal's commit fails; other writes do not
            conn.exec_driver_sql("CREATE TRIGGER no_moves BEFORE INSERT ON syscall_transitions "
                                 "BEGIN SELECT RAISE(ABORT, 'simulated write failure'); END")
        with pytest.raises(JournalUnavailable) as info:
            await Journal(db).recover(now=10.0)
        assert "simulated write failure" in info.value.message
    finally:
        db.close()
    assert dict(query(path, "SELECT id, state FROM syscalls")) == {
        "q-llm": "queued", "p-llm": "preempted", "r-llm": "running"}   # untouched, for the next boot


@pytest.mark.anyio
async def test_kernel_boot_recovers(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    async with Kernel(settings):
        pass
    path = db_file(settings)
    alive = {"name": "agent", "principal": "local", "parent_pid": None, "priority": 0, "created": 0.0,
             "exited": None, "exit_reason": None, "tokens_in": 0, "tokens_out": 0, "cost_usd": 0.0,
             "service_s": 0.0}
    write_rows(settings.db_url, [{**r, "pid": 1} for r in CRASHED],
               [{**alive, "pid": 1, "state": "running"}, {**alive, "pid": 2, "state": "suspended"}])

    k = Kernel(settings)
    k.register_tool("echo", lambda text: text)   # before boot, so its queued call is recovered
    async with k:
        assert set(k.tickets) == {"q-llm", "p-llm", "r-llm", "q-tool"}
        assert all(t.pid == 0 for t in k.tickets.values())   # their process died with the old kernel
        with anyio.fail_after(10):
            for ticket in list(k.tickets.values()):
                await ticket.wait()
        calls = {i: await k.lookup(i) for i in ("q-llm", "p-llm", "r-llm", "q-tool", "r-tool", "r-mem")}
        # pids go on from the highest one used before the crash
        assert (await k.spawn("next")).pid == 3
    for i in ("q-llm", "p-llm", "r-llm"):
        assert calls[i].state is CallState.DONE
        assert calls[i].result["usage"]["completion_tokens"] == 4
    assert calls["q-tool"].state is CallState.DONE and calls["q-tool"].result == "hi"
    assert calls["r-tool"].state is CallState.FAILED and calls["r-tool"].error["code"] == "interrupted"
    assert calls["r-mem"].error["code"] == "interrupted"
    assert states(path, "r-llm") == ["preempted", "queued", "running", "done"]
    assert query(path, "SELECT pid, state, exit_reason FROM processes WHERE pid < 3 ORDER BY pid") == [
        (1, "exited", "kernel restarted"), (2, "exited", "kernel restarted")]
    assert query(path, "SELECT num_requeued, num_failed FROM kernel_boots ORDER BY id") == [(0, 0), (4, 3)]


@pytest.mark.anyio
async def test_boot_fails_recovered_calls_it_cannot_serve(make_settings: Callable[..., Settings]) -> None:
    """A queued call whose tool or model this kernel does not serve is failed at boot; it
    does not keep every later boot from starting."""
    settings = make_settings()
    async with Kernel(settings):
        pass
    write_rows(settings.db_url, [row("q-gone-tool", "tool", "queued", 1.0, {"tool": "gone", "arguments": {}}),
                                 row("q-gone-model", "llm", "queued", 2.0, {**LLM, "model": "retired-model"}),
                                 row("q-llm", "llm", "queued", 3.0, LLM)])
    async with Kernel(settings) as k:
        with anyio.fail_after(10):
            for ticket in list(k.tickets.values()):
                await ticket.wait()
        gone_tool = await k.lookup("q-gone-tool")
        gone_model = await k.lookup("q-gone-model")
        served = await k.lookup("q-llm")
    assert gone_tool.state is CallState.FAILED and gone_tool.error["code"] == "not_found"
    assert "gone" in gone_tool.error["message"]
    assert gone_model.state is CallState.FAILED and gone_model.error["code"] == "not_found"
    assert served.state is CallState.DONE
    assert states(db_file(settings), "q-gone-tool") == ["failed"]


@pytest.mark.anyio
async def test_database_folder_that_cannot_be_made_refuses_to_boot(
        tmp_path: Path, make_sqlite_settings: Callable[..., Settings]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings = make_sqlite_settings(home=str(blocker / "home"))
    with pytest.raises(JournalUnavailable) as info:
        async with Kernel(settings):
            pytest.fail("a kernel booted without a database")
    assert str(blocker / "home") in info.value.message
    assert info.value.hint


@pytest.mark.parametrize(("driver_message", "words"), [
    ("attempt to write a readonly database", "is read-only"),
    ("file is not a database", "is corrupt"),
    ("database disk image is malformed", "is corrupt"),
    ("unable to open database file", "cannot open the database"),
    ("disk I/O error", "database error on"),
])
def test_describe_says_what_is_wrong(driver_message: str, words: str) -> None:
    error = OperationalError("INSERT ...", {}, sqlite3.OperationalError(driver_message))
    described = describe(error, "postgresql+psycopg://kernel:s3cret@db.example/aios")
    assert isinstance(described, JournalUnavailable)
    assert words in described.message and driver_message in described.message
    assert "s3cret" not in described.message   # the password is not printed
