"""Versioned storage (aios.storage.files): every write is a new version; versions, diff,
reading an old version, rollback to a version or a point in time (itself a new version),
deletions as versions, equal contents stored once, a quota per agent, and the files of a
database made before versions becoming their first version."""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, func, select, text

from aios.config import Settings
from aios.errors import Conflict, InvalidSyscall, NotFound, QuotaExceeded
from aios.kernel import Kernel
from aios.storage.db import MIGRATIONS
from aios.storage.models import BlobRow, FileVersionRow


async def fs(k: Kernel, pid: int, op: str, **fields: Any) -> Any:
    ticket = await k.submit({"kind": "storage", "op": op, **fields}, pid=pid)
    if op == "delete":
        await k.confirm(ticket.id, approve=True, by="local")
    return await ticket.result()


@pytest.mark.anyio
async def test_versions_diff_read_back_and_rollback(make_settings: Callable[..., Settings], database_url: str):
    async with Kernel(make_settings(database_url=database_url)) as k:
        a = (await k.spawn("a")).pid
        for text_ in ("one\ntwo\n", "one\n2\n", "one\n2\nthree\n"):
            await fs(k, a, "write", path="notes.txt", data=text_)
            await k.clock.sleep(1.0)
        listed = (await fs(k, a, "versions", path="notes.txt"))["versions"]
        assert [v["version"] for v in listed] == [1, 2, 3] and not any(v["deleted"] for v in listed)
        assert [v["bytes"] for v in listed] == [8, 6, 12] and all(len(v["sha256"]) == 64 for v in listed)
        assert (await fs(k, a, "read", path="notes.txt", version=1))["data"] == "one\ntwo\n"
        last = await fs(k, a, "diff", path="notes.txt")
        assert (last["from"], last["to"]) == (2, 3) and "+three" in last["diff"]
        first_to_last = await fs(k, a, "diff", path="notes.txt", version=1, other=3)
        assert "-two" in first_to_last["diff"] and "+2" in first_to_last["diff"]

        back = await fs(k, a, "rollback", path="notes.txt", version=1)
        assert back == {"path": "notes.txt", "version": 4, "restored": 1, "deleted": False}
        assert (await fs(k, a, "read", path="notes.txt"))["data"] == "one\ntwo\n"
        # to a point in time: the version that was current then
        t2 = listed[1]["created"] + 0.5
        assert (await fs(k, a, "rollback", path="notes.txt", at=t2))["restored"] == 2
        assert (await fs(k, a, "read", path="notes.txt"))["data"] == "one\n2\n"

        # a deletion is a version too, and can be rolled back
        assert (await fs(k, a, "delete", path="notes.txt"))["version"] == 6
        with pytest.raises(NotFound):
            await fs(k, a, "read", path="notes.txt")
        assert (await fs(k, a, "versions", path="notes.txt"))["versions"][-1]["deleted"]
        with pytest.raises(NotFound, match="deletion"):
            await fs(k, a, "read", path="notes.txt", version=6)
        assert (await fs(k, a, "rollback", path="notes.txt", version=5))["version"] == 7
        assert (await fs(k, a, "read", path="notes.txt"))["data"] == "one\n2\n"


@pytest.mark.anyio
async def test_bad_versions_and_rollbacks_are_refused(make_settings: Callable[..., Settings], database_url: str):
    async with Kernel(make_settings(database_url=database_url)) as k:
        a = (await k.spawn("a")).pid
        await fs(k, a, "write", path="f", data="x")
        with pytest.raises(NotFound) as err:
            await fs(k, a, "rollback", path="f", version=9)
        assert err.value.field == "version"
        with pytest.raises(NotFound) as err:
            await fs(k, a, "rollback", path="f", at=-5.0)
        assert err.value.field == "at"
        for fields in ({}, {"version": 1, "at": 1.0}):
            with pytest.raises(InvalidSyscall, match="exactly one"):
                await k.submit({"kind": "storage", "op": "rollback", "path": "f", **fields}, pid=a)
        with pytest.raises(NotFound):
            await fs(k, a, "versions", path="never")
        with pytest.raises(NotFound):
            await fs(k, a, "diff", path="f")   # one version: nothing before it
        b = (await k.spawn("b")).pid
        with pytest.raises(NotFound):   # another agent's history is not its own
            await fs(k, b, "versions", path="f")


@pytest.mark.anyio
async def test_papercuts_of_diff_rollback_and_a_missing_process(make_settings: Callable[..., Settings]):
    """A diff of files with no final newline keeps its lines apart, as GNU diff does; a
    rollback to before the first version says when, in UTC, and what to run; an unknown
    pid points to `aios ps --all`."""
    async with Kernel(make_settings()) as k:
        a = (await k.spawn("a")).pid
        await fs(k, a, "write", path="n", data="one\ntwo")
        await fs(k, a, "write", path="n", data="one\n2")
        diff = (await fs(k, a, "diff", path="n"))["diff"]
        assert diff.endswith("-two\n\\ No newline at end of file\n+2\n\\ No newline at end of file\n"), diff
        first = (await fs(k, a, "versions", path="n"))["versions"][0]["created"]
        with pytest.raises(NotFound) as err:
            await fs(k, a, "rollback", path="n", at=first - 60)
        utc = datetime.fromtimestamp(first - 60, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        assert err.value.message.startswith(f"'n' had no version yet at {utc} UTC: its first version is of ")
        assert "UTC" in err.value.message and "aios fs versions n" in (err.value.hint or "")
        assert " op" not in err.value.message + (err.value.hint or "")
        with pytest.raises(NotFound) as err:
            await k.kill(9999)
        assert err.value.hint == "aios ps --all lists your processes, those that have exited too"


@pytest.mark.anyio
async def test_equal_contents_are_stored_once_and_the_quota_holds(make_settings: Callable[..., Settings],
                                                                  database_url: str):
    async with Kernel(make_settings(storage_quota_bytes=1000, database_url=database_url)) as k:
        a, b = (await k.spawn("a")).pid, (await k.spawn("b")).pid
        for pid, path in ((a, "x"), (a, "y"), (b, "x")):
            await fs(k, pid, "write", path=path, data="same content " * 10)

        def count(engine) -> tuple[int, int]:
            with engine.connect() as conn:
                return (conn.execute(select(func.count()).select_from(BlobRow)).scalar_one(),
                        conn.execute(select(func.count()).select_from(FileVersionRow)).scalar_one())
        assert await k.db.run(count) == (1, 3)
        await fs(k, a, "write", path="z", data="z" * 700)   # 130 + 130 + 700 = 960 of 1000
        with pytest.raises(QuotaExceeded, match="40 of 1000 bytes left") as err:
            await fs(k, a, "write", path="w", data="w" * 100)
        assert err.value.field == "data"
        await fs(k, a, "write", path="z", data="z" * 740)   # an overwrite counts its new size only
        assert (await fs(k, b, "write", path="big", data="b" * 800))["version"] == 1   # b has its own quota


@pytest.mark.anyio
async def test_a_move_is_a_new_version_there_and_a_deletion_here(make_settings: Callable[..., Settings],
                                                                 database_url: str):
    async with Kernel(make_settings(storage_quota_bytes=1000, database_url=database_url)) as k:
        a = (await k.spawn("a")).pid
        await fs(k, a, "write", path="draft.md", data="d" * 600)   # 600 of 1000: a copy would not fit
        await fs(k, a, "write", path="draft.md", data="e" * 600)
        moved = await fs(k, a, "move", path="draft.md", to="final/report.md")
        assert moved == {"path": "draft.md", "to": "final/report.md", "version": 1, "deleted_version": 3}
        assert (await fs(k, a, "read", path="final/report.md"))["data"] == "e" * 600
        assert (await fs(k, a, "list"))["paths"] == ["final/report.md"]
        with pytest.raises(NotFound):
            await fs(k, a, "read", path="draft.md")
        # the source keeps its history: a rollback brings it back (as a copy, over quota here)
        assert [v["deleted"] for v in (await fs(k, a, "versions", path="draft.md"))["versions"]] == [False, False, True]
        with pytest.raises(QuotaExceeded):
            await fs(k, a, "rollback", path="draft.md", version=1)

        await fs(k, a, "write", path="other.md", data="o")
        bad = [({"path": "missing.md", "to": "x.md"}, NotFound, "path"),
               ({"path": "other.md", "to": "final/report.md"}, Conflict, "to"),     # exists: never overwritten
               ({"path": "other.md", "to": "./other.md"}, InvalidSyscall, "to"),
               ({"path": "other.md", "to": "../escape.md"}, InvalidSyscall, "to"),
               ({"path": "other.md", "to": "/etc/passwd"}, InvalidSyscall, "to"),
               ({"path": "other.md", "to": "a\x00b"}, InvalidSyscall, "to"),
               ({"path": "other.md", "to": "."}, InvalidSyscall, "to"),
               ({"path": "other.md"}, InvalidSyscall, "to")]
        for fields, error, field in bad:
            with pytest.raises(error) as err:
                await fs(k, a, "move", **fields)
            assert err.value.field == field, fields
        # nothing changed by the refused moves
        assert (await fs(k, a, "list"))["paths"] == ["final/report.md", "other.md"]
        assert (await fs(k, a, "read", path="other.md"))["data"] == "o"
        assert len((await fs(k, a, "versions", path="final/report.md"))["versions"]) == 1


@pytest.mark.anyio
async def test_files_of_an_older_database_become_their_first_version(tmp_path: Path,
                                                                     make_settings: Callable[..., Settings]):
    settings = make_settings()
    engine = create_engine(settings.db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001_first")
        conn.execute(text("INSERT INTO files (pid, path, data, updated) VALUES (3, 'old.txt', 'kept', 5.0)"))
    engine.dispose()
    async with Kernel(settings) as k:
        def versions(engine) -> list[tuple]:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(select(FileVersionRow.pid, FileVersionRow.path,
                                                              FileVersionRow.version, FileVersionRow.size))]
        assert await k.db.run(versions) == [(3, "old.txt", 1, 4)]
