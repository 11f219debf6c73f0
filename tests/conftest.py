"""Shared fixtures: a kernel on SQLite in tmp_path, on a virtual clock by default, with
the hardware-model backend as the fake LLM; `serve` runs an app under a real uvicorn
server on a loopback port; `postgres` runs a real PostgreSQL server on loopback for the
session (the Debian package, which `make` installs), and `database_url` gives a test a
fresh SQLite file or a fresh PostgreSQL database, for the tests that run on both."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
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
    """A PostgreSQL server of its own for the session, on a free loopback port; yields its
    SQLAlchemy base URL (no database name). Run as the `postgres` user when the tests run
    as root (the server refuses root). Missing binaries fail: `make` installs them."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        pytest.fail("PostgreSQL is not installed: `make test` installs the Debian package postgresql")
    bin_dir = bins[-1]
    folder = tempfile.mkdtemp(prefix="aios-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = os.path.join(folder, "data")
    subprocess.run([*as_user, f"{bin_dir}/initdb", "-D", data, "--auth=trust", "-U", "aios", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, f"{bin_dir}/pg_ctl", "-D", data, "-w", "-l", os.path.join(folder, "log"),
                    "-o", f"-p {port} -h 127.0.0.1 -k {folder} -c fsync=off", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql+psycopg://aios@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_postgres_database(base_url: str) -> str:
    import psycopg
    name = f"aios_{uuid.uuid4().hex[:12]}"
    host_port = base_url.split("@", 1)[1]
    host, port = host_port.split(":")
    with psycopg.connect(host=host, port=int(port), user="aios", dbname="postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base_url}/{name}"


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
