"""The typed tool registry: schemas from hints and docstrings, validation before a tool
runs, class tools, the caller's context, metadata the kernel uses (timeout, cost, slots)."""
from __future__ import annotations

from typing import Literal

import anyio
import pytest
from pydantic import BaseModel

from aios.errors import Conflict, InvalidSyscall, ToolError
from aios.kernel import Kernel
from aios.syscall import CallState
from aios.tools import ToolContext, ToolRegistry, tool
from aios.tools.registry import parse_docstring


def lookup(entity: str, field: Literal["born", "died"] = "born", limit: int = 3) -> str:
    """Looks a fact up in the encyclopedia.

    Args:
        entity: the person or place, as titled
            in the encyclopedia
        field: which fact
        limit: how many matches at most

    Returns:
        the fact, as text
    """
    return f"{entity}.{field}.{limit}"


class Point(BaseModel):
    x: float
    y: float


class Distance:
    """Euclidean distance between two points."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, a: Point, b: Point) -> float:
        self.calls += 1
        return ((a.x - b.x) ** 2 + (a.y - b.y) ** 2) ** 0.5


def test_schema_from_hints_and_google_docstring():
    spec = tool(lookup)
    assert spec.name == "lookup" and spec.description == "Looks a fact up in the encyclopedia."
    props = spec.parameters["properties"]
    assert spec.parameters["required"] == ["entity"]
    assert props["entity"] == {"type": "string", "description": "the person or place, as titled in the encyclopedia"}
    assert props["field"]["enum"] == ["born", "died"] and props["field"]["default"] == "born"
    assert props["limit"]["type"] == "integer" and props["limit"]["description"] == "how many matches at most"
    assert spec.signature() == "(entity: string, field: string = 'born', limit: integer = 3)"
    assert spec.openai_schema()["function"]["parameters"] is spec.parameters


def test_sphinx_docstring_and_no_docstring():
    summary, params = parse_docstring("Adds.\n\n:param a: the first\n:param int b: the second\n")
    assert summary == "Adds." and params == {"a": "the first", "b": "the second"}
    spec = tool(lambda x: x, name="echo")
    assert spec.description == "" and spec.parameters["properties"] == {"x": {}}


def test_bind_validates_converts_and_names_the_argument():
    spec = tool(lookup)
    assert spec.bind({"entity": "Ada", "limit": "5"}) == {"entity": "Ada", "field": "born", "limit": 5}
    cases = [({}, "arguments.entity", "field required"),
             ({"entity": "Ada", "limit": "many"}, "arguments.limit", "integer"),
             ({"entity": "Ada", "field": "wed"}, "arguments.field", "'born' or 'died'"),
             ({"entity": "Ada", "color": "red"}, "arguments.color", "unexpected argument")]
    for args, field, words in cases:
        with pytest.raises(InvalidSyscall) as err:
            spec.bind(args)
        assert err.value.field == field and words in err.value.message, err.value.message
        assert err.value.hint == "lookup" + spec.signature()
    with pytest.raises(InvalidSyscall, match="must be an object"):
        spec.bind(["Ada"])   # type: ignore[arg-type]


def test_class_tool_with_nested_models():
    spec = tool(Distance)
    assert spec.name == "Distance" and spec.description == "Euclidean distance between two points."
    assert set(spec.parameters["required"]) == {"a", "b"} and "$defs" in spec.parameters
    args = spec.bind({"a": {"x": 0, "y": 0}, "b": {"x": 3, "y": 4}})
    assert spec.fn(**args) == 5.0
    assert spec.signature() == "(a: Point, b: Point)"
    with pytest.raises(InvalidSyscall) as err:
        spec.bind({"a": {"x": 0, "y": 0}, "b": {"x": 3}})
    assert err.value.field == "arguments.b.y"


def test_bad_tool_definitions_are_refused():
    with pytest.raises(InvalidSyscall, match="lambda tool needs a name"):
        tool(lambda: 1)
    with pytest.raises(InvalidSyscall, match="bad tool name"):
        tool(lookup, name="no spaces")
    with pytest.raises(InvalidSyscall, match="not callable|must be callable"):
        tool(42)
    with pytest.raises(InvalidSyscall, match="timeout_s"):
        tool(lookup, timeout_s=0)
    registry = ToolRegistry()
    registry.add(lookup)
    with pytest.raises(Conflict):
        registry.add(lookup)
    registry.add(lookup, replace=True, timeout_s=2.0)
    assert registry["lookup"].timeout_s == 2.0 and list(registry) == ["lookup"]


@pytest.mark.anyio
async def test_kernel_runs_typed_tools_with_context_cost_and_slots(make_settings):
    seen: list[ToolContext] = []
    running = 0
    most = 0

    @tool(cost_usd=0.25, max_concurrency=2, timeout_s=5)
    async def whoami(note: str, ctx: ToolContext) -> dict:
        """Says who called."""
        nonlocal running, most
        seen.append(ctx)
        running += 1
        most = max(most, running)
        await ctx.clock.sleep(0.05)   # tool time is kernel time (virtual here)
        running -= 1
        return {"pid": ctx.pid, "principal": ctx.principal, "note": note}

    async with Kernel(make_settings()) as k:
        k.register_tool(whoami)
        k.register_tool(Distance, irreversible=True)
        listing = {t["name"]: t for t in k.tool_listing()}
        assert "ctx" not in listing["whoami"]["parameters"]["properties"]
        assert listing["whoami"]["max_concurrency"] == 2 and listing["Distance"]["irreversible"] is True
        proc = await k.spawn("caller")
        with anyio.fail_after(30):
            calls = [await k.submit({"kind": "tool", "tool": "whoami", "arguments": {"note": str(i)}},
                                    pid=proc.pid) for i in range(6)]
            done = [await c.wait() for c in calls]
            assert all(c.state is CallState.DONE for c in done)
            assert done[0].result == {"pid": proc.pid, "principal": "local", "note": "0"}
            assert all(c.usage.cost_usd == 0.25 for c in done)
            assert most == 2                                   # the tool's own concurrency limit
            assert seen[0].call_id == calls[0].id and seen[0].clock is k.clock
            assert seen[0].idempotency_key == calls[0].id   # none given: the call's id
            keyed = await k.submit({"kind": "tool", "tool": "whoami", "arguments": {"note": "k"},
                                    "idempotency_key": "order-17"})   # as a resubmission carries it again
            assert (await keyed.wait()).state is CallState.DONE and seen[-1].idempotency_key == "order-17"
            assert (await k.lookup(keyed.id)).idempotency_key == "order-17"   # journaled with the call
            for bad in ("", 17, "x" * 201):
                with pytest.raises(InvalidSyscall) as err:
                    await k.submit({"kind": "tool", "tool": "whoami", "arguments": {"note": "k"},
                                    "idempotency_key": bad})
                assert err.value.field == "idempotency_key"
            assert await k.call({"kind": "tool", "tool": "Distance",
                                 "arguments": {"a": {"x": 1, "y": 1}, "b": {"x": 1, "y": 3}}}) == 2.0
            with pytest.raises(InvalidSyscall) as err:         # refused at submit: nothing recorded
                await k.submit({"kind": "tool", "tool": "whoami", "arguments": {"note": {"no": 1}}})
            assert err.value.field == "arguments.note"
            with pytest.raises(InvalidSyscall, match="fn is missing"):
                k.register_tool("nameless")
            assert k.processes.get(proc.pid).usage.cost_usd == pytest.approx(1.5)   # metered per process


@pytest.mark.anyio
async def test_sync_tool_error_and_timeout_are_tool_errors(make_settings):
    def boom(n: int) -> int:
        """Fails."""
        raise RuntimeError(f"boom {n}")

    async def sleepy() -> None:
        await anyio.sleep(30)

    async with Kernel(make_settings()) as k:
        k.register_tool(boom)
        k.register_tool(sleepy, timeout_s=0.1)
        with anyio.fail_after(30):
            with pytest.raises(ToolError, match="RuntimeError: boom 3"):
                await k.call({"kind": "tool", "tool": "boom", "arguments": {"n": 3}})
            with pytest.raises(ToolError, match="within 0.1 s"):
                await k.call({"kind": "tool", "tool": "sleepy", "arguments": {}})
