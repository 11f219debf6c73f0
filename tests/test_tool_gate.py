"""Tools reach kernel resources only through checked syscalls (aios.kernel.gate): a tool's
context holds its caller's identity and a gate, never the kernel; what a tool does through
the gate is checked as `submit` checks it, audited, and bounded by the caller's manifest.
Every test runs a real kernel on SQLite, the real file tools and tools written here."""
from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import pytest
from sqlalchemy import Engine

from aios import access
from aios.config import Settings
from aios.errors import AiosError, InvalidSyscall, NotFound, PermissionDenied, QuotaExceeded
from aios.kernel import Kernel
from aios.syscall import CallState, StorageOp, StorageSyscall
from aios.tools import ToolContext, builtin_tools, tool
from aios.tools.files import file_tools

pytestmark = pytest.mark.anyio

SECRET = "s3cr3t-7f1d"
NOTES_ONLY = {"tools": ["write_file", "read_file", "list_files"],
              "storage_write": ["notes/*"], "storage_read": ["notes/*"]}


async def run(kernel: Kernel, pid: int, name: str, /, **arguments: Any) -> Any:
    with anyio.fail_after(30):
        return await kernel.call({"kind": "tool", "tool": name, "arguments": arguments}, pid=pid)


async def rows(k: Kernel, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Reads the kernel's database through its own engine (the kernel holds it exclusively)."""
    def read(engine: Engine) -> list[tuple[Any, ...]]:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql, args).fetchall()]
    return await k.db.run(read)


async def files_of(k: Kernel, pid: int) -> dict[str, str]:
    return dict(await rows(k, "SELECT path, data FROM files WHERE pid = ?", pid))


async def num_rows(k: Kernel, table: str) -> int:
    return (await rows(k, f"SELECT count(*) FROM {table}"))[0][0]


async def audit(k: Kernel, decision: str) -> list[access.AuditEntry]:
    return await k.db.run(lambda e: access.query_audit(e, decision=decision))


async def test_the_file_tools_are_bounded_by_the_callers_manifest(make_settings: Callable[..., Settings]) -> None:
    """The scenario of issue 16: tools write_file and read_file allowed, storage only under
    notes/. Before, the tools wrote and read secrets/x while the storage syscall was refused."""
    async with Kernel(make_settings()) as k:
        for spec in file_tools():
            k.register_tool(spec)
        agent = await k.spawn("notes-only", manifest=NOTES_ONLY)
        with anyio.fail_after(30):
            written = await k.submit({"kind": "tool", "tool": "write_file",
                                      "arguments": {"path": "notes/a", "content": "the plan"}}, pid=agent.pid)
            assert (await written.wait()).state is CallState.DONE
            assert (await run(k, agent.pid, "read_file", path="notes/a"))["content"] == "the plan"
            assert await run(k, agent.pid, "list_files", prefix="notes/a") == {"paths": ["notes/a"]}

            with pytest.raises(PermissionDenied, match="missing permission storage_write: secrets/x") as denied:
                await run(k, agent.pid, "write_file", path="secrets/x", content="stolen")
            assert denied.value.field == "arguments.path"
            assert await files_of(k, agent.pid) == {"notes/a": "the plan"}   # nothing stored for secrets/x

            # a file the agent may not read, put in its space by the operator
            await k.files.execute(StorageSyscall(op=StorageOp.WRITE, path="secrets/x", data="the key",
                                                 pid=agent.pid), k.clock.now())
            with pytest.raises(PermissionDenied, match="missing permission storage_read: secrets/x"):
                await run(k, agent.pid, "read_file", path="secrets/x")
            with pytest.raises(PermissionDenied, match="missing permission storage_read"):
                await run(k, agent.pid, "list_files", prefix="secrets/")
            with pytest.raises(PermissionDenied, match="missing permission storage_read"):
                await k.call({"kind": "storage", "op": "read", "path": "secrets/x"}, pid=agent.pid)   # as before

        denials = [e.detail["missing"] for e in await audit(k, "deny") if e.action == "storage.submit"]
        assert any("storage_write: secrets/x" in m for m in denials)
        assert any("storage_read: secrets/x" in m for m in denials)
        allowed = [e.detail for e in await audit(k, "allow") if e.action == "storage.submit"]
        assert {"tool_call": written.id, "tool": "write_file", "op": "write"} in allowed


def sample(schema: dict[str, Any], text: str, number: int) -> dict[str, Any]:
    """Arguments for every property of a tool's schema, each pointing at what is forbidden:
    strings name a forbidden path, integers the pid of an agent that does not share."""
    values = {"string": text, "integer": number, "number": 1.0, "boolean": False, "array": [], "object": {}}
    out: dict[str, Any] = {}
    for name, prop in schema.get("properties", {}).items():
        kinds = [p.get("type") for p in prop.get("anyOf", [prop])]
        kind = next((t for t in kinds if t in values), None)
        if kind is not None:
            out[name] = values[kind]
    return out


async def test_every_registered_tool_that_touches_storage_or_memory_is_bounded(
        make_settings: Callable[..., Settings]) -> None:
    """A walk over every tool the daemon registers (and one that reads memory): each is
    called by an agent whose manifest forbids all storage, with arguments that point at a
    forbidden path and at an agent that does not share its memory. Whether a tool touches
    storage or memory is decided by trying: its attempt is refused and audited. Whatever a
    tool does, nothing is stored and no secret comes back."""
    @tool
    async def peek(owner: int, key: str, ctx: ToolContext) -> Any:
        """Reads an entry of another agent's memory."""
        return await ctx.syscall({"kind": "memory", "op": "get", "owner": owner, "key": key})

    settings = make_settings()
    async with Kernel(settings) as k:
        for spec in [*builtin_tools(settings), peek]:
            k.register_tool(spec)
        victim = await k.spawn("victim", manifest={"memory_share": False})
        await k.call({"kind": "memory", "op": "add", "key": "secrets/x", "content": SECRET}, pid=victim.pid)
        before = {t: await num_rows(k, t) for t in ("files", "file_versions", "memory_entries")}
        touched = set()
        for name, spec in k.tools.items():
            attacker = await k.spawn(f"attacker-{name}", manifest={"storage_read": [], "storage_write": []})
            arguments = sample(spec.schema, "secrets/x", victim.pid)
            try:
                result = await run(k, attacker.pid, name, **arguments)
            except AiosError as e:
                result = e.to_dict()
            assert SECRET not in repr(result), name
            assert {t: await num_rows(k, t) for t in before} == before, f"{name} stored something"
            refusals = [e for e in await audit(k, "deny") if e.target == str(attacker.pid)]
            if refusals:
                touched.add(name)
                assert result["code"] == "permission_denied", (name, result)
                assert {e.action for e in refusals} <= {"storage.submit", "memory.submit"}, name
                assert any(p in result["message"] for p in ("storage_read", "storage_write", "memory_share")), name
        assert {"read_file", "write_file", "list_files", "peek"} <= touched   # the walk is not vacuous


async def test_a_tool_cannot_reach_another_agents_space(make_settings: Callable[..., Settings]) -> None:
    @tool
    async def reach(call: dict[str, Any], ctx: ToolContext) -> Any:
        """Makes any syscall it is given through its context."""
        return await ctx.syscall(call)

    @tool
    async def forge(victim: int, ctx: ToolContext) -> Any:
        """Writes with a syscall object that names another pid."""
        return await ctx.syscall(StorageSyscall(op=StorageOp.WRITE, path="notes/x", data="forged", pid=victim))

    async with Kernel(make_settings()) as k:
        k.register_tool(reach)
        k.register_tool(forge)
        victim = await k.spawn("victim")
        sharing = await k.spawn("sharing", manifest={"memory_share": True})
        stranger = await k.spawn("stranger", principal="mallory")
        attacker = await k.spawn("attacker")
        for owner in (victim, sharing, stranger):
            await k.call({"kind": "memory", "op": "add", "key": "k", "content": "private"}, pid=owner.pid,
                         principal=owner.principal)
        with anyio.fail_after(30):
            with pytest.raises(PermissionDenied, match="does not share its memory: missing permission memory_share"):
                await run(k, attacker.pid, "reach", call={"kind": "memory", "op": "get", "key": "k",
                                                           "owner": victim.pid})
            with pytest.raises(NotFound, match=f"no process {stranger.pid}"):   # another principal's agent
                await run(k, attacker.pid, "reach", call={"kind": "memory", "op": "search", "query": "private",
                                                           "owner": stranger.pid})
            with pytest.raises(PermissionDenied, match="read-only: delete is refused"):
                await run(k, attacker.pid, "reach", call={"kind": "memory", "op": "delete", "key": "k",
                                                           "owner": sharing.pid})
            shared = await run(k, attacker.pid, "reach", call={"kind": "memory", "op": "get", "key": "k",
                                                                "owner": sharing.pid})
            assert shared["content"] == "private"   # what it shares, it shares
            with pytest.raises(InvalidSyscall, match="climbs out"):
                await run(k, attacker.pid, "reach", call={"kind": "storage", "op": "read",
                                                           "path": f"../{victim.pid}/x"})
            await run(k, attacker.pid, "forge", victim=victim.pid)   # the pid is the caller's, whatever it says
            assert await files_of(k, attacker.pid) == {"notes/x": "forged"} and await files_of(k, victim.pid) == {}
            with pytest.raises(InvalidSyscall, match="only storage and memory syscalls on its caller.s behalf, not process") as wrong:
                await run(k, attacker.pid, "reach", call={"kind": "process", "op": "kill", "target_pid": victim.pid})
            assert wrong.value.field == "kind"
            await k.call({"kind": "storage", "op": "write", "path": "keep", "data": "x"}, pid=attacker.pid)
            with pytest.raises(PermissionDenied, match="needs a confirmation") as held:
                await run(k, attacker.pid, "reach", call={"kind": "storage", "op": "delete", "path": "keep"})
            assert "make the storage syscall directly" in (held.value.hint or "")
            assert (await files_of(k, attacker.pid))["keep"] == "x"
        missing = {e.detail["missing"] for e in await audit(k, "deny") if e.target == str(attacker.pid)}
        assert any("memory_share" in m for m in missing) and any("confirmation" in m for m in missing)
        assert any(f"no process {stranger.pid}" in m for m in missing)


async def test_a_tool_that_raises_inside_its_syscall_fails_and_stores_nothing(
        make_settings: Callable[..., Settings]) -> None:
    @tool
    async def hoard(path: str, size: int, ctx: ToolContext) -> Any:
        """Writes `size` bytes."""
        return await ctx.syscall({"kind": "storage", "op": "write", "path": path, "data": "x" * size})

    @tool
    async def binary(ctx: ToolContext) -> Any:
        """Writes bytes, which no syscall carries."""
        return await ctx.syscall(StorageSyscall(op=StorageOp.WRITE, path="b", data=b"\x00"))   # type: ignore[arg-type]

    @tool
    async def twice(ctx: ToolContext) -> Any:
        """Adds the same memory key twice."""
        await ctx.syscall({"kind": "memory", "op": "add", "key": "once", "content": "first"})
        return await ctx.syscall({"kind": "memory", "op": "add", "key": "once", "content": "second"})

    async with Kernel(make_settings(storage_quota_bytes=100)) as k:
        for spec in (hoard, binary, twice):
            k.register_tool(spec)
        agent = await k.spawn("agent")
        with anyio.fail_after(30):
            over = await k.submit({"kind": "tool", "tool": "hoard", "arguments": {"path": "big", "size": 101}},
                                  pid=agent.pid)
            call = await over.wait()
            assert call.state is CallState.FAILED and call.error["code"] == "quota_exceeded"
            with pytest.raises(QuotaExceeded, match="quota"):
                await over.result()
            with pytest.raises(InvalidSyscall, match="payload is not JSON"):
                await run(k, agent.pid, "binary")
            with pytest.raises(InvalidSyscall, match="memory key 'once' already exists"):
                await run(k, agent.pid, "twice")
        assert await files_of(k, agent.pid) == {}
        assert await rows(k, "SELECT key, content FROM memory_entries WHERE pid = ?",
                          agent.pid) == [("once", "first")]   # the first add ran; the second stored nothing


async def test_a_context_cannot_outlive_its_tool_call(make_settings: Callable[..., Settings]) -> None:
    """A tool that keeps its context (here in a list) cannot use it once its call is over;
    a sync tool reaches the gate from its worker thread, while it runs."""
    kept: list[ToolContext] = []

    @tool
    async def keep(ctx: ToolContext) -> str:
        """Keeps its context for later."""
        kept.append(ctx)
        return "kept"

    @tool
    def sync_write(path: str, ctx: ToolContext) -> Any:
        """Writes from a worker thread."""
        return anyio.from_thread.run(ctx.syscall, {"kind": "storage", "op": "write", "path": path, "data": "s"})

    async with Kernel(make_settings()) as k:
        k.register_tool(keep)
        k.register_tool(sync_write)
        agent = await k.spawn("agent")
        with anyio.fail_after(30):
            assert await run(k, agent.pid, "keep") == "kept"
            with pytest.raises(InvalidSyscall, match="is over") as over:
                await kept[0].syscall({"kind": "storage", "op": "write", "path": "late", "data": "x"})
            assert kept[0].call_id in over.value.message
            assert (await run(k, agent.pid, "sync_write", path="s"))["bytes"] == 1
        assert await files_of(k, agent.pid) == {"s": "s"}


def reaches(root: object, target: type, seen: set[int] | None = None, depth: int = 0) -> list[str]:
    """The attribute paths from `root` to an instance of `target`, following fields, slots,
    instance dicts, containers, bound methods' selves, closures and partials through aios's
    own objects (a library object is checked, not entered)."""
    seen = set() if seen is None else seen
    if isinstance(root, target):
        return ["<here>"]
    if id(root) in seen or depth > 12 or isinstance(root, (type, types.ModuleType, str, bytes, int, float)):
        return []
    seen.add(id(root))
    children: list[tuple[str, object]] = []
    if isinstance(root, dict):
        children = [(f"[{k!r}]", v) for k, v in root.items()]
    elif isinstance(root, (list, tuple, set, frozenset)):
        children = [(f"[{i}]", v) for i, v in enumerate(root)]
    elif isinstance(root, types.MethodType):
        children = [(".__self__", root.__self__), (".__func__", root.__func__)]
    elif isinstance(root, types.FunctionType):
        children = [(f".<closure {i}>", c.cell_contents) for i, c in enumerate(root.__closure__ or ())]
    elif isinstance(root, functools.partial):
        children = [(".func", root.func), (".args", root.args), (".keywords", root.keywords)]
    elif type(root).__module__.startswith("aios"):
        names = set(getattr(root, "__dict__", {}))
        for cls in type(root).__mro__:
            names |= set(getattr(cls, "__slots__", ()))
        children = [(f".{n}", getattr(root, n)) for n in sorted(names) if hasattr(root, n)]
    return [p + rest for p, child in children for rest in reaches(child, target, seen, depth + 1)]


async def test_a_tool_context_reaches_no_kernel(make_settings: Callable[..., Settings]) -> None:
    seen: list[ToolContext] = []

    @tool
    async def look(ctx: ToolContext) -> int:
        """Keeps its context for the test to inspect."""
        seen.append(ctx)
        return ctx.pid

    assert {f.name for f in dataclasses.fields(ToolContext)} == {
        "pid", "principal", "call_id", "clock", "idempotency_key", "syscall"}
    async with Kernel(make_settings()) as k:
        k.register_tool(look)
        agent = await k.spawn("agent")
        assert await run(k, agent.pid, "look") == agent.pid
        ctx = seen[0]
        assert not hasattr(ctx, "kernel")
        for f in dataclasses.fields(ctx):
            assert reaches(getattr(ctx, f.name), Kernel) == [], f.name
        assert ctx.clock is k.clock and ctx.idempotency_key == ctx.call_id
