"""aios.server over a real uvicorn server on 127.0.0.1 (port 0), driven with httpx and the
official openai client: every endpoint's happy path, every bad input with its status and
stable error code, bearer tokens and principals, slow and vanishing SSE readers, and no
500 for any body. After each refusal the server goes on serving and what it recorded
before is intact."""
from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import openai
import pytest

from aios.config import Settings
from aios.events import EventKind
from aios.kernel import Kernel
from aios.llm import Chunk, Request, Response, Resume, collect
from aios.server import create_app
from aios.server.daemon import bind
from aios.errors import NotFound
from aios.process.inproc import KernelTransport
from aios.sdk import AsyncClient
from aios.syscall import Usage
from tests.conftest import llm, serve

MODEL = "sim-llama-3-8b"
SYSCALL_MODELS = ("LLMCall", "ToolCall", "MemoryCall", "StorageCall", "ProcessCall")
POSTS = ("/v1/syscalls", "/v1/processes", "/v1/processes/{pid}/signal", "/v1/chat/completions")


@dataclass
class Served:
    kernel: Kernel
    url: str
    client: httpx.AsyncClient
    tool_entered: anyio.Event   # set when the `hang` tool starts running


def add(a: int, b: int) -> int:
    return a + b


@asynccontextmanager
async def served(settings: Settings, *, token: str | None = None, kernel: Kernel | None = None,
                 sndbuf_bytes: int | None = None) -> AsyncIterator[Served]:
    """A kernel with the tools `add` and `hang` (one slot), served on a loopback port, and a
    client for it. Calls still running at the end are cancelled (shutdown = cancel)."""
    entered = anyio.Event()

    async def hang() -> None:
        entered.set()
        await anyio.sleep_forever()

    async with AsyncExitStack() as stack:
        k = kernel if kernel is not None else await stack.enter_async_context(Kernel(settings))
        k.register_tool("add", add)
        k.register_tool("hang", hang, max_concurrency=1)
        url = await stack.enter_async_context(serve(create_app(settings, kernel=k), sndbuf_bytes=sndbuf_bytes))
        client = await stack.enter_async_context(
            # a waited memory call loads the embedding model first: seconds, more on a busy machine
            httpx.AsyncClient(base_url=url, headers=bearer(token), timeout=60))
        yield Served(k, url, client, entered)


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture
def wall(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings on a wall clock 100 times faster than real time: a simulated token takes
    0.25 ms, and shutdown cancels what is left."""
    def make(**overrides: Any) -> Settings:
        return make_settings(**{"clock.mode": "wall", "clock.speed": 100, "shutdown": "cancel", **overrides})
    return make


def check_error(r: httpx.Response, status: int, code: str, field: str | None = None) -> dict[str, Any]:
    """The one error shape: {"error": {"code", "message", "field", "hint"}}."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    assert {"field", "hint"} <= err.keys()
    if field is not None:
        assert err["field"] == field, err
    return err


async def sse(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, data) pairs of a server-sent event stream."""
    event, data = "message", []
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:"):].strip())
        elif not line and data:
            yield event, json.loads("\n".join(data))
            event, data = "message", []


async def submit(c: httpx.AsyncClient, body: dict[str, Any], *, wait: bool = False,
                 pid: int | None = None) -> dict[str, Any]:
    headers = {"X-Aios-Pid": str(pid)} if pid is not None else {}
    r = await c.post("/v1/syscalls", json=body, params={"wait": "true"} if wait else None, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


async def spawn(c: httpx.AsyncClient, name: str = "agent") -> dict[str, Any]:
    r = await c.post("/v1/processes", json={"name": name})
    assert r.status_code == 201, r.text
    return r.json()


async def signal(c: httpx.AsyncClient, pid: int, sig: str) -> dict[str, Any]:
    r = await c.post(f"/v1/processes/{pid}/signal", json={"signal": sig})
    assert r.status_code == 200, r.text
    return r.json()


async def events_until_over(c: httpx.AsyncClient, call_id: str) -> list[tuple[str, Any]]:
    with anyio.fail_after(10):
        async with c.stream("GET", f"/v1/syscalls/{call_id}/events") as r:
            assert r.status_code == 200
            return [e async for e in sse(r)]


# ---- happy paths

@pytest.mark.anyio
async def test_submit_every_kind_plain_and_waiting(wall) -> None:
    async with served(wall()) as s:
        c = s.client
        plain = await submit(c, llm("hello there", 8))
        # an LLM call runs while its record commits: by the answer it may even have ended
        assert plain["kind"] == "llm" and plain["state"] in ("queued", "running", "done")
        assert plain["principal"] == "local" and plain["payload"]["model"] == MODEL
        *_, (last, over) = await events_until_over(c, plain["id"])
        assert last == "state" and over["state"] == "done"
        got = (await c.get(f"/v1/syscalls/{plain['id']}")).json()
        assert got["state"] == "done" and got["usage"]["tokens_out"] == 8
        assert got["result"]["message"]["content"] == over["result"]["message"]["content"]

        waited = await submit(c, llm("hello there", 8), wait=True)
        assert waited["state"] == "done" and waited["finished"] >= waited["started"] >= waited["created"]
        assert waited["result"] == got["result"]   # the simulated model is deterministic

        added = await submit(c, {"kind": "memory", "op": "add", "content": "Paris is in France"}, wait=True)
        assert added["state"] == "done"
        found = await submit(c, {"kind": "memory", "op": "search", "query": "Paris"}, wait=True)
        assert found["state"] == "done" and "Paris is in France" in json.dumps(found["result"])

        wrote = await submit(c, {"kind": "storage", "op": "write", "path": "notes/a.txt", "data": "hi"}, wait=True)
        assert wrote["state"] == "done"
        read = await submit(c, {"kind": "storage", "op": "read", "path": "notes/a.txt"}, wait=True)
        assert read["state"] == "done" and "hi" in json.dumps(read["result"])

        summed = await submit(c, {"kind": "tool", "tool": "add", "arguments": {"a": 2, "b": 3}}, wait=True)
        assert (summed["state"], summed["result"]) == ("done", 5)
        bad_args = await c.post("/v1/syscalls", json={"kind": "tool", "tool": "add", "arguments": {"a": 2}})
        assert bad_args.status_code == 422   # refused before it is recorded, naming the argument
        assert bad_args.json()["error"]["field"] == "arguments.b"

        proc = await spawn(c, "lister")
        listed = await submit(c, {"kind": "process", "op": "list"}, wait=True, pid=proc["pid"])
        assert listed["state"] == "done" and listed["pid"] == proc["pid"]
        assert [p["name"] for p in listed["result"]] == ["lister"]


@pytest.mark.anyio
async def test_cancel_a_queued_and_a_running_call(wall) -> None:
    async with served(wall()) as s:
        c = s.client
        running = await submit(c, {"kind": "tool", "tool": "hang"})
        with anyio.fail_after(10):
            await s.tool_entered.wait()
        queued = await submit(c, {"kind": "tool", "tool": "hang"})   # the tool has one slot
        assert (await c.get(f"/v1/syscalls/{queued['id']}")).json()["state"] == "queued"
        assert (await c.get(f"/v1/syscalls/{running['id']}")).json()["state"] == "running"
        long_llm = await submit(c, llm("a long story", 100_000))

        for call in (queued, running, long_llm):
            r = await c.delete(f"/v1/syscalls/{call['id']}")
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "cancelled" and r.json()["error"]["code"] == "cancelled"
            assert (await c.get(f"/v1/syscalls/{call['id']}")).json()["state"] == "cancelled"

        done = await submit(c, llm("short", 4), wait=True)
        r = await c.delete(f"/v1/syscalls/{done['id']}")   # a finished call stays as it was
        assert r.status_code == 200 and r.json()["state"] == "done" and r.json()["result"] == done["result"]


@pytest.mark.anyio
async def test_sse_streams_state_changes_then_tokens_then_the_end(wall) -> None:
    async with served(wall()) as s:
        c = s.client
        proc = await spawn(c, "watched")
        await signal(c, proc["pid"], "suspend")   # its calls are held: the stream sees it start
        call = await submit(c, llm("stream me", 12), pid=proc["pid"])
        with anyio.fail_after(10):
            async with c.stream("GET", f"/v1/syscalls/{call['id']}/events") as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                async with aclosing(sse(r)) as events:
                    first = await anext(events)
                    await signal(c, proc["pid"], "resume")
                    rest = [e async for e in events]
        assert first[0] == "state" and first[1]["state"] == "queued" and first[1]["id"] == call["id"]
        kinds = [kind for kind, _ in rest]
        assert kinds == ["state"] + ["token"] * 12 + ["state"], kinds
        assert rest[0][1]["state"] == "running"
        end = rest[-1][1]
        assert end["state"] == "done"
        assert "".join(d["text"] for kind, d in rest if kind == "token") == end["result"]["message"]["content"]

        # a finished call: one terminal state event, then the end of the stream
        assert await events_until_over(c, call["id"]) == [("state", end)]


class BurstBackend:
    """Holds its call until `go` is set, then yields one token per event-loop turn."""
    name = "burst"
    models = ("burst",)
    num_slots = 1
    timeout_s = 60.0
    is_continuable = False

    def __init__(self, num_tokens: int):
        self.num_tokens = num_tokens
        self.go = anyio.Event()

    async def stream(self, request: Request, resume: Resume | None = None) -> AsyncIterator[Chunk]:
        await self.go.wait()
        for i in range(self.num_tokens):
            yield Chunk(f" w{i}", 1)
            await anyio.lowlevel.checkpoint()
        yield Chunk(finish_reason="stop", usage=Usage(1, self.num_tokens))

    async def complete(self, request: Request) -> Response:
        return await collect(self.stream(request), request.model)

    def save(self, request: Request, resume: Resume) -> None:
        return None

    def discard(self, resume: Resume) -> None:
        return None

    async def aclose(self) -> None:
        return None


@pytest.mark.anyio
async def test_sse_joining_mid_generation_sees_each_token_once(wall, monkeypatch) -> None:
    """Tokens made while the stream is being set up are sent once: in the catch-up text or
    as events, never both."""
    settings = wall()
    backend = BurstBackend(40)
    async with Kernel(settings, backends=[backend]) as k, served(settings, kernel=k) as s:
        subscribe = k.bus.subscribe

        def subscribe_then_generate(kinds: set[EventKind] | None = None, max_buffer: int = 1024) -> Any:
            sub = subscribe(kinds, max_buffer)
            if kinds and EventKind.CALL_TOKEN in kinds:
                backend.go.set()   # tokens start flowing the moment the stream subscribes
            return sub

        monkeypatch.setattr(k.bus, "subscribe", subscribe_then_generate)
        call = await submit(s.client, {**llm("go"), "model": "burst"})
        events = await events_until_over(s.client, call["id"])
        end = events[-1][1]
        assert end["state"] == "done"
        text = "".join(d["text"] for kind, d in events if kind == "token")
        assert text == end["result"]["message"]["content"] == "".join(f" w{i}" for i in range(40))


@pytest.mark.anyio
async def test_processes_spawn_list_get_and_signals(wall) -> None:
    async with served(wall()) as s:
        c = s.client
        a = await spawn(c, "alpha")
        r = await c.post("/v1/processes", json={"name": "beta", "priority": 7, "parent_pid": a["pid"]})
        assert r.status_code == 201
        b = r.json()
        assert (b["parent_pid"], b["priority"], b["state"], b["principal"]) == (a["pid"], 7, "running", "local")
        assert [p["pid"] for p in (await c.get("/v1/processes")).json()] == [a["pid"], b["pid"]]
        assert (await c.get(f"/v1/processes/{a['pid']}")).json() == a

        assert (await signal(c, a["pid"], "suspend"))["state"] == "suspended"
        assert (await c.get(f"/v1/processes/{a['pid']}")).json()["state"] == "suspended"
        assert (await signal(c, a["pid"], "resume"))["state"] == "running"

        in_flight = await submit(c, llm("long", 100_000), pid=a["pid"])
        killed = await signal(c, a["pid"], "kill")
        assert killed["state"] == "exited" and killed["exit_reason"] == "killed"
        assert (await c.get(f"/v1/syscalls/{in_flight['id']}")).json()["state"] == "cancelled"
        terminated = await signal(c, b["pid"], "terminate")
        assert terminated["exit_reason"] == "terminated"

        assert (await c.get("/v1/processes")).json() == []
        everyone = (await c.get("/v1/processes", params={"all": "true"})).json()
        assert [(p["pid"], p["state"]) for p in everyone] == [(a["pid"], "exited"), (b["pid"], "exited")]


@pytest.mark.anyio
async def test_one_visibility_rule_for_the_server_the_inproc_transport_and_the_process_syscall(wall) -> None:
    """An agent (X-Aios-Pid) sees itself and its descendants, never a sibling, however it
    asks: REST routes, kernel stats (which listed every process of the principal before),
    the in-process transport and the process syscall answer alike; the principal's own
    account sees all."""
    async with served(wall()) as s:
        c, k = s.client, s.kernel
        parent = await spawn(c, "parent")
        child = (await c.post("/v1/processes", json={"name": "child", "parent_pid": parent["pid"]})).json()
        sibling = await spawn(c, "sibling")
        as_parent = {"X-Aios-Pid": str(parent["pid"])}
        mine = {parent["pid"], child["pid"]}

        assert {p["pid"] for p in (await c.get("/v1/processes", headers=as_parent)).json()} == mine
        stats = (await c.get("/v1/kernel/stats", headers=as_parent)).json()
        assert {p["pid"] for p in stats["processes"]} == mine
        check_error(await c.get(f"/v1/processes/{sibling['pid']}", headers=as_parent), 404, "not_found", "pid")
        theirs = await submit(c, llm("theirs"), pid=sibling["pid"])
        check_error(await c.get(f"/v1/syscalls/{theirs['id']}", headers=as_parent), 404, "not_found", "id")
        assert {p["pid"] for p in (await c.get("/v1/kernel/stats")).json()["processes"]} == mine | {sibling["pid"]}

        agent = AsyncClient(transport=KernelTransport(k, pid=parent["pid"]))
        assert {p.pid for p in await agent.processes.list()} == mine
        with pytest.raises(NotFound):
            await agent.processes.get(sibling["pid"])
        listed = await k.call({"kind": "process", "op": "list"}, pid=parent["pid"])
        assert {p["pid"] for p in listed} == mine
        with pytest.raises(NotFound) as err:
            await k.call({"kind": "process", "op": "status", "target_pid": sibling["pid"]}, pid=parent["pid"])
        assert err.value.field == "target_pid"


@pytest.mark.anyio
async def test_list_syscalls_with_filters_and_pages(wall) -> None:
    """GET /v1/syscalls (it answered 405): the caller's calls newest first, by process,
    state and time, a page at a time; an agent sees its own and its descendants' only; a
    bad filter is a 422 naming it, a process it may not see a 404."""
    async with served(wall()) as s:
        c = s.client
        a, b = await spawn(c, "a"), await spawn(c, "b")
        made = [await submit(c, llm(f"n{i}"), wait=True, pid=pid) for i, pid in enumerate([a["pid"]] * 3 + [b["pid"]])]
        failed = await submit(c, {"kind": "storage", "op": "read", "path": "nothing-here"}, wait=True, pid=b["pid"])
        newest_first = [failed["id"], *(m["id"] for m in reversed(made))]

        first = (await c.get("/v1/syscalls", params={"limit": 2})).json()
        assert [x["id"] for x in first["data"]] == newest_first[:2] and first["next"] == newest_first[1]
        rest = (await c.get("/v1/syscalls", params={"limit": 10, "before": first["next"]})).json()
        assert [x["id"] for x in rest["data"]] == newest_first[2:] and rest["next"] is None
        of_a = (await c.get("/v1/syscalls", params={"pid": a["pid"]})).json()["data"]
        assert [x["id"] for x in of_a] == [m["id"] for m in reversed(made[:3])]
        assert [x["id"] for x in (await c.get("/v1/syscalls", params={"state": "failed"})).json()["data"]] == [
            failed["id"]]
        assert (await c.get("/v1/syscalls", params={"since": made[-1]["created"]})).json()["data"][-1]["id"] == made[-1]["id"]

        as_a = {"X-Aios-Pid": str(a["pid"])}
        assert {x["pid"] for x in (await c.get("/v1/syscalls", headers=as_a)).json()["data"]} == {a["pid"]}
        check_error(await c.get("/v1/syscalls", params={"pid": b["pid"]}, headers=as_a), 404, "not_found", "pid")
        r = await c.get("/v1/syscalls", params={"state": "finished"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_syscall"
        r = await c.get("/v1/syscalls", params={"limit": 0})
        assert r.status_code == 422


@pytest.mark.anyio
async def test_models_tools_healthz(wall) -> None:
    async with served(wall()) as s:
        c = s.client
        models = (await c.get("/v1/models")).json()
        assert models["object"] == "list"
        assert {m["id"] for m in models["data"]} == {"sim-llama-3-8b", "sim-mistral-7b"}
        assert all(m["object"] == "model" and m["owned_by"] == "hw" for m in models["data"])
        tools = (await c.get("/v1/tools")).json()["tools"]
        assert {t["name"]: t["max_concurrency"] for t in tools} == {"add": 16, "hang": 1}
        add = next(t for t in tools if t["name"] == "add")
        assert add["parameters"]["required"] == ["a", "b"] and add["parameters"]["properties"]["a"]["type"] == "integer"
        health = (await c.get("/healthz")).json()
        assert health == {"status": "ok", "models": ["sim-llama-3-8b", "sim-mistral-7b"], "num_in_flight": 0}


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format, checked: each sample's family is typed before it, and
    each value is a number. Returns {'name{labels}': value}."""
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = m.group(1)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or types.get(base) == "histogram", f"{name} has no # TYPE before it"
        samples[name + (m.group(2) or "")] = float(m.group(3))
    return samples


@pytest.mark.anyio
async def test_metrics_move_after_calls_and_parse(wall) -> None:
    async with served(wall()) as s:
        c = s.client
        r = await c.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        before = parse_metrics(r.text)
        proc = await spawn(c, 'odd "name"\nwith a newline')
        for _ in range(3):
            await submit(c, llm("count me", 5), wait=True, pid=proc["pid"])
        await submit(c, {"kind": "tool", "tool": "add", "arguments": {"a": 1, "b": 1}}, wait=True)
        after = parse_metrics((await c.get("/metrics")).text)

        done_llm = 'aios_syscalls_total{kind="llm",state="done"}'
        assert after[done_llm] - before.get(done_llm, 0) == 3
        assert after['aios_syscalls_total{kind="tool",state="done"}'] == 1
        assert after['aios_tokens_total{direction="out"}'] - before['aios_tokens_total{direction="out"}'] == 15
        assert after['aios_syscall_latency_seconds_count{kind="llm"}'] == 3
        assert after['aios_syscall_latency_seconds_bucket{kind="llm",le="+Inf"}'] == 3
        assert after["aios_syscalls_in_flight"] == 0
        labels = f'pid="{proc["pid"]}",name="odd \\"name\\"\\nwith a newline",principal="local"'
        assert after[f'aios_process_tokens_total{{{labels},direction="out"}}'] == 15
        assert after[f'aios_slots{{resource="llm:{MODEL}"}}'] == 8


@pytest.mark.anyio
async def test_openapi_has_every_path_and_the_syscall_schemas(wall) -> None:
    async with served(wall()) as s:
        spec = (await s.client.get("/openapi.json")).json()
    paths = spec["paths"]
    expected = {
        "/v1/syscalls": {"post"}, "/v1/syscalls/{call_id}": {"get", "delete"},
        "/v1/syscalls/{call_id}/events": {"get"}, "/v1/processes": {"post", "get"},
        "/v1/processes/{pid}": {"get"}, "/v1/processes/{pid}/signal": {"post"}, "/v1/models": {"get"},
        "/v1/tools": {"get"}, "/v1/chat/completions": {"post"}, "/healthz": {"get"}, "/metrics": {"get"},
        "/v1/kernel/stop": {"post"},
    }
    for path, methods in expected.items():
        assert methods <= paths[path].keys(), path
    schemas = spec["components"]["schemas"]
    body = paths["/v1/syscalls"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [ref["$ref"] for ref in body["oneOf"]] == [f"#/components/schemas/{m}" for m in SYSCALL_MODELS]
    for model in SYSCALL_MODELS:
        assert schemas[model]["properties"]["kind"]["const"] == model.removesuffix("Call").lower()
    for path in ("/v1/processes", "/v1/processes/{pid}/signal"):
        assert paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    # every reference in the document resolves
    for ref in re.findall(r'"\$ref": ?"#/components/schemas/([^"]+)"', json.dumps(spec)):
        assert ref in schemas, ref


@pytest.mark.anyio
async def test_kernel_stop_stops_the_server(wall) -> None:
    settings = wall()
    app = create_app(settings)   # it boots and owns its kernel, as the daemon does
    async with serve(app) as url, httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/healthz")).json()["status"] == "ok"
        r = await c.post("/v1/kernel/stop", json={"drain": False})
        assert r.status_code == 202 and r.json() == {"stopping": True, "drain": False}
    assert app.state.kernel.is_accepting is False


@pytest.mark.anyio
async def test_the_daemon_socket_sends_without_waiting_for_acks(wall) -> None:
    """The daemon's listening socket gives connections with TCP_NODELAY; without it every
    response waited ~40 ms for a delayed ACK."""
    app = create_app(wall())
    async with serve(app, sock=bind("127.0.0.1", 0)) as url, httpx.AsyncClient(base_url=url) as c:
        assert (await c.get("/healthz")).status_code == 200   # the connection stays open
        [connection] = app.state.server.server_state.connections
        conn_sock = connection.transport.get_extra_info("socket")
        assert conn_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# ---- bad input

@pytest.mark.anyio
async def test_bad_input_gets_its_status_and_code_and_nothing_is_lost(wall) -> None:
    async with served(wall()) as s:
        c = s.client
        kept = await submit(c, llm("keep me", 6), wait=True)
        proc = await spawn(c, "kept")
        gone = await spawn(c, "gone")
        await signal(c, gone["pid"], "kill")

        for path in ("/v1/syscalls", "/v1/processes", f"/v1/processes/{proc['pid']}/signal",
                     "/v1/chat/completions"):
            for raw in (b"{not json", b"", b'{"a": 1,}', b"\xff\xfe"):
                check_error(await c.post(path, content=raw, headers={"content-type": "application/json"}),
                            400, "malformed_request")

        bad_syscalls = [
            ({"kind": "teleport"}, "kind"),
            ({"model": MODEL}, "kind"),
            ({"kind": "llm", "messages": [{"role": "user", "content": "x"}]}, "model"),
            ({"kind": "llm", "model": MODEL}, "messages"),
            ({**llm(), "messages": "hi"}, "messages"),
            ({**llm(), "max_tokens": "8"}, "max_tokens"),
            ({**llm(), "max_tokens": 0}, "max_tokens"),
            ({**llm(), "messages": [{"content": "no role"}]}, "messages[0].role"),
            ({**llm(), "bogus": 1}, "bogus"),
            ({**llm(), "priority": "high"}, "priority"),
            ({**llm(), "priority": 1000}, "priority"),
            ({**llm(), "timeout_s": -1}, "timeout_s"),
            ({"kind": "memory", "op": "explode"}, "op"),
            ({"kind": "memory", "op": "add"}, "content"),
            ({"kind": "storage", "op": "write", "path": "a"}, "data"),
            ({"kind": "tool", "tool": "add", "arguments": [1, 2]}, "arguments"),
            ({"kind": "process", "op": "kill"}, "target_pid"),
        ]
        for body, field in bad_syscalls:
            check_error(await c.post("/v1/syscalls", json=body), 422, "invalid_syscall", field)
        check_error(await c.post("/v1/syscalls", json=[llm()]), 422, "invalid_syscall")
        check_error(await c.post("/v1/syscalls", json={**llm(), "model": "gpt-17"}), 404, "not_found", "model")
        check_error(await c.post("/v1/syscalls", json={"kind": "tool", "tool": "nope"}), 404, "not_found", "tool")

        for body, field in (({}, "name"), ({"name": 5}, "name"), ({"name": ""}, "name"),
                            ({"name": "x", "priority": 500}, "priority"), ({"name": "x", "parent_pid": "one"},
                                                                            "parent_pid")):
            check_error(await c.post("/v1/processes", json=body), 422, "invalid_syscall", field)
        check_error(await c.post("/v1/processes", json={"name": "x", "parent_pid": 999}), 404, "not_found", "pid")
        check_error(await c.post(f"/v1/processes/{proc['pid']}/signal", json={"signal": "explode"}),
                    422, "invalid_syscall", "signal")
        check_error(await c.post(f"/v1/processes/{proc['pid']}/signal", json={}), 422, "invalid_syscall", "signal")
        check_error(await c.post("/v1/chat/completions", json={"model": MODEL}), 422, "invalid_syscall", "messages")
        check_error(await c.post("/v1/chat/completions", json={"model": MODEL, "messages": [], "frobnicate": 1}),
                    422, "invalid_syscall", "frobnicate")
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        check_error(await c.post("/v1/chat/completions", json={**chat, "stream": True, "stream_options": "yes"}),
                    422, "invalid_syscall", "stream_options")
        check_error(await c.post("/v1/chat/completions", json={**chat, "stream": "yes"}),
                    422, "invalid_syscall", "stream")

        for method, path in (("GET", "/v1/syscalls/nope"), ("DELETE", "/v1/syscalls/nope"),
                             ("GET", "/v1/syscalls/nope/events")):
            check_error(await c.request(method, path), 404, "not_found", "id")
        check_error(await c.get("/v1/processes/424242"), 404, "not_found", "pid")
        check_error(await c.post("/v1/processes/424242/signal", json={"signal": "kill"}), 404, "not_found", "pid")
        check_error(await c.get("/v1/processes/abc"), 422, "invalid_syscall", "pid")
        check_error(await c.get("/v1/nowhere"), 404, "not_found")
        check_error(await c.put("/v1/syscalls"), 405, "method_not_allowed")

        err = check_error(await c.post(f"/v1/processes/{gone['pid']}/signal", json={"signal": "resume"}),
                          409, "conflict", "pid")
        assert "exited" in err["message"]
        check_error(await c.post("/v1/syscalls", json=llm(), headers={"X-Aios-Pid": str(gone["pid"])}),
                    409, "conflict", "pid")

        for raw in ("abc", "-1", "1.5", "", "1 2"):
            check_error(await c.post("/v1/syscalls", json=llm(), headers={"X-Aios-Pid": raw}),
                        400, "malformed_request", "X-Aios-Pid")
        check_error(await c.post("/v1/syscalls", json=llm(), headers={"X-Aios-Pid": b"\xb2"}),
                    400, "malformed_request", "X-Aios-Pid")   # '²' is a digit to str.isdigit
        check_error(await c.post("/v1/chat/completions", json={"model": MODEL, "messages": []},
                                 headers={"X-Aios-Pid": "x"}), 400, "malformed_request", "X-Aios-Pid")
        check_error(await c.post("/v1/syscalls", json=llm(), headers={"X-Aios-Pid": "424242"}),
                    404, "not_found", "pid")

        # still serving, and what was recorded before is intact
        assert (await c.get(f"/v1/syscalls/{kept['id']}")).json() == kept
        assert (await c.get(f"/v1/processes/{proc['pid']}")).json() == proc
        assert (await submit(c, llm("keep me", 6), wait=True))["result"] == kept["result"]
        assert (await c.get("/healthz")).json()["status"] == "ok"


@pytest.mark.anyio
async def test_bodies_over_the_limit_get_413(wall) -> None:
    async with served(wall(**{"server.max_body_bytes": 2000})) as s:
        c = s.client
        proc = await spawn(c, "small")
        big = {"name": "p", "pad": "x" * 3000}

        async def chunked() -> AsyncIterator[bytes]:   # no Content-Length: counted as it comes
            yield b'{"name": "p", "pad": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        for path in POSTS:
            path = path.format(pid=proc["pid"])
            err = check_error(await c.post(path, json=big), 413, "payload_too_large")
            assert "2000" in err["message"] and err["hint"]
            check_error(await c.post(path, content=chunked()), 413, "payload_too_large")
        small = await submit(c, llm("fits", 4), wait=True)
        assert small["state"] == "done"
        assert (await c.get(f"/v1/processes/{proc['pid']}")).json()["state"] == "running"


@pytest.mark.anyio
async def test_tokens_name_principals_who_see_only_their_own(wall) -> None:
    settings = wall(**{"server.tokens": {"tok-alice": "alice", "tok-bob": "bob"}})
    async with served(settings, token="tok-alice") as s:
        alice = s.client
        async with httpx.AsyncClient(base_url=s.url, headers=bearer("tok-bob"), timeout=10) as bob, \
                httpx.AsyncClient(base_url=s.url, timeout=10) as anon:
            call = await submit(alice, llm("alice's secret", 6), wait=True)
            assert call["principal"] == "alice"
            proc = await spawn(alice, "alice's agent")
            assert proc["principal"] == "alice"

            requests = [("POST", "/v1/syscalls", llm()), ("GET", f"/v1/syscalls/{call['id']}", None),
                        ("DELETE", f"/v1/syscalls/{call['id']}", None),
                        ("GET", f"/v1/syscalls/{call['id']}/events", None), ("POST", "/v1/processes", {"name": "x"}),
                        ("GET", "/v1/processes", None), ("GET", f"/v1/processes/{proc['pid']}", None),
                        ("POST", f"/v1/processes/{proc['pid']}/signal", {"signal": "kill"}),
                        ("GET", "/v1/models", None), ("GET", "/v1/tools", None),
                        ("POST", "/v1/chat/completions", {"model": MODEL, "messages": []}),
                        ("POST", "/v1/kernel/stop", {})]
            for headers in ({}, bearer("tok-mallory"), {"Authorization": "Basic dG9rLWFsaWNl"},
                            {"Authorization": "Bearer"}):
                for method, path, body in requests:
                    r = await anon.request(method, path, json=body, headers=headers)
                    check_error(r, 401, "unauthorized")
                    assert r.headers["www-authenticate"] == "Bearer"
            # no body is read before the caller is known
            check_error(await anon.post("/v1/processes", content=b"{not json"), 401, "unauthorized")

            for method, path in (("GET", f"/v1/syscalls/{call['id']}"), ("DELETE", f"/v1/syscalls/{call['id']}"),
                                 ("GET", f"/v1/syscalls/{call['id']}/events")):
                check_error(await bob.request(method, path), 404, "not_found", "id")
            check_error(await bob.get(f"/v1/processes/{proc['pid']}"), 404, "not_found", "pid")
            check_error(await bob.post(f"/v1/processes/{proc['pid']}/signal", json={"signal": "kill"}),
                        404, "not_found", "pid")
            check_error(await bob.post("/v1/processes", json={"name": "child", "parent_pid": proc["pid"]}),
                        404, "not_found", "pid")
            check_error(await bob.post("/v1/syscalls", json=llm(), headers={"X-Aios-Pid": str(proc["pid"])}),
                        404, "not_found", "pid")
            assert (await bob.get("/v1/processes", params={"all": "true"})).json() == []
            peek = await submit(bob, {"kind": "process", "op": "status", "target_pid": proc["pid"]}, wait=True)
            assert peek["state"] == "failed" and peek["error"]["code"] == "not_found"
            bobs = await submit(bob, llm("bob's", 3), wait=True)
            assert bobs["principal"] == "bob"
            check_error(await alice.get(f"/v1/syscalls/{bobs['id']}"), 404, "not_found")

            assert (await alice.get(f"/v1/syscalls/{call['id']}")).json() == call
            assert (await alice.get(f"/v1/processes/{proc['pid']}")).json()["state"] == "running"
            assert (await anon.get("/healthz")).status_code == 200

            async with openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="tok-bob", max_retries=0) as oc:
                reply = await oc.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                         max_tokens=3)
                assert reply.usage is not None and reply.usage.completion_tokens == 3
            async with openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="wrong", max_retries=0) as oc:
                with pytest.raises(openai.AuthenticationError) as e:
                    await oc.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
                assert "token" in str(e.value)


# ---- readers that are slow or leave

@pytest.mark.anyio
async def test_a_slow_sse_reader_stalls_nothing_and_still_gets_the_end(wall) -> None:
    """A reader that does not read fills its socket, then its bounded subscription; the
    kernel and every other request go on, and when it reads again it is told it lagged
    and gets the terminal state."""
    settings = wall(backends=[{"kind": "hardware", "engine": "fixed", "decode_s_per_token": 0.0, "ttft_base_s": 0.0}])
    async with served(settings, sndbuf_bytes=16384) as s:
        c = s.client
        proc = await spawn(c, "chatty")
        await signal(c, proc["pid"], "suspend")
        call = await submit(c, llm("talk a lot", 6000), pid=proc["pid"])
        transport = httpx.AsyncHTTPTransport(socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)])
        async with httpx.AsyncClient(base_url=s.url, transport=transport, timeout=10) as slow:
            with anyio.fail_after(20):
                async with slow.stream("GET", f"/v1/syscalls/{call['id']}/events") as r:
                    assert r.status_code == 200
                    await signal(c, proc["pid"], "resume")
                    # while it does not read: the call runs to its end and others are served
                    other = await submit(c, llm("meanwhile", 5), wait=True)
                    assert other["state"] == "done"
                    assert (await c.get("/healthz")).json()["status"] == "ok"
                    ticket = s.kernel.tickets.get(call["id"])
                    if ticket is not None:
                        await ticket.done.wait()
                    events = [e async for e in sse(r)]
        assert events[0][0] == "state"
        assert events[-1][0] == "state" and events[-1][1]["state"] == "done"
        assert events[-1][1]["usage"]["tokens_out"] == 6000
        lagged = [d for kind, d in events if kind == "lagged"]
        assert lagged and lagged[0]["num_dropped"] > 0
        assert (await c.get(f"/v1/syscalls/{call['id']}")).json()["state"] == "done"


@pytest.mark.anyio
async def test_readers_that_disconnect_mid_stream_break_nothing(wall) -> None:
    async with served(wall()) as s:
        c = s.client
        call = await submit(c, llm("a long story", 100_000))
        with anyio.fail_after(10):
            async with c.stream("GET", f"/v1/syscalls/{call['id']}/events") as r, aclosing(sse(r)) as events:
                kinds = [(await anext(events))[0] for _ in range(3)]
        assert kinds[0] == "state" and "token" in kinds

        async with openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0) as oc:
            stream = await oc.chat.completions.create(model=MODEL, max_tokens=100_000, stream=True,
                                                      messages=[{"role": "user", "content": "go on"}])
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    break
            await stream.close()

        # the server goes on, and the calls those readers left go on too
        assert (await submit(c, llm("after", 4), wait=True))["state"] == "done"
        assert (await c.get(f"/v1/syscalls/{call['id']}")).json()["state"] == "running"
        r = await c.delete(f"/v1/syscalls/{call['id']}")
        assert r.json()["state"] == "cancelled"
        assert (await c.get("/healthz")).json()["status"] == "ok"


# ---- no 500, whatever the body

ODD_BODIES: list[bytes] = [
    b"null", b"[]", b'"x"', b"1", b"1.5", b"true", b"{}", b'{"kind": null}', b'{"kind": ["llm"]}',
    b'{"kind": {"a": 1}}', b'{"kind": "llm", "model": null, "messages": null}',
    b'{"kind": "llm", "model": "sim-llama-3-8b", "messages": [null]}',
    b'{"kind": "llm", "model": "sim-llama-3-8b", "messages": [{"role": 1}]}',
    b'{"kind": "llm", "model": "sim-llama-3-8b", "messages": [{"role": "user", "content": {"a": [1]}}]}',
    b'{"kind": "llm", "model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "x"}], "tools": [1]}',
    b'{"kind": "llm", "model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
    b'{"kind": "memory", "op": "list", "timeout_s": Infinity}',
    b'{"kind": "memory", "op": "list", "timeout_s": 1e999}',
    b'{"kind": "memory", "op": "list", "priority": ' + b"9" * 5000 + b"}",
    b'{"kind": "memory", "op": "list", "priority": 1e300}',
    b'{"kind": "memory", "op": "search", "query": "x", "k": 100000000000000000000000000000}',
    b'{"kind": "memory", "op": "search", "query": "x", "k": -1}',
    b'{"kind": "memory", "op": "add", "content": "\\ud800"}',
    b'{"kind": "storage", "op": "write", "path": "\\udfff", "data": "x"}',
    b'{"kind": "tool", "tool": {"x": 1}}', b'{"kind": "tool", "tool": "add", "arguments": {"a": "1", "b": []}}',
    b'{"kind": "process", "op": "status", "target_pid": 100000000000000000000000000000}',
    b'{"kind": "process", "op": "status", "target_pid": -1}',
    b'{"name": "\\ud800"}', b'{"name": ["x"]}', b'{"name": "x", "parent_pid": 1e999}',
    b'{"name": "x", "priority": 100000000000000000000000000000}',
    b'{"signal": null}', b'{"signal": ["kill"]}',
    b'{"model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "x"}], "n": "2"}',
    b'{"model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "x"}], "stop": 5}',
    (b'{"model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "x"}], "stream": true, '
     b'"stream_options": "x"}'),
    (b'{"model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "x"}], "stream": "yes", '
     b'"stream_options": [1]}'),
    b'{"model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}',
    b'{"model": ["a"], "messages": {"role": "user"}}',
    b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"NaN", b"Infinity", b"-Infinity", b'"NaN"', b"\x00", b"{\"kind\": \"llm\"" + b"\x00" * 10 + b"}",
]


@pytest.mark.anyio
async def test_no_body_gets_a_500(wall) -> None:
    async with served(wall()) as s:
        c = s.client
        proc = await spawn(c, "target")
        kept = await submit(c, llm("kept", 4), wait=True)
        statuses: dict[int, int] = {}
        for path in (*POSTS, "/v1/syscalls?wait=true"):
            path = path.format(pid=proc["pid"])
            for body in ODD_BODIES:
                r = await c.post(path, content=body, headers={"content-type": "application/json"})
                assert r.status_code < 500, (path, body[:80], r.status_code, r.text)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code >= 400:
                    assert r.json()["error"]["code"] and r.json()["error"]["message"]
        for path in ("/v1/syscalls/%00", "/v1/syscalls/%ED%A0%80", "/v1/syscalls/x/events",
                     "/v1/processes/-1", "/v1/processes/99999999999999999999999999", "/v1/processes/1e3"):
            assert (await c.get(path)).status_code < 500, path
        assert statuses.keys() <= {201, 400, 404, 409, 422}
        assert (await c.get(f"/v1/syscalls/{kept['id']}")).json() == kept
        assert (await c.get(f"/v1/processes/{proc['pid']}")).json()["state"] == "running"


# ---- the OpenAI-compatible endpoint, through the official client

@pytest.fixture
def replies(tmp_path: Path) -> Path:
    path = tmp_path / "replies.jsonl"
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
    path.write_text(json.dumps({"match": "weather", "reply": "", "tool_calls": [call]}) + "\n")
    return path


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.mark.anyio
async def test_openai_client_chats_streams_and_calls_tools(wall, replies: Path) -> None:
    settings = wall(backends=[{"kind": "hardware", "replies_file": str(replies)}])
    async with served(settings) as s, \
            openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0) as oc:
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me a story"}]
        reply = await oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=16)
        assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == MODEL
        choice = reply.choices[0]
        # the scripted story uses all 16 tokens it may: it ends for "length", as OpenAI says it
        assert choice.finish_reason == "length" and choice.message.role == "assistant"
        assert choice.message.content and choice.message.tool_calls is None
        assert reply.usage is not None and reply.usage.completion_tokens == 16
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + 16 and reply.usage.prompt_tokens > 0
        call_id = reply.id.removeprefix("chatcmpl-")
        assert (await s.client.get(f"/v1/syscalls/{call_id}")).json()["state"] == "done"

        stream = await oc.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, stream=True,
                                                  stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text == choice.message.content
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16

        ask = [{"role": "user", "content": "what is the weather in Paris?"}]
        reply = await oc.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER_TOOL],
                                                 tool_choice="auto")
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None and not choice.message.content
        tool_call = choice.message.tool_calls[0]
        assert (tool_call.id, tool_call.type, tool_call.function.name) == ("call_1", "function", "get_weather")
        assert json.loads(tool_call.function.arguments) == {"city": "Paris"}

        stream = await oc.chat.completions.create(model=MODEL, messages=ask, tools=[WEATHER_TOOL], stream=True)
        names, arguments, finish = [], "", None
        async for chunk in stream:
            delta = chunk.choices[0].delta
            for tc in delta.tool_calls or []:
                if tc.function and tc.function.name:
                    names.append(tc.function.name)
                arguments += (tc.function.arguments or "") if tc.function else ""
            finish = chunk.choices[0].finish_reason or finish
        assert names == ["get_weather"] and json.loads(arguments) == {"city": "Paris"} and finish == "tool_calls"

        with pytest.raises(openai.NotFoundError) as e:
            await oc.chat.completions.create(model="gpt-17", messages=ask)
        assert "gpt-17" in str(e.value)
        with pytest.raises(openai.UnprocessableEntityError):
            await oc.chat.completions.create(model=MODEL, messages=ask, n=2)


@pytest.mark.anyio
async def test_the_sync_openai_client_in_a_thread(wall) -> None:
    async with served(wall()) as s:
        def chat() -> str | None:
            with openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0) as oc:
                reply = oc.chat.completions.create(model=MODEL, max_tokens=5,
                                                   messages=[{"role": "user", "content": "hi"}])
                return reply.choices[0].message.content
        text = await anyio.to_thread.run_sync(chat)
        plain = await submit(s.client, {**llm("hi", 5)}, wait=True)
        assert text == plain["result"]["message"]["content"]
