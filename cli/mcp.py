"""`aios mcp serve`: the kernel's tools as an MCP server, for MCP clients (editors,
assistants) that launch it over stdio or reach it over streamable HTTP on loopback.
Decodes flags, boots an in-process kernel and calls aios.tools.mcp.serve_mcp.

With stdio, stdout carries the protocol and nothing else: messages go to stderr."""
from __future__ import annotations

import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import anyio
import typer

from aios.cli.kernel import settings_from

app = typer.Typer(help="MCP: offer the kernel's tools to MCP clients.", no_args_is_help=True)


class Transport(StrEnum):
    STDIO = "stdio"
    HTTP = "http"


@app.command()
def serve(
    transport: Annotated[Transport, typer.Option(help="stdio (launched by the client) or http")] = Transport.STDIO,
    host: Annotated[str, typer.Option(help="loopback address to listen on (http)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on (http); 0 picks a free one")] = 8643,
    config: Annotated[Path | None, typer.Option(help="a TOML settings file [default: $AIOS_HOME/config.toml]")] = None,
) -> None:
    """Serves the kernel's tools (built-in, and imported from tools.mcp) to MCP clients.

    Each call is a tool syscall of an in-process kernel. Unless database_url is set, that kernel journals into a temporary folder: it must not share a database
    with a running daemon, whose calls its boot recovery would take for its own."""
    from aios.kernel import Kernel   # loaded only when asked for: `mcp` alone costs ~0.5 s of import
    from aios.tools import builtin_tools
    from aios.tools.mcp import mcp_imports, serve_mcp

    settings = settings_from(config, {})

    def announce(url: str) -> None:
        typer.echo(f"aios mcp: serving the kernel's tools on {url}", err=True)

    async def main(db_url: str | None) -> None:
        kernel = Kernel(settings if db_url is None else settings.model_copy(update={"database_url": db_url}))
        for spec in builtin_tools(settings):
            kernel.register_tool(spec)
        async with mcp_imports(kernel, settings.tools.mcp), kernel:
            await serve_mcp(kernel, transport.value, host=host, port=port, announce=announce)
            await kernel.shutdown(drain=False)   # the client has gone: nobody waits for what is left

    if settings.database_url is not None:
        anyio.run(main, None)
        return
    with tempfile.TemporaryDirectory(prefix="aios-mcp-") as folder:
        anyio.run(main, f"sqlite:///{Path(folder) / 'aios.db'}")
