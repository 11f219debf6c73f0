"""A PostgreSQL server that goes away mid-run and comes back: calls submitted while it is
gone are refused with an error that names the database, nothing acknowledged before is
lost, and the kernel serves again once it is back (connections are checked before use)."""
from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from aios.config import Settings
from aios.errors import JournalUnavailable
from aios.kernel import Kernel
from aios.storage.pgserver import LocalPostgres, fresh_database
from tests.conftest import llm


@pytest.mark.anyio
async def test_postgresql_stopped_and_started_again(make_settings: Callable[..., Settings]):
    server = LocalPostgres()
    try:
        server.start()
        settings = make_settings(**{"database_url": fresh_database(server.url), "clock.mode": "wall"})
        async with Kernel(settings) as k:
            agent = (await k.spawn("agent")).pid
            before = await k.submit({"kind": "storage", "op": "write", "path": "kept", "data": "acknowledged"},
                                    pid=agent)
            await before.wait()
            server.stop()
            with anyio.fail_after(60), pytest.raises(JournalUnavailable) as err:
                await k.submit(llm("while the database is away"), pid=agent)
            assert "postgresql" in err.value.message
            server.start()
            with anyio.fail_after(60):
                after = await k.call({"kind": "storage", "op": "read", "path": "kept"}, pid=agent)
            assert after == {"path": "kept", "data": "acknowledged"}
            with anyio.fail_after(60):
                assert await k.call(llm("back"), pid=agent) is not None
    finally:
        server.remove()
