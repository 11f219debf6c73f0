"""`aios mcp serve`: the kernel's tools as an MCP server, for MCP clients (editors,
assistants) that launch it over stdio or reach it over streamable HTTP on loopback.
Decodes flags, finds the kernel, spawns the serving process and calls
aios.tools.mcp.serve_mcp.

It attaches to the running daemon (found as every command finds it: AIOS_URL, else the
daemon recorded in $AIOS_HOME) and makes every call as a process of its own there, so
its calls show in `aios ps`, the journal and the audit log. With --own-kernel it boots an
in-process kernel instead. Without a daemon, and without the flag, it refuses to start.

With stdio, stdout carries the protocol and nothing else: messages go to stderr."""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Awaitable, Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import typer

from aios.cli.connect import client as daemon_client
from aios.cli.kernel import settings_from
from aios.errors import AiosError, BackendUnavailable

if TYPE_CHECKING:
    from aios.config import Settings
    from aios.sdk import AsyncClient

app = typer.Typer(help="MCP: offer the kernel's tools to MCP clients.", no_args_is_help=True)

PROCESS_NAME = "mcp-serve"
_NO_DAEMON_HINT = "start one with `aios kernel start --detach`, or pass --own-kernel to serve from a kernel of its own"


class Transport(StrEnum):
    STDIO = "stdio"
    HTTP = "http"


@app.command()
def serve(
    transport: Annotated[Transport, typer.Option(help="stdio (launched by the client) or http")] = Transport.STDIO,
    host: Annotated[str, typer.Option(help="loopback address to listen on (http)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (http); 0 picks a free one")] = 8643,
    manifest: Annotated[Path | None, typer.Option(help="a TOML permission manifest for the serving process "
                                                       "(tools, storage paths, network, budget)")] = None,
    own_kernel: Annotated[bool, typer.Option("--own-kernel", help="boot a kernel of its own instead of "
                                                                   "attaching to the running daemon")] = False,
    config: Annotated[Path | None, typer.Option(help="a TOML settings file, for --own-kernel "
                                                     "[default: $AIOS_HOME/config.toml]")] = None,
) -> None:
    """Serves the kernel's tools (built-in, and imported from tools.mcp) to MCP clients.

    Each call is a tool syscall of a process named mcp-serve (under --manifest, if given),
    on the running daemon. With --own-kernel the process lives in an in-process kernel,
    which journals into a temporary folder unless database_url is set."""
    from aios.access.manifest import Manifest   # loaded only when asked for: `mcp` alone stays quick to import
    from aios.tools.mcp import serve_mcp

    declared = Manifest.load(manifest).to_dict() if manifest is not None else None   # a bad file fails first

    def say(text: str) -> None:
        typer.echo(f"aios mcp: {text}", err=True)

    def announce(url: str) -> None:
        say(f"serving the kernel's tools on {url}")

    if own_kernel:
        _serve_own(settings_from(config, {}), declared, say,
                   lambda client: serve_mcp(client, transport.value, host=host, port=port, announce=announce))
        return
    try:
        target = daemon_client()
    except BackendUnavailable as e:
        raise BackendUnavailable(f"aios mcp serve has no daemon to attach to: {e.message}",
                                 hint=_NO_DAEMON_HINT) from None
    with target:
        url, token = target.url, target.target.token

    async def main() -> None:
        from aios.sdk import AsyncClient

        async with AsyncClient(url, token=token) as root:
            try:
                proc = await root.processes.spawn(PROCESS_NAME, manifest=declared)
            except BackendUnavailable as e:
                raise BackendUnavailable(f"aios mcp serve cannot reach the daemon at {url}: {e.message}",
                                         hint=_NO_DAEMON_HINT) from None
            say(f"attached to the daemon at {url}: each tool call is a syscall of process {proc.pid} "
                f"({PROCESS_NAME}); `aios ps` shows it")
            try:
                async with AsyncClient(url, token=token, pid=proc.pid) as client:
                    await serve_mcp(client, transport.value, host=host, port=port, announce=announce)
            finally:   # the process ends with the server; a daemon already gone has ended it
                with anyio.CancelScope(shield=True), contextlib.suppress(AiosError):
                    await root.processes.kill(proc.pid)

    anyio.run(main)


def _serve_own(settings: Settings, declared: dict[str, Any] | None, say: Callable[[str], None],
               serve: Callable[[AsyncClient], Awaitable[None]]) -> None:
    """Boots an in-process kernel with the built-in and imported tools, spawns the serving
    process in it and serves as that process. Unless database_url is set, the kernel
    journals into a temporary folder: it must not share a database with a running daemon."""
    from aios.kernel import Kernel
    from aios.process.inproc import KernelTransport
    from aios.sdk import AsyncClient
    from aios.tools import builtin_tools
    from aios.tools.mcp import mcp_imports

    async def main(db_url: str | None) -> None:
        kernel = Kernel(settings if db_url is None else settings.model_copy(update={"database_url": db_url}))
        for spec in builtin_tools(settings):
            kernel.register_tool(spec)
        async with mcp_imports(kernel, settings.tools.mcp), kernel:
            proc = await kernel.spawn(PROCESS_NAME, manifest=declared)
            say(f"serving from a kernel of its own (--own-kernel), as its process {proc.pid}; "
                f"the daemon does not see these calls")
            async with AsyncClient(transport=KernelTransport(kernel, pid=proc.pid)) as client:
                await serve(client)
            await kernel.shutdown(drain=False)   # the client has gone: nobody waits for what is left

    if settings.database_url is not None:
        anyio.run(main, None)
        return
    with tempfile.TemporaryDirectory(prefix="aios-mcp-") as folder:
        anyio.run(main, f"sqlite:///{Path(folder) / 'aios.db'}")
