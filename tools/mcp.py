"""MCP both ways. `mcp_imports` connects to the MCP servers the settings name and offers
their tools to agents as `server.tool`; `serve_mcp` offers the kernel's tools to any MCP
client. Built on the `mcp` package (2.x): `Client` on the importing side, the low-level
`Server` on the serving side.

Invariant: a tool crosses the boundary only as a tool syscall. An imported tool runs
when the kernel schedules its syscall (it is a ToolSpec like any other, and gets no
context: it reaches nothing of the kernel). An MCP client's tools/call becomes a tool
syscall of the serving process, made through the SDK (`aios mcp serve` spawns one, named
mcp-serve, on the running daemon or on a kernel of its own), so it is scheduled, metered,
bounded by that process's manifest, and seen in `aios ps`, the journal and the audit log.

Each imported server's session is held open by a task of its own for the lifetime of
`mcp_imports`, so a server that dies takes down only its own session: its calls then
fail with ToolError, and the rest of the kernel carries on."""
from __future__ import annotations

import json
import logging
import math
import re
import shlex
import signal
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Literal

import anyio
from anyio.abc import TaskStatus
from mcp import Client, MCPError, StdioServerParameters, types
from mcp.server import Server
from mcp.server.stdio import stdio_server
from pydantic import BaseModel, ConfigDict, Field, create_model

from aios.errors import AiosError, BackendUnavailable, ConfigError, ToolError
from aios.tools.registry import TOOL_NAME, ToolSpec

if TYPE_CHECKING:
    from aios.clock import Clock
    from aios.sdk import AsyncClient
    from aios.sdk.types import ToolInfo

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 60.0          # an imported tool's timeout_s
CONNECT_TIMEOUT_S = 20.0       # to start a server, initialize its session and list its tools
MAX_TOOL_PAGES = 100           # tools/list pages read from one server (a paginator that never ends)
DEFAULT_PORT = 8643            # `aios mcp serve --transport http`, next to the daemon's 8642
_SERVER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,31}$")

# ---- importing: MCP servers' tools as kernel tools


class _Connection:
    """One imported server's session. `client` is set while the session is open;
    `error` says why it closed, once it has."""

    def __init__(self, name: str, line: str, target: StdioServerParameters | str, clock: Clock):
        self.name, self.line, self.target = name, line, target
        self.clock = clock   # the kernel's: a call is real work, so virtual time waits for it
        self.client: Client | None = None
        self.error: str | None = None

    @property
    def is_http(self) -> bool:
        return isinstance(self.target, str)

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        """Calls the server's tool; the result converted to JSON, or ToolError. Agents read
    these errors, so they name the server but not its command line (it may hold secrets)."""
        if self.client is None:
            raise ToolError(f"MCP server {self.name!r} is gone: {self.error or 'its session is closed'}",
                            hint=f"the kernel's operator fixes tools.mcp.{self.name} and restarts it")
        try:
            with self.clock.busy():
                result = await self.client.call_tool(tool, arguments)
        except MCPError as e:
            raise ToolError(f"MCP server {self.name!r} failed the call to {tool!r}: {e.message}",
                            hint=f"the server is tools.mcp.{self.name} in the kernel's settings") from None
        if result.is_error:
            raise ToolError(f"MCP tool {self.name}.{tool} failed: {_text(result.content) or 'no message'}")
        if result.structured_content is not None:
            return result.structured_content
        return _text(result.content)


@asynccontextmanager
async def mcp_imports(kernel: Any, servers: Mapping[str, str]) -> AsyncIterator[None]:
    """Connects to each server (`name -> "command args"` or `name -> "http://host/mcp"`),
    registers its tools on the kernel as `name.tool`, holds the sessions open while the
    context lasts, then closes them and removes the tools. Enter it before the kernel,
    so recovered calls to imported tools find them.

    Raises ConfigError for a malformed line (before any server starts) and
    BackendUnavailable for a server that cannot be started or reached (and then no
    imported tool stays registered)."""
    connections = [_Connection(name, line, _target(name, line), kernel.clock) for name, line in servers.items()]
    names: list[str] = []
    stop = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            try:
                for conn in connections:
                    tools: list[types.Tool] = await tg.start(_hold, conn, stop)
                    for tool in tools:
                        spec = _spec(conn, tool)
                        if spec is not None:
                            kernel.register_tool(spec)
                            names.append(spec.name)
                    log.info("imported %d tools from MCP server %r", len(tools), conn.name)
                yield
            finally:
                stop.set()
    except BaseExceptionGroup as group:   # the task group wraps what its host raised
        sole = group.exceptions[0] if len(group.exceptions) == 1 else group
        if sole is group:
            raise
        raise sole from sole.__cause__
    finally:
        for name in names:
            kernel.tools.remove(name)


def _target(name: str, line: str) -> StdioServerParameters | str:
    if not _SERVER_NAME.match(name):
        raise ConfigError(f"bad MCP server name {name!r}: letters, digits, _ and - (32 at most)",
                          field=f"tools.mcp.{name}", hint="its tools are registered as name.tool")
    line = line.strip()
    if line.startswith(("http://", "https://")):
        return line
    try:
        argv = shlex.split(line)
    except ValueError as e:
        raise ConfigError(f"tools.mcp.{name} is not a command line: {e}", field=f"tools.mcp.{name}",
                          hint='write "command args" (stdio) or "http://host:port/mcp" (streamable HTTP)') from None
    if not argv:
        raise ConfigError(f"tools.mcp.{name} is empty", field=f"tools.mcp.{name}",
                          hint='write "command args" (stdio) or "http://host:port/mcp" (streamable HTTP)')
    return StdioServerParameters(command=argv[0], args=argv[1:])


async def _hold(conn: _Connection, stop: anyio.Event, *, task_status: TaskStatus[list[types.Tool]]) -> None:
    """Owns one session: opens it, reports the server's tools, and keeps it open until
    `stop`. A failure before that is raised (to `mcp_imports`); one after is logged and
    recorded, and the server's calls fail from then on."""
    is_started = False
    with anyio.CancelScope(deadline=anyio.current_time() + CONNECT_TIMEOUT_S) as scope:
        try:
            async with Client(conn.target, cache=None,
                              client_info=types.Implementation(name="aios", version="1")) as client:
                tools = await _list_tools(client)
                scope.deadline = math.inf
                conn.client, is_started = client, True
                task_status.started(tools)
                await stop.wait()
        except Exception as e:
            if not is_started:
                raise _unreachable(conn, _leaf(e)) from None
            conn.error = _describe(_leaf(e))
            log.error("MCP server %r stopped: %s", conn.name, conn.error)
        finally:
            conn.client = None
    if scope.cancelled_caught and not is_started:
        raise BackendUnavailable(f"MCP server {conn.name!r} did not answer within {CONNECT_TIMEOUT_S:g} s",
                                 hint=f"check that tools.mcp.{conn.name} = {conn.line!r} starts an MCP server")


async def _list_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_TOOL_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _unreachable(conn: _Connection, e: BaseException) -> BackendUnavailable:
    hint = f"check tools.mcp.{conn.name} = {conn.line!r} in the settings"
    if isinstance(e, FileNotFoundError):
        what = f"cannot start: no command {conn.target.command!r}"   # type: ignore[union-attr]
    elif isinstance(e, MCPError) and not conn.is_http:
        what = "exited before it answered"
        hint += "; run the command by hand to see its error (its stderr is in this log)"
    else:
        what = f"could not be reached: {_describe(e)}"
    return BackendUnavailable(f"MCP server {conn.name!r} {what}", hint=hint)


def _leaf(e: BaseException) -> BaseException:
    """The first error inside nested exception groups (task groups wrap what they raise)."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


def _describe(e: BaseException) -> str:
    if isinstance(e, MCPError):
        return e.message
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _text(content: Sequence[types.ContentBlock]) -> str:
    """A tool result's content as text: text as it is, other blocks described briefly."""
    parts = []
    for block in content:
        match block:
            case types.TextContent():
                parts.append(block.text)
            case types.ImageContent() | types.AudioContent():
                parts.append(f"[{block.type} {block.mime_type}, {len(block.data) * 3 // 4} bytes]")
            case types.EmbeddedResource(resource=types.TextResourceContents() as res):
                parts.append(res.text)
            case types.EmbeddedResource(resource=res):
                parts.append(f"[resource {res.uri}, {res.mime_type or 'binary'}]")
            case types.ResourceLink():
                parts.append(f"[resource link {block.uri}: {block.name}]")
    return "\n".join(parts)


# ---- the arguments model of an imported tool, from its input schema


class _McpArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")


_UNSET: Any = type("Unset", (), {"__repr__": lambda self: "unset"})()   # an optional argument not given
_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool,
                          "array": list, "object": dict, "null": type(None)}


def _spec(conn: _Connection, tool: types.Tool) -> ToolSpec | None:
    """The ToolSpec of an MCP tool: its input schema kept as it is, and a pydantic model
    of the schema's top-level properties that checks each call before it is sent."""
    name = f"{conn.name}.{tool.name}"
    if not TOOL_NAME.match(name):
        log.warning("MCP server %r: tool %r skipped: its name does not fit aios tool names "
                    "(letters, digits, _ . -, 64 at most)", conn.name, tool.name)
        return None
    schema = dict(tool.input_schema)
    properties = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    fields: dict[str, Any] = {}
    for i, (prop, prop_schema) in enumerate(properties.items()):
        annotation = _annotation(prop_schema if isinstance(prop_schema, Mapping) else {})
        if prop not in required:
            annotation = annotation | None if annotation is not Any else Any
        fields[f"p{i}"] = (annotation, Field(... if prop in required else _UNSET, alias=prop))
    model = create_model(f"{name.replace('.', '_').replace('-', '_')}_args", __base__=_McpArgs, **fields)
    aliases = {f"p{i}": prop for i, prop in enumerate(properties)}

    async def call(**kwargs: Any) -> Any:
        arguments = {aliases[k]: v for k, v in kwargs.items() if v is not _UNSET}
        return await conn.call(tool.name, arguments)

    ann = tool.annotations
    is_destructive = bool(ann and ann.destructive_hint and not ann.read_only_hint)
    return ToolSpec(name, tool.description or tool.title or "", call, model, True, timeout_s=CALL_TIMEOUT_S,
                    irreversible=is_destructive, needs_network=conn.is_http, source=f"mcp:{conn.name}",
                    schema=schema)


def _annotation(prop: Mapping[str, Any]) -> Any:
    """The Python type of a JSON schema's `type` (a union for a list of types; Literal
    for an enum); Any where the schema says no more (the server checks the rest)."""
    enum = prop.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(v, (str, int, float, bool)) for v in enum):
        return Literal[tuple(enum)]
    kinds = prop.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(kinds, list) or not kinds or any(k not in _TYPES for k in kinds):
        return Any
    annotation = _TYPES[kinds[0]]
    for kind in kinds[1:]:
        annotation = annotation | _TYPES[kind]
    return annotation


# ---- serving: the kernel's tools to MCP clients


def mcp_server(client: AsyncClient) -> Server:
    """An MCP server (the `mcp` package's low-level Server) offering the tools of the
    kernel `client` reaches, as they are registered when each request comes. Each
    tools/call is a tool syscall of the client's process, checked against its manifest;
    its result's `_meta` names the syscall (`aios/syscall_id`)."""

    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[_mcp_tool(info) for info in await client.tools.list()])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        try:
            call = await client.syscall({"kind": "tool", "tool": params.name, "arguments": params.arguments or {}})
            result = call.raise_for_error().result
        except AiosError as e:
            text = f"{e.code}: {e.message}" + (f"\nhint: {e.hint}" if e.hint else "")
            return types.CallToolResult(content=[types.TextContent(text=text)],
                                        structured_content={"error": e.to_dict()}, is_error=True)
        text = result if isinstance(result, str) else json.dumps(result)
        return types.CallToolResult(content=[types.TextContent(text=text)], meta={"aios/syscall_id": call.id},
                                    structured_content=result if isinstance(result, dict) else None)

    return Server("aios", version="1", instructions="The tools of an aios kernel; each call is a tool "
                  "syscall, scheduled and metered by the kernel.", on_list_tools=list_tools, on_call_tool=call_tool)


def _mcp_tool(info: ToolInfo) -> types.Tool:
    hints = {"destructive_hint": True} if info.irreversible else {}
    if info.needs_network:
        hints["open_world_hint"] = True
    return types.Tool(name=info.name, description=info.description, input_schema=_object_schema(info.parameters),
                      annotations=types.ToolAnnotations(**hints) if hints else None)


def _object_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """MCP requires `type: object` at an input schema's root."""
    return {"type": "object", **schema}


async def serve_mcp(client: AsyncClient, transport: Literal["stdio", "http"] = "stdio", *,
                    host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                    announce: Callable[[str], None] | None = None) -> None:
    """Serves the tools of the kernel `client` reaches over MCP, each call made as the
    client's process, until the MCP client closes stdin (stdio), or until SIGINT or
    SIGTERM. HTTP listens on loopback only (no tokens guard it) at `/mcp`; `announce`
    gets the URL once the socket listens (port 0 picks a free one)."""
    server = mcp_server(client)
    if transport == "stdio":
        async with anyio.create_task_group() as tg:
            tg.start_soon(_on_signal, tg.cancel_scope.cancel)
            async with stdio_server() as (read, write):   # fd 1 points at stderr meanwhile
                await server.run(read, write, server.create_initialization_options())
            tg.cancel_scope.cancel()
        return
    if transport != "http":
        raise ConfigError(f"unknown MCP transport {transport!r}", field="transport", hint="stdio or http")
    await _serve_http(server, host, port, announce)


async def _serve_http(server: Server, host: str, port: int, announce: Callable[[str], None] | None) -> None:
    import uvicorn

    from aios.owner import is_loopback

    if not is_loopback(host):
        raise ConfigError(f"refusing to serve MCP on {host}: it has no authentication", field="host",
                          hint="listen on 127.0.0.1 (the default)")

    class _Uvicorn(uvicorn.Server):
        @contextmanager
        def capture_signals(self) -> Any:   # serve_mcp owns the signals, so the kernel closes first
            yield

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise BackendUnavailable(f"cannot listen on {host}:{port}: {e.strerror}",
                                     hint="pick another --port") from None
        sock.listen(128)
        app = server.streamable_http_app(streamable_http_path="/mcp", host=host)
        uv = _Uvicorn(uvicorn.Config(app, log_level="warning", lifespan="on"))
        bound = sock.getsockname()[1]
        if announce is not None:
            announce(f"http://{f'[{host}]' if ':' in host else host}:{bound}/mcp")
        async with anyio.create_task_group() as tg:
            tg.start_soon(_on_signal, lambda: setattr(uv, "should_exit", True))
            await uv.serve(sockets=[sock])
            tg.cancel_scope.cancel()
    finally:
        sock.close()


async def _on_signal(stop: Callable[[], None]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop()
