"""Shared fixtures: a kernel on SQLite in tmp_path, on a virtual clock by default, with
the hardware-model backend as the fake LLM; `serve` runs an app under a real uvicorn
server on a loopback port; `postgres` runs a real PostgreSQL server on loopback for the
session (the Debian package, which `make` installs), and `database_url` gives a test a
fresh SQLite file or a fresh PostgreSQL database, for the tests that run on both."""
from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn

from aios.config import Settings, load_settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A PostgreSQL server of its own for the session (aios.storage.pgserver); its base
    URL. Missing binaries fail: `make` installs them."""
    from aios.storage.pgserver import binaries, local_postgres
    if binaries() is None:
        pytest.fail("PostgreSQL is not installed: `make test` installs the Debian package postgresql")
    with local_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def pgvector() -> Iterator[str]:
    """A PostgreSQL server with the pgvector extension, for the session: Debian's has none,
    so this is the build the PyPI package pgserver ships (a test dependency)."""
    from aios.storage.pgserver import local_postgres, with_pgvector
    bin_dir = with_pgvector()
    if bin_dir is None:
        pytest.fail("no PostgreSQL with pgvector: `make test` installs pgserver, whose build has it")
    with local_postgres(bin_dir) as url:
        yield url


def fresh_postgres_database(base_url: str) -> str:
    from aios.storage.pgserver import fresh_database
    return fresh_database(base_url)


def query(target: Path | str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Reads the database through a connection of its own, as another process would (an
    SQLite file's path, or any database's URL; `?` placeholders); JSON cells come back as
    their text on both databases."""
    from sqlalchemy import create_engine
    engine = create_engine(target if isinstance(target, str) else f"sqlite:///{target}")
    try:
        with engine.connect() as conn:
            if engine.dialect.name != "sqlite":
                sql = sql.replace("?", "%s")
            return [tuple(json.dumps(v) if isinstance(v, dict | list) else v for v in r)
                    for r in conn.exec_driver_sql(sql, tuple(args)).fetchall()]
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each kind: an SQLite file, and a database on the session's
    PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'aios.db'}"
    return fresh_postgres_database(request.getfixturevalue("postgres"))


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """make_settings(**{"scheduler.policy": "rr"}) -> Settings rooted in tmp_path."""
    def make(**overrides: Any) -> Settings:
        base = {"home": str(tmp_path), "clock.mode": "virtual"}
        return load_settings(env={}, overrides={**base, **overrides})
    return make


def llm(prompt: str = "hello", max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    """An LLM syscall dict for the default simulated model."""
    return {"kind": "llm", "model": "sim-llama-3-8b", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, **extra}


@asynccontextmanager
async def serve(app: Any, *, sock: socket.socket | None = None,
                sndbuf_bytes: int | None = None) -> AsyncIterator[str]:
    """Runs `app` under a real uvicorn server in this event loop, on `sock` or else on
    127.0.0.1 port 0; yields its base URL and stops it on the way out. `sndbuf_bytes`
    shrinks the send buffer of the accepted connections (they inherit the listener's),
    so that a client that does not read makes the server feel back-pressure quickly."""
    if sock is None:
        # proto given, so asyncio sets TCP_NODELAY on the accepted sockets (it checks
        # proto); without it each response waits ~40 ms for a delayed ACK
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
    if sndbuf_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf_bytes)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    app.state.server = server   # lets POST /v1/kernel/stop stop it, as the daemon does
    is_over = anyio.Event()

    async def run() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            is_over.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.fail_after(10):
                while not server.started and not is_over.is_set():
                    await anyio.sleep(0.01)
            if not server.started:
                raise RuntimeError("the test server did not start")
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()
