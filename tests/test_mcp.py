"""MCP both ways, against real processes: a small MCP server (the `mcp` package's
MCPServer, written into tmp_path) imported over stdio and over streamable HTTP, and the
real `aios mcp serve` reached by the `mcp` package's own client."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters

import aios.tools.mcp
from aios.config import Settings
from aios.errors import BackendUnavailable, ConfigError, InvalidSyscall, ToolError
from aios.kernel import Kernel
from aios.server import create_app
from aios.tools.mcp import mcp_imports
from tests.conftest import serve

pytestmark = pytest.mark.anyio

SERVER = '''
import os, socket, sys
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

mcp = MCPServer("demo")

@mcp.tool()
def add(a: int, b: int, note: str = "") -> int:
    """Adds two integers."""
    return a + b

@mcp.tool()
def fail(reason: str) -> str:
    """Always fails."""
    raise ToolError(f"failed on purpose: {reason}")

@mcp.tool(annotations=ToolAnnotations(destructive_hint=True))
def wipe() -> str:
    """Pretends to delete everything."""
    return "wiped"

@mcp.tool()
def die() -> str:
    """Exits the server in the middle of the call."""
    os._exit(3)

if sys.argv[1:] == ["http"]:   # streamable HTTP on a free loopback port, printed on stdout
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    print(sock.getsockname()[1], flush=True)
    server = uvicorn.Server(uvicorn.Config(mcp.streamable_http_app(), log_level="warning"))
    server.run(sockets=[sock])
else:
    mcp.run()
'''
AIOS = str(Path(sys.executable).parent / "aios")


@pytest.fixture
def server_script(tmp_path: Path) -> str:
    path = tmp_path / "demo_server.py"
    path.write_text(SERVER)
    return str(path)


@pytest.fixture
def stdio_line(server_script: str) -> str:
    return shlex.join([sys.executable, server_script])


@asynccontextmanager
async def http_server(server_script: str) -> AsyncIterator[tuple[str, anyio.abc.Process]]:
    """The demo server over streamable HTTP in a subprocess; yields its URL and process."""
    async with await anyio.open_process([sys.executable, server_script, "http"], stderr=None) as proc:
        try:
            with anyio.fail_after(10):
                port = (await proc.stdout.receive()).decode().strip()   # type: ignore[union-attr]
            yield f"http://127.0.0.1:{port}/mcp", proc
        finally:
            if proc.returncode is None:
                proc.terminate()
            with anyio.fail_after(10):
                await proc.wait()


async def call(kernel: Kernel, tool: str, **arguments: Any) -> Any:
    with anyio.fail_after(15):
        return await kernel.call({"kind": "tool", "tool": tool, "arguments": arguments})


def listing(kernel: Kernel) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in kernel.tool_listing()}


async def check_imported(kernel: Kernel, *, is_http: bool) -> None:
    tools = listing(kernel)
    assert {"demo.add", "demo.fail", "demo.wipe", "demo.die"} <= set(tools)
    add = tools["demo.add"]
    assert add["description"] == "Adds two integers."
    assert add["source"] == "mcp:demo" and add["needs_network"] is is_http and add["irreversible"] is False
    assert add["parameters"]["properties"]["a"]["type"] == "integer"   # the server's own inputSchema
    assert set(add["parameters"]["required"]) == {"a", "b"}
    assert tools["demo.wipe"]["irreversible"] is True

    assert await call(kernel, "demo.add", a=2, b=3) == {"result": 5}   # structuredContent, as sent
    assert await call(kernel, "demo.add", a=2, b=3, note="optional, given") == {"result": 5}
    with pytest.raises(InvalidSyscall, match=r"demo\.add.*\ba: input should be a valid integer") as bad:
        await call(kernel, "demo.add", a="two", b=3)
    assert bad.value.field == "arguments.a"
    with pytest.raises(InvalidSyscall, match="c: unexpected argument"):
        await call(kernel, "demo.add", a=1, b=2, c=3)
    with pytest.raises(ToolError, match="failed on purpose: disk on fire"):
        await call(kernel, "demo.fail", reason="disk on fire")


async def test_import_over_stdio(make_settings: Callable[..., Settings], stdio_line: str) -> None:
    kernel = Kernel(make_settings())
    with anyio.fail_after(20):
        async with mcp_imports(kernel, {"demo": stdio_line}), kernel:
            await check_imported(kernel, is_http=False)
    assert not any(name.startswith("demo.") for name in kernel.tools)   # removed with the sessions


async def test_import_over_streamable_http(make_settings: Callable[..., Settings], server_script: str) -> None:
    kernel = Kernel(make_settings())
    async with http_server(server_script) as (url, _):
        with anyio.fail_after(20):
            async with mcp_imports(kernel, {"demo": url}), kernel:
                await check_imported(kernel, is_http=True)


async def test_a_server_that_dies_mid_run_fails_its_calls(make_settings: Callable[..., Settings],
                                                          stdio_line: str, server_script: str) -> None:
    kernel = Kernel(make_settings())
    async with http_server(server_script) as (url, proc):
        with anyio.fail_after(30):
            async with mcp_imports(kernel, {"demo": stdio_line, "web": url}), kernel:
                with pytest.raises(ToolError, match="'demo'.*closed"):
                    await call(kernel, "demo.die")
                with pytest.raises(ToolError, match="'demo'"):
                    await call(kernel, "demo.add", a=1, b=2)
                assert await call(kernel, "web.add", a=1, b=2) == {"result": 3}   # the others carry on
                proc.kill()
                await proc.wait()
                with pytest.raises(ToolError, match="'web'"):
                    await call(kernel, "web.add", a=1, b=2)


async def test_the_daemon_app_imports_the_configured_servers(make_settings: Callable[..., Settings],
                                                             stdio_line: str) -> None:
    app = create_app(make_settings(**{"clock.mode": "wall", "tools.mcp": {"demo": stdio_line}}))
    with anyio.fail_after(20):
        async with serve(app) as url, httpx.AsyncClient(base_url=url) as c:
            tools = {t["name"]: t for t in (await c.get("/v1/tools")).json()["tools"]}
            assert tools["demo.add"]["source"] == "mcp:demo" and "calculator" in tools
            r = await c.post("/v1/syscalls", params={"wait": True},
                             json={"kind": "tool", "tool": "demo.add", "arguments": {"a": 1, "b": 41}})
            assert r.json()["result"] == {"result": 42}, r.text


def test_the_arguments_model_follows_the_input_schema() -> None:
    """Enums, nullable types and property names that are no Python identifiers."""
    from mcp import types

    from aios.clock import WallClock
    from aios.tools.mcp import _Connection, _spec

    schema = {"type": "object", "required": ["mode", "odd name"],
              "properties": {"mode": {"enum": ["fast", "slow"]}, "odd name": {"type": "string"},
                             "limit": {"type": ["integer", "null"]}, "model_config": {"type": "object"}}}
    conn = _Connection("srv", "http://127.0.0.1:9/mcp", "http://127.0.0.1:9/mcp", WallClock())
    spec = _spec(conn, types.Tool(name="go", input_schema=schema))
    assert spec is not None and spec.schema == schema and spec.needs_network
    bound = spec.bind({"mode": "fast", "odd name": "x", "limit": None, "model_config": {"k": 1}})
    assert sorted(v for v in bound.values() if isinstance(v, str)) == ["fast", "x"]
    with pytest.raises(InvalidSyscall, match="mode: input should be 'fast' or 'slow'"):
        spec.bind({"mode": "medium", "odd name": "x"})
    with pytest.raises(InvalidSyscall, match="odd name: field required"):
        spec.bind({"mode": "slow"})
    assert _spec(conn, types.Tool(name="x" * 70, input_schema={"type": "object"})) is None   # too long a name


@pytest.mark.parametrize(("line", "error", "words"), [
    ("/nonexistent/aios-mcp-server --stdio", BackendUnavailable, r"'broken' cannot start: no command"),
    (shlex.join([sys.executable, "-c", "raise SystemExit(1)"]), BackendUnavailable,
     r"'broken' exited before it answered"),
    ("http://127.0.0.1:9/mcp", BackendUnavailable, r"'broken' could not be reached"),
    ("", ConfigError, r"tools\.mcp\.broken is empty"),
    ("python 'unclosed", ConfigError, r"tools\.mcp\.broken is not a command line"),
])
async def test_a_server_that_cannot_start_is_named(make_settings: Callable[..., Settings], line: str,
                                                   error: type[Exception], words: str) -> None:
    kernel = Kernel(make_settings())
    with anyio.fail_after(15), pytest.raises(error, match=words) as info:
        async with mcp_imports(kernel, {"broken": line}):
            pass
    assert "tools.mcp.broken" in f"{info.value.field} {info.value.hint}"   # type: ignore[attr-defined]
    assert not kernel.tools.get("broken.add")


async def test_a_server_that_never_answers_times_out(make_settings: Callable[..., Settings],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aios.tools.mcp, "CONNECT_TIMEOUT_S", 0.5)
    silent = shlex.join([sys.executable, "-c", "import time; time.sleep(30)"])
    with anyio.fail_after(15), pytest.raises(BackendUnavailable, match="'mute' did not answer within 0.5 s"):
        async with mcp_imports(Kernel(make_settings()), {"mute": silent}):
            pass


async def test_a_bad_server_name_is_a_config_error(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="bad MCP server name 'a.b'"):
        async with mcp_imports(Kernel(make_settings()), {"a.b": "true"}):
            pass


# ---- export: the real `aios mcp serve`, reached by the mcp package's client


async def check_exported(client: Client) -> str:
    """Lists and calls the calculator; the id of the syscall its call made."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    calc = tools["calculator"]
    assert calc.input_schema["type"] == "object"
    assert calc.input_schema["properties"]["expression"]["type"] == "string"
    assert calc.input_schema["required"] == ["expression"]
    assert "arithmetic" in (calc.description or "")

    ok = await client.call_tool("calculator", {"expression": "2*(3+4)"})
    assert not ok.is_error and ok.content[0].text == "14"   # type: ignore[union-attr]
    bad = await client.call_tool("calculator", {"expression": "2*("})
    assert bad.is_error
    assert bad.content[0].text.startswith("invalid_syscall: not an arithmetic expression")  # type: ignore[union-attr]
    missing = await client.call_tool("calculator", {})
    assert missing.is_error and "expression: field required" in missing.content[0].text  # type: ignore[union-attr]
    assert ok.meta is not None
    return ok.meta["aios/syscall_id"]


def user_env(home: Path) -> dict[str, str]:
    """The user's environment with no AIOS_URL or AIOS_TOKEN: the daemon is found through home."""
    env = {k: v for k, v in os.environ.items() if k not in ("AIOS_URL", "AIOS_TOKEN")}
    return {**env, "AIOS_HOME": str(home), "NO_COLOR": "1"}


async def read_stderr_until(proc: subprocess.Popen[str], pattern: str) -> tuple[re.Match[str], str]:
    """Reads the process's stderr line by line until `pattern` matches; the match, and what was read."""
    seen = ""
    while True:
        line = await anyio.to_thread.run_sync(proc.stderr.readline, abandon_on_cancel=True)  # type: ignore[union-attr]
        assert line, f"stderr ended before {pattern!r}: {seen}"
        seen += line
        if found := re.search(pattern, line):
            return found, seen


async def test_aios_mcp_serve_over_stdio(tmp_path: Path) -> None:
    params = StdioServerParameters(command=AIOS, args=["mcp", "serve", "--own-kernel"],
                                   env={"AIOS_HOME": str(tmp_path)})
    with anyio.fail_after(20):
        async with Client(params, cache=None) as client:
            await check_exported(client)
    assert not (tmp_path / "aios.db").exists()   # its journal is its own, not the daemon's


async def test_aios_mcp_serve_over_http_with_imported_tools(tmp_path: Path, stdio_line: str) -> None:
    """Both ways at once: the demo server imported by `aios mcp serve`, served again over HTTP."""
    config = tmp_path / "config.toml"
    config.write_text(f"[tools.mcp]\ndemo = {json.dumps(stdio_line)}\n")   # a JSON string is a TOML string
    proc = subprocess.Popen([AIOS, "mcp", "serve", "--own-kernel", "--transport", "http", "--port", "0",
                             "--config", str(config)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=user_env(tmp_path))
    try:
        with anyio.fail_after(20):
            found, said = await read_stderr_until(proc, r"http://127\.0\.0\.1:\d+/mcp")
            assert "a kernel of its own (--own-kernel)" in said
            async with Client(found.group(0), cache=None) as client:
                await check_exported(client)
                result = await client.call_tool("demo.add", {"a": 20, "b": 22})   # aios -> demo server
                assert result.structured_content == {"result": 42}
                refused = await client.call_tool("demo.add", {"a": "x", "b": 1})   # refused by aios itself
                assert refused.is_error and "demo.add" in refused.content[0].text  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=15)) == 0
        assert proc.stdout.read() == ""   # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[str]:
    """A real daemon in tmp_path, started as a user starts it; its URL."""
    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    started = subprocess.run([AIOS, "kernel", "start", "--detach", "--port", str(port)], capture_output=True,
                             text=True, env=user_env(home), timeout=60)
    assert started.returncode == 0, started.stderr
    yield f"http://127.0.0.1:{port}"
    subprocess.run([AIOS, "kernel", "stop", "--cancel"], capture_output=True, env=user_env(home), timeout=60)


async def test_aios_mcp_serve_attaches_to_the_running_daemon(tmp_path: Path, daemon: str) -> None:
    """Its calls are syscalls of a process of its own on the daemon, bounded by --manifest,
    in the daemon's journal, process list and audit log; the process ends with the server."""
    manifest = tmp_path / "mcp.toml"
    manifest.write_text('tools = ["calculator", "write_file"]\nstorage_write = ["notes/*"]\n')
    params = StdioServerParameters(command=AIOS, args=["mcp", "serve", "--manifest", str(manifest)],
                                   env=user_env(tmp_path / "home"))
    async with httpx.AsyncClient(base_url=daemon) as rest:
        with anyio.fail_after(30):
            async with Client(params, cache=None) as client:
                call_id = await check_exported(client)
                serving = [p for p in (await rest.get("/v1/processes")).json() if p["name"] == "mcp-serve"]
                assert len(serving) == 1 and serving[0]["state"] == "running"
                pid = serving[0]["pid"]
                written = await client.call_tool("write_file", {"path": "notes/a", "content": "hi"})
                assert not written.is_error, written.content
                refused = await client.call_tool("write_file", {"path": "secrets/x", "content": "hi"})
                assert refused.is_error
                assert "missing permission storage_write: secrets/x" in refused.content[0].text  # type: ignore[union-attr]
                python = await client.call_tool("python", {"code": "print(1)"})   # not in its manifest
                assert python.is_error and "missing permission tools: python" in python.content[0].text  # type: ignore[union-attr]
            call = (await rest.get(f"/v1/syscalls/{call_id}")).json()   # in the daemon's journal
            assert (call["kind"], call["pid"], call["state"], call["result"]) == ("tool", pid, "done", 14)
            ended = (await rest.get(f"/v1/processes/{pid}")).json()
            assert ended["state"] == "exited"
    audit = subprocess.run([AIOS, "audit", "--json"], capture_output=True, text=True, env=user_env(tmp_path / "home"),
                           timeout=60)
    entries = json.loads(audit.stdout)
    assert any(e["action"] == "storage.submit" and e["decision"] == "deny" and e["target"] == str(pid)
               for e in entries), entries


def test_aios_mcp_serve_without_a_daemon_says_how_to_start_one(tmp_path: Path) -> None:
    result = subprocess.run([AIOS, "mcp", "serve"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            env=user_env(tmp_path), timeout=60)
    assert result.returncode != 0 and result.stdout == ""
    assert "no daemon to attach to" in result.stderr
    assert "aios kernel start --detach" in result.stderr and "--own-kernel" in result.stderr
