"""aios.sdk both ways: every test body runs against a real uvicorn server on 127.0.0.1 and
in-process against the same kind of kernel, and must see the same results and errors.
The simulated model is deterministic, so a stream joins to chat()'s text."""
from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn

from aios.clock import WallClock
from aios.config import Settings
from aios.events import EventKind
from aios.kernel import Kernel, build_backends
from aios.llm import Chunk, Request, Response, Resume, collect
from aios.sdk import (AiosError, AsyncClient, BackendUnavailable, CallState, Cancelled, ChatResult, Client, Conflict,
                      ConfigError, DeadlineExceeded, InvalidSyscall, MemoryEntry, NotFound, ProcState, Step,
                      SyscallInfo, ToolError, Unauthorized, connect, connect_async)
from aios.sdk._core import TextStream
from aios.process.inproc import KernelTransport, ThreadKernelTransport
from aios.server import create_app
from aios.syscall import Usage
from aios.tools import ToolContext

TOOL_CALL = {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}


class _Server(uvicorn.Server):
    """uvicorn, with an event for "listening" instead of a flag to poll."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.is_listening = anyio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.is_listening.set()


@asynccontextmanager
async def serving(settings: Settings, k: Kernel) -> AsyncIterator[str]:
    """The REST endpoint over `k` on a free loopback port; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(create_app(settings, kernel=k), log_level="warning"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        with anyio.fail_after(10):
            await server.is_listening.wait()
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
    sock.close()


@pytest.fixture
def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Callable[..., Settings]:
    """Wall clock at 100x, so simulated calls end quickly; a canned tool-call reply."""
    replies = tmp_path / "replies.jsonl"
    replies.write_text(json.dumps({"match": "weather", "reply": "", "tool_calls": [TOOL_CALL]}) + "\n")

    def make(**overrides: Any) -> Settings:
        return make_settings(**{"clock.mode": "wall", "clock.speed": 100,
                                "backends": [{"kind": "hardware", "replies_file": str(replies)}], **overrides})
    return make


class Turnstile:
    """A backend whose model "turnstile" produces one token per permit the test sends, so a
    test knows exactly which tokens exist when it reads a stream."""
    name = "turnstile"
    models = ("turnstile",)
    num_slots = 4
    timeout_s = 60.0
    is_continuable = False

    def __init__(self) -> None:
        self.permits, self._permits_out = anyio.create_memory_object_stream[None](16)

    async def stream(self, request: Request, resume: Resume | None = None) -> AsyncIterator[Chunk]:
        for i in range(3):
            await self._permits_out.receive()
            yield Chunk(f" t{i}" if i else "t0", 1)
        yield Chunk(finish_reason="stop", usage=Usage(request.num_prompt_tokens or 0, 3))

    async def complete(self, request: Request) -> Response:
        return await collect(self.stream(request), request.model)

    async def aclose(self) -> None:
        self.permits.close()
        self._permits_out.close()


@pytest.fixture
async def kernel(settings: Callable[..., Settings]) -> AsyncIterator[Kernel]:
    s = settings()
    clock = WallClock(s.clock.speed)
    async with Kernel(s, clock=clock, backends=[*build_backends(s, clock), Turnstile()]) as k:
        k.register_tool("add", lambda a, b: a + b)
        k.register_tool("crash", lambda: 1 / 0)
        k.register_tool(idempotency_key_of)
        yield k


def idempotency_key_of(ctx: ToolContext) -> str:
    """Returns the idempotency key its context carries."""
    return ctx.idempotency_key


@pytest.fixture(params=["http", "inproc"])
async def endpoint(request: pytest.FixtureRequest, kernel: Kernel) -> AsyncIterator[Callable[..., dict[str, Any]]]:
    """How a client reaches `kernel`: a maker of the keyword arguments for Client
    (blocking=True) or AsyncClient, for the principal's account or a process (pid=)."""
    if request.param == "inproc":
        yield lambda pid=None, blocking=False: {
            "transport": (ThreadKernelTransport if blocking else KernelTransport)(kernel, pid=pid)}
        return
    async with serving(kernel.settings, kernel) as url:
        yield lambda pid=None, blocking=False: {"url": url, "pid": pid}


@pytest.fixture
async def make_client(endpoint: Callable[..., dict[str, Any]]) -> AsyncIterator[Callable[..., AsyncClient]]:
    async with AsyncExitStack() as stack:
        def make(pid: int | None = None) -> AsyncClient:
            client = AsyncClient(**endpoint(pid))
            stack.push_async_callback(client.aclose)
            return client
        yield make


@pytest.fixture
def client(make_client: Callable[..., AsyncClient]) -> AsyncClient:
    return make_client()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- llm

@pytest.mark.anyio
async def test_chat_defaults_to_the_first_model_and_returns_a_typed_result(client: AsyncClient, kernel: Kernel):
    models = await client.models()
    assert models == kernel.router.models and models
    reply = await client.llm.chat("hello there", max_tokens=6)
    assert isinstance(reply, ChatResult)
    assert reply.model == models[0] and reply.finish_reason == "length" and reply.tool_calls == []
    assert reply.text.strip() and reply.usage.tokens_out == 6 and reply.usage.tokens_in > 0
    call = await kernel.lookup(reply.call_id)
    assert call.state is CallState.DONE and call.result["message"]["content"] == reply.text


@pytest.mark.anyio
async def test_chat_reads_tool_calls(client: AsyncClient):
    reply = await client.llm.chat([{"role": "user", "content": "what is the weather in Paris?"}],
                                  model="sim-mistral-7b",
                                  tools=[{"type": "function", "function": {"name": "get_weather"}}])
    assert reply.finish_reason == "tool_calls" and reply.model == "sim-mistral-7b"
    [tool_call] = reply.tool_calls
    assert (tool_call.id, tool_call.name) == ("call_1", "get_weather")
    assert tool_call.parse_arguments() == {"city": "Paris"}


@pytest.mark.anyio
async def test_stream_joins_to_the_chat_text(client: AsyncClient):
    pieces = [p async for p in client.llm.stream("tell me a story", max_tokens=12)]
    reply = await client.llm.chat("tell me a story", max_tokens=12)
    assert "".join(pieces) == reply.text and reply.usage.tokens_out == 12


@pytest.mark.anyio
async def test_stream_yields_each_piece_as_it_is_generated(client: AsyncClient, kernel: Kernel):
    turnstile = kernel.router.route("turnstile")
    pieces = []
    with anyio.fail_after(10):
        stream = client.llm.stream("one token at a time", model="turnstile")
        for _ in range(3):
            await turnstile.permits.send(None)   # one more token exists, and no other
            pieces.append(await anext(stream))
        assert [p async for p in stream] == []
    assert pieces == ["t0", " t1", " t2"]


@pytest.mark.anyio
async def test_stream_raises_the_calls_error_at_the_end(client: AsyncClient):
    with pytest.raises(DeadlineExceeded) as err:   # the deadline passes before the prefill is over
        async for _ in client.llm.stream("too slow", max_tokens=50, timeout_s=0.001):
            pass
    assert err.value.code == "deadline_exceeded" and err.value.hint


@pytest.mark.anyio
async def test_stream_raises_cancelled_when_its_process_is_killed(make_client: Callable[..., AsyncClient],
                                                                  kernel: Kernel):
    admin = make_client()
    proc = await admin.processes.spawn("doomed")
    await admin.processes.suspend(proc.pid)   # its calls are held, so they cannot finish first
    agent = make_client(pid=proc.pid)
    pieces: list[str] = []
    errors: list[AiosError] = []

    async def read() -> None:
        try:
            async for piece in agent.llm.stream("hi", max_tokens=8):
                pieces.append(piece)
        except AiosError as e:
            errors.append(e)

    with kernel.bus.subscribe({EventKind.CALL_STATE}) as sub, anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            async for event in sub:   # the stream's call is queued (and held)
                if event.pid == proc.pid and event.data["state"] == "queued":
                    break
            await admin.processes.kill(proc.pid)
    assert pieces == []
    [error] = errors
    assert isinstance(error, Cancelled) and f"process {proc.pid} was killed" in error.message


@pytest.mark.anyio
async def test_cancel_a_queued_call(make_client: Callable[..., AsyncClient]):
    admin = make_client()
    proc = await admin.processes.spawn("held")
    await admin.processes.suspend(proc.pid)
    agent = make_client(pid=proc.pid)
    info = await agent.syscall({"kind": "tool", "tool": "add", "arguments": {"a": 1, "b": 1}}, wait=False)
    assert info.state is CallState.QUEUED and info.pid == proc.pid and info.result is None
    cancelled = await agent.cancel(info.id)
    assert cancelled.state is CallState.CANCELLED and isinstance(cancelled.error, Cancelled)
    with pytest.raises(Cancelled):
        cancelled.raise_for_error()
    again = await agent.cancel(info.id)   # already over: returned as it ended
    assert again.state is CallState.CANCELLED and again.finished == cancelled.finished


# ---- tools, memory, storage

@pytest.mark.anyio
async def test_tools(client: AsyncClient):
    assert await client.tools.call("add", a=2, b=3) == 5
    assert {t.name for t in await client.tools.list()} == {"add", "crash", "idempotency_key_of"}
    assert await client.tools.call("idempotency_key_of", idempotency_key="order-17") == "order-17"
    assert len(await client.tools.call("idempotency_key_of")) == 32   # none given: the call's id
    with pytest.raises(NotFound) as err:
        await client.tools.call("nope")
    assert err.value.field == "tool" and "add" in err.value.hint
    with pytest.raises(ToolError, match="ZeroDivisionError"):
        await client.tools.call("crash")
    with pytest.raises(InvalidSyscall) as bad:
        await client.tools.call("add", a=1)
    assert bad.value.field == "arguments.b" and "add(a: any, b: any)" in bad.value.hint


@pytest.mark.anyio
async def test_memory(client: AsyncClient):
    key = await client.memory.add("the cat sleeps on the mat")
    await client.memory.add("dogs bark at night", key="dogs")
    assert await client.memory.get("dogs") == MemoryEntry("dogs", "dogs bark at night")
    assert [e.key for e in await client.memory.list()] == [key, "dogs"]
    [best] = await client.memory.search("where does the cat sleep", k=1)
    assert best.key == key and best.score and 0.3 < best.score <= 1   # cosine similarity
    stats = await client.memory.stats()
    assert stats["policy"] == "lru" and set(stats["resident"]) == {key, "dogs"} and stats["faults"] == 2
    assert await client.memory.delete("dogs") is None
    with pytest.raises(NotFound) as err:
        await client.memory.get("dogs")
    assert err.value.field == "key"
    with pytest.raises(InvalidSyscall) as dup:
        await client.memory.add("again", key=key)
    assert dup.value.field == "key"


@pytest.mark.anyio
async def test_storage(client: AsyncClient):
    assert await client.storage.write("notes/a.txt", "héllo") == len("héllo".encode())
    await client.storage.write("notes/b.txt", "b")
    await client.storage.write("other.txt", "o")
    assert await client.storage.read("notes/a.txt") == "héllo"
    assert await client.storage.list("notes/") == ["notes/a.txt", "notes/b.txt"]
    assert await client.storage.list() == ["notes/a.txt", "notes/b.txt", "other.txt"]
    await client.storage.delete("notes/a.txt")
    with pytest.raises(NotFound) as err:
        await client.storage.read("notes/a.txt")
    assert err.value.field == "path"
    with pytest.raises(InvalidSyscall) as bad:
        await client.storage.write("/etc/passwd", "x")
    assert bad.value.field == "path" and bad.value.hint


# ---- processes

@pytest.mark.anyio
async def test_processes(client: AsyncClient):
    proc = await client.processes.spawn("worker", priority=5)
    assert (proc.name, proc.priority, proc.state, proc.parent_pid) == ("worker", 5, ProcState.RUNNING, None)
    assert await client.processes.get(proc.pid) == proc
    assert proc.pid in [p.pid for p in await client.processes.list()]
    assert (await client.processes.suspend(proc.pid)).state is ProcState.SUSPENDED
    assert (await client.processes.resume(proc.pid)).state is ProcState.RUNNING
    killed = await client.processes.kill(proc.pid)
    assert killed.state is ProcState.EXITED and killed.exit_reason == "killed"
    assert proc.pid not in [p.pid for p in await client.processes.list()]
    assert proc.pid in [p.pid for p in await client.processes.list(include_exited=True)]
    with pytest.raises(NotFound) as err:
        await client.processes.get(999)
    assert err.value.field == "pid"


@pytest.mark.anyio
async def test_history_pages_through_the_calls_a_client_may_see(make_client: Callable[..., AsyncClient]):
    """The SDK's history verb: what GET /v1/syscalls answers, over HTTP and in-process alike."""
    admin = make_client()
    a, b = await admin.processes.spawn("a"), await admin.processes.spawn("b")
    as_a = make_client(pid=a.pid)
    for i in range(3):
        await as_a.storage.write(f"n{i}", "x")
    await make_client(pid=b.pid).storage.write("other", "y")
    await admin.processes.kill(a.pid)   # an exited process's calls stay listed
    first = await admin.history(pid=a.pid, limit=2)
    assert [c.pid for c in first] == [a.pid, a.pid] and first[0].id > first[1].id   # newest first
    rest = await admin.history(pid=a.pid, before=first[-1].id, limit=2)
    assert len(rest) == 1 and rest[0].id < first[-1].id
    assert {c.pid for c in await admin.history(state="done")} >= {a.pid, b.pid}
    assert await admin.history(state=CallState.FAILED) == []
    # an agent sees its own calls only
    assert {c.pid for c in await make_client(pid=b.pid).history()} == {b.pid}
    with pytest.raises(NotFound):
        await make_client(pid=b.pid).history(pid=a.pid)
    with pytest.raises(InvalidSyscall) as bad:
        await admin.history(state="finished")
    assert bad.value.field == "state" and "done" in (bad.value.hint or "")
    with pytest.raises(InvalidSyscall) as bad:
        await admin.history(limit=0)
    assert bad.value.field == "limit"


@pytest.mark.anyio
async def test_an_agent_reports_steps_that_followers_see_as_they_come(make_client: Callable[..., AsyncClient]):
    """Client.step and processes.steps, over HTTP and in-process alike: numbered in order,
    followed live until the process exits, kept after; only the process itself reports."""
    admin = make_client()
    proc = await admin.processes.spawn("stepper")
    agent = make_client(pid=proc.pid)
    first = await agent.step("plan", "1. search('x')", idx=1)
    assert (first.seq, first.kind, first.text, first.data) == (0, "plan", "1. search('x')", {"idx": 1})
    seen: list[Step] = []

    async def follow() -> None:
        async for step in admin.processes.steps(proc.pid, follow=True):
            seen.append(step)

    async with anyio.create_task_group() as tg:
        tg.start_soon(follow)
        with anyio.fail_after(10):
            while not seen:   # what came before it opened, first
                await anyio.sleep(0.01)
            await agent.step("action", "search('x')")
            while len(seen) < 2:   # then each as it comes
                await anyio.sleep(0.01)
            await admin.processes.kill(proc.pid)   # the stream ends with the process
    assert [(s.seq, s.kind) for s in seen] == [(0, "plan"), (1, "action")]
    assert [s.text async for s in admin.processes.steps(proc.pid)] == ["1. search('x')", "search('x')"]
    with pytest.raises(Conflict):   # an exited process says no more
        await agent.step("note", "late")
    with pytest.raises(InvalidSyscall) as bad:   # the account is no process
        await admin.step("note", "x")
    assert bad.value.field == "pid"
    other = await admin.processes.spawn("other")
    with pytest.raises(InvalidSyscall) as bad:
        await make_client(pid=other.pid).step("Not A Kind", "x")
    assert bad.value.field == "kind"
    long = await make_client(pid=other.pid).step("observation", "y" * 20000)
    assert len(long.text) == 16384 and long.data == {"cut": 20000 - 16384}


@pytest.mark.anyio
async def test_signalling_an_exited_process_fails_alike(client: AsyncClient, endpoint: Callable[..., Any],
                                                        request: pytest.FixtureRequest):
    proc = await client.processes.spawn("once")
    await client.processes.kill(proc.pid)
    with pytest.raises(Conflict) as err:
        await client.processes.kill(proc.pid)
    assert err.value.field == "pid"


@pytest.mark.anyio
async def test_spawn_refuses_an_empty_name_alike(client: AsyncClient, endpoint: Callable[..., Any],
                                                 request: pytest.FixtureRequest):
    with pytest.raises(InvalidSyscall) as err:
        await client.processes.spawn("")
    assert err.value.field == "name"


@pytest.mark.anyio
async def test_a_client_bound_to_a_pid_is_charged_and_isolated(make_client: Callable[..., AsyncClient]):
    admin = make_client()
    proc = await admin.processes.spawn("agent")
    agent = make_client(pid=proc.pid)
    reply = await agent.llm.chat("count my tokens", max_tokens=4)
    info = await admin.processes.get(proc.pid)
    assert info.usage.tokens_out == 4 and info.usage.tokens_in == reply.usage.tokens_in
    await agent.memory.add("mine", key="k")
    assert [e.key for e in await agent.memory.list()] == ["k"]
    assert await admin.memory.list() == []   # memory is per process
    child = await agent.processes.spawn("child")
    assert child.parent_pid == proc.pid


AGENTS = {
    "async_agent.py": """
from aios.sdk import AsyncClient

async def main(task: str, os: AsyncClient) -> str:
    reply = await os.llm.chat(task, max_tokens=3)
    await os.storage.write("answer.txt", reply.text)
    return "async:" + await os.storage.read("answer.txt")
""",
    "sync_agent.py": """
from aios.sdk import Client

def main(task: str, os: Client) -> str:
    reply = os.llm.chat(task, max_tokens=3)
    assert "".join(os.llm.stream(task, max_tokens=3)) == reply.text
    os.memory.add(reply.text, key="answer")
    return "sync:" + os.memory.get("answer").content
""",
}


@pytest.mark.anyio
@pytest.mark.parametrize("program", sorted(AGENTS))
async def test_an_agent_program_runs_on_its_client(client: AsyncClient, kernel: Kernel, tmp_path: Path,
                                                   program: str):
    path = tmp_path / program
    path.write_text(AGENTS[program])
    proc = await client.processes.spawn("agent", program=str(path), task="say three words")
    assert (proc.program, proc.runner) == (str(path), "inproc")
    with anyio.fail_after(10):
        await kernel.supervisor.wait(proc.pid)
    done = await client.processes.get(proc.pid)
    assert (done.state, done.exit_code, done.exit_reason) == (ProcState.EXITED, 0, "exited")
    assert done.usage.tokens_out >= 3   # its calls were charged to it
    output = kernel.supervisor.log_path(proc.pid).read_text().strip()
    assert output.startswith(program.split("_")[0] + ":") and len(output.split(":", 1)[1].split()) == 3


MODEL_AGENTS = {
    "async": """
from aios.sdk import AsyncClient

async def main(task: str, os: AsyncClient) -> str:
    return (await os.llm.chat(task, max_tokens=2)).model
""",
    "sync": """
from aios.sdk import Client

def main(task: str, os: Client) -> str:
    return os.llm.chat(task, max_tokens=2).model
""",
}


@pytest.mark.anyio
@pytest.mark.parametrize("kind", sorted(MODEL_AGENTS))
async def test_an_agent_runs_on_the_model_it_was_spawned_with(client: AsyncClient, kernel: Kernel, tmp_path: Path,
                                                              kind: str):
    """spawn(model=...) (aios run --model): the agent's LLM calls that name no model use
    it, not the first the kernel serves; a model the kernel does not serve is refused at
    spawn, naming those it does."""
    path = tmp_path / f"{kind}_model_agent.py"
    path.write_text(MODEL_AGENTS[kind])
    served = await client.models()
    assert len(served) >= 2 and served[0] != served[1]
    for model, expected in ((served[1], served[1]), (None, served[0])):
        proc = await client.processes.spawn("model-agent", program=str(path), task="hi", model=model)
        with anyio.fail_after(10):
            await kernel.supervisor.wait(proc.pid)
        assert kernel.supervisor.log_path(proc.pid).read_text().strip() == expected
    with pytest.raises(NotFound) as err:
        await client.processes.spawn("model-agent", program=str(path), task="hi", model="no-such-model")
    assert served[0] in err.value.message + (err.value.hint or "")


# ---- errors

@pytest.mark.anyio
async def test_errors_are_the_kernels_classes(client: AsyncClient):
    with pytest.raises(NotFound) as err:
        await client.llm.chat("hi", model="gpt-nope")
    assert err.value.field == "model" and "sim-llama-3-8b" in err.value.hint
    with pytest.raises(InvalidSyscall) as err:
        await client.llm.chat("hi", priority=1000)
    assert err.value.field == "priority"
    with pytest.raises(InvalidSyscall) as err:
        await client.processes.spawn("bad", priority=-1)
    assert err.value.field == "priority"
    with pytest.raises(InvalidSyscall) as err:
        await client.syscall({"kind": "teleport"})
    assert err.value.field == "kind" and "llm" in err.value.hint
    with pytest.raises(NotFound):
        await client.cancel("0" * 32)


@pytest.mark.anyio
async def test_a_failed_call_is_returned_by_syscall_and_raised_by_verbs(client: AsyncClient):
    info = await client.syscall({"kind": "memory", "op": "get", "key": "absent"})
    assert isinstance(info, SyscallInfo)
    assert info.state is CallState.FAILED and isinstance(info.error, NotFound) and info.error.field == "key"
    assert info.payload["key"] == "absent" and info.is_terminal
    with pytest.raises(NotFound):
        info.raise_for_error()


@pytest.mark.anyio
async def test_no_kernel_answers() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with AsyncClient(url) as client:
        with pytest.raises(BackendUnavailable) as err:
            await client.llm.chat("anyone?")
    assert err.value.message == f"no aios kernel answers at {url}"
    assert err.value.hint == "start it with `aios kernel start`"

    def blocking() -> BackendUnavailable:
        with Client(url) as sync_client, pytest.raises(BackendUnavailable) as sync_err:
            sync_client.memory.list()
        return sync_err.value
    assert (await anyio.to_thread.run_sync(blocking)).hint == "start it with `aios kernel start`"


@pytest.mark.anyio
async def test_urls_and_transports_must_agree(kernel: Kernel):
    with pytest.raises(ConfigError) as err:
        AsyncClient("inproc://")
    assert err.value.field == "url" and "KernelTransport" in (err.value.hint or "")
    with pytest.raises(ConfigError) as err:
        AsyncClient("ftp://example.com")
    assert err.value.field == "url"
    with pytest.raises(ConfigError) as err:
        AsyncClient("http://127.0.0.1:1", transport=KernelTransport(kernel))
    assert err.value.field == "transport"
    with pytest.raises(ConfigError) as err:
        AsyncClient(transport=KernelTransport(kernel, pid=-1))
    assert err.value.field == "pid"
    client = AsyncClient(transport=KernelTransport(kernel, pid=None))
    assert client.url == "inproc://" and client.pid is None


# ---- the blocking client

def blocking_session(client: Client) -> dict[str, Any]:
    """What a sync agent does; runs in a worker thread."""
    with client:
        reply = client.llm.chat("hello from a thread", max_tokens=5)
        pieces = list(client.llm.stream("hello from a thread", max_tokens=5))
        client.storage.write("a.txt", "A")
        proc = client.processes.spawn("sync-child")
        with pytest.raises(NotFound) as err:
            client.llm.chat("hi", model="gpt-nope")
        return {"reply": reply, "pieces": pieces, "file": client.storage.read("a.txt"),
                "proc": client.processes.get(proc.pid), "error": err.value, "sum": client.tools.call("add", a=1, b=2)}


@pytest.mark.anyio
async def test_blocking_client(endpoint: Callable[..., dict[str, Any]]):
    out = await anyio.to_thread.run_sync(blocking_session, Client(**endpoint(blocking=True)))
    assert out["reply"].usage.tokens_out == 5 and "".join(out["pieces"]) == out["reply"].text
    assert out["file"] == "A" and out["sum"] == 3
    assert out["proc"].name == "sync-child" and out["proc"].state is ProcState.RUNNING
    assert out["error"].field == "model"


# ---- connect() from the environment

@pytest.mark.anyio
async def test_connect_reads_url_token_and_pid(settings: Callable[..., Settings],
                                              monkeypatch: pytest.MonkeyPatch):
    s = settings(**{"server.tokens": {"sekret": "alice"}})
    async with Kernel(s) as k, serving(s, k) as url:
        proc = await k.spawn("agent", principal="alice")
        monkeypatch.setenv("AIOS_URL", url)
        monkeypatch.setenv("AIOS_TOKEN", "sekret")
        monkeypatch.setenv("AIOS_PID", str(proc.pid))
        async with connect_async() as client:
            assert client.pid == proc.pid
            await client.llm.chat("who pays?", max_tokens=3)
            await client.memory.add("alice's note", key="n")
        assert k.processes.procs[proc.pid].usage.tokens_out == 3   # charged to AIOS_PID
        with connect() as sync_client:
            entries = await anyio.to_thread.run_sync(sync_client.memory.list)
        assert entries == [MemoryEntry("n", "alice's note")]   # same pid, same memory

        monkeypatch.setenv("AIOS_TOKEN", "wrong")
        async with connect_async() as client:
            with pytest.raises(Unauthorized) as err:
                await client.models()
        assert err.value.code == "unauthorized" and err.value.hint.startswith("check AIOS_TOKEN")

        monkeypatch.delenv("AIOS_TOKEN")
        async with connect_async() as client:
            with pytest.raises(Unauthorized) as err:
                await client.models()
        assert "Authorization: Bearer" in err.value.hint

        monkeypatch.setenv("AIOS_PID", "seven")
        with pytest.raises(ConfigError) as bad:
            connect_async()
        assert bad.value.field == "AIOS_PID"


@pytest.mark.anyio
async def test_connect_defaults(monkeypatch: pytest.MonkeyPatch):
    for name in ("AIOS_URL", "AIOS_TOKEN", "AIOS_PID"):
        monkeypatch.delenv(name, raising=False)
    async with connect_async() as client:
        assert (client.url, client.pid) == ("http://127.0.0.1:8642", None)


# ---- the sans-I/O stream reader

def final_state(text: str, state: str = "done", error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "c1", "kind": "llm", "pid": 0, "principal": "local", "state": state, "priority": 0,
            "deadline": None, "created": 0.0, "started": 0.0, "finished": 1.0, "num_preemptions": 0,
            "usage": {"tokens_in": 1, "tokens_out": 2, "cost_usd": 0.0, "service_s": 1.0}, "payload": {},
            "result": None if error else {"message": {"role": "assistant", "content": text},
                                          "finish_reason": "stop", "model": "m",
                                          "usage": {"prompt_tokens": 1, "completion_tokens": 2, "cost_usd": 0.0}},
            "error": error}


def test_stream_reader_fills_in_what_the_events_missed():
    over_before = TextStream("c1")   # the call ended before the stream opened: no tokens
    assert over_before.feed("state", final_state("a b c")) == ""
    assert over_before.finish() == "a b c"

    lagged = TextStream("c1")
    assert [lagged.feed("token", {"text": t}) for t in ("a", " b")] == ["a", " b"]
    lagged.feed("lagged", {"num_dropped": 3})
    assert lagged.feed("token", {"text": " d"}) == ""   # after a gap, the rest comes from the result
    lagged.feed("state", {"id": "c1", "state": "running", "at": 0.5})
    lagged.feed("state", final_state("a b c d"))
    assert lagged.finish() == " c d"

    failed = TextStream("c1")
    failed.feed("state", final_state("", "failed", {"code": "backend_error", "message": "no", "hint": None,
                                                    "field": None}))
    with pytest.raises(AiosError) as err:
        failed.finish()
    assert err.value.code == "backend_error"

    cut = TextStream("c1")
    cut.feed("token", {"text": "a"})
    with pytest.raises(BackendUnavailable):
        cut.finish()
