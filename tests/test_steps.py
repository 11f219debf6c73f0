"""An agent's steps over REST: POST /v1/processes/{pid}/steps by the process itself, and
GET /v1/processes/{pid}/events (server-sent events: `step`, with stream=all `state` of
its calls, last `process`), each event's data as /openapi.json describes it; refusals
with their statuses; the trace file that outlives the process and the kernel."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import httpx
import jsonschema
import pytest

import aios.process.steps as steps_module
from aios.config import load_settings
from aios.kernel import Kernel
from aios.process.steps import read
from aios.sdk._http import SSEDecoder
from aios.server import create_app
from tests.conftest import llm, serve


def settings_in(home: Path):
    return load_settings(env={}, overrides={"home": str(home), "clock.mode": "wall", "clock.speed": 50.0})


async def sse(c: httpx.AsyncClient, path: str, **params: Any) -> list[tuple[str, Any]]:
    events = []
    async with c.stream("GET", path, params=params, headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200, await r.aread()
        decoder = SSEDecoder()
        async for line in r.aiter_lines():
            if (event := decoder.feed(line)) is not None:
                events.append(event)
    return events


def validator(spec: dict[str, Any], name: str) -> jsonschema.Validator:
    """A validator of the component `name` of the OpenAPI document, references resolved."""
    return jsonschema.Draft202012Validator({**spec["components"]["schemas"][name], "components": spec["components"]})


@pytest.mark.anyio
async def test_steps_and_call_states_stream_to_followers_as_the_openapi_document_says(tmp_path):
    settings = settings_in(tmp_path)
    async with Kernel(settings) as k, serve(create_app(settings, kernel=k)) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as c:
        spec = (await c.get("/openapi.json")).json()
        pid = (await c.post("/v1/processes", json={"name": "agent"})).json()["pid"]
        me = {"X-Aios-Pid": str(pid)}
        made = await c.post(f"/v1/processes/{pid}/steps", json={"kind": "plan", "text": "1. ask"}, headers=me)
        assert made.status_code == 201 and made.json()["seq"] == 0
        got: list[tuple[str, Any]] = []

        async def follow() -> None:
            got.extend(await sse(c, f"/v1/processes/{pid}/events", stream="all"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            with anyio.fail_after(20):
                await anyio.sleep(0.2)
                call = await c.post("/v1/syscalls", params={"wait": "true"}, json=llm("hi", 4), headers=me)
                assert call.json()["state"] == "done"
                await c.post(f"/v1/processes/{pid}/steps", json={"kind": "answer", "text": "hello",
                                                                 "data": {"n": 1}}, headers=me)
                await c.post(f"/v1/processes/{pid}/signal", json={"signal": "kill"})
        names = [name for name, _ in got]
        assert names[0] == "step" and names[-1] == "process" and "state" in names
        assert [d["text"] for n, d in got if n == "step"] == ["1. ask", "hello"]
        states = [d["state"] for n, d in got if n == "state"]
        assert states[-1] == "done" and "running" in states
        assert got[-1][1]["state"] == "exited"
        check = {"step": validator(spec, "StepOut"), "state": validator(spec, "StateChangeOut"),
                 "process": validator(spec, "ProcessOut")}
        for name, data in got:
            check[name].validate(data)
        # steps only, and not following: what it reported so far, then its record
        again = await sse(c, f"/v1/processes/{pid}/events", follow="false")
        assert [n for n, _ in again] == ["step", "step", "process"]


@pytest.mark.anyio
async def test_who_may_report_a_step_and_what_a_step_may_be(tmp_path, monkeypatch):
    settings = settings_in(tmp_path)
    async with Kernel(settings) as k, serve(create_app(settings, kernel=k)) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as c:
        a = (await c.post("/v1/processes", json={"name": "a"})).json()["pid"]
        b = (await c.post("/v1/processes", json={"name": "b"})).json()["pid"]

        async def post(pid: int, body: Any, as_pid: int | None) -> httpx.Response:
            headers = {"X-Aios-Pid": str(as_pid)} if as_pid is not None else {}
            return await c.post(f"/v1/processes/{pid}/steps", json=body, headers=headers)

        step = {"kind": "note", "text": "x"}
        for as_pid in (None, b):   # the account, another process
            refused = await post(a, step, as_pid)
            assert refused.status_code == 403 and refused.json()["error"]["field"] == "X-Aios-Pid"
        assert (await post(999, step, 999)).status_code == 404
        for body, field in (({"kind": "Plan!", "text": "x"}, "kind"), ({"kind": "note"}, "text"),
                            ({"kind": "note", "text": "x", "data": [1]}, "data"),
                            ({"kind": "note", "text": "x", "data": {"big": "z" * 70000}}, "data")):
            bad = await post(a, body, a)
            assert bad.status_code == 422 and bad.json()["error"]["field"] == field, bad.json()
        monkeypatch.setattr(steps_module, "MAX_STEPS", 2)
        assert [(await post(a, step, a)).status_code for _ in range(3)] == [201, 201, 429]
        await c.post(f"/v1/processes/{a}/signal", json={"signal": "kill"})
        late = await post(a, step, a)
        assert late.status_code == 409 and "exited" in late.json()["error"]["message"]
        assert [s.seq for s in read(k.lifecycle.steps.path(a))] == [0, 1]   # nothing refused was kept


@pytest.mark.anyio
async def test_the_trace_outlives_the_process_and_the_kernel(tmp_path):
    settings = settings_in(tmp_path)
    async with Kernel(settings) as k:
        proc = await k.spawn("agent")
        for i in range(3):
            k.lifecycle.step(proc.pid, "thought", f"thought {i}", {"i": i})
    with open(tmp_path / "logs" / f"proc-{proc.pid}.trace.jsonl", "a") as f:
        f.write('{"seq": 3, "at": 1.0, "ki')   # torn by a crash mid-line: left out
    async with Kernel(settings) as k:
        kept = k.lifecycle.steps.since(proc.pid)
        assert [(s.seq, s.text, s.data) for s in kept] == [(i, f"thought {i}", {"i": i}) for i in range(3)]
        assert (await k.collect(0)).num_logs == 1
        assert k.lifecycle.steps.since(proc.pid) == []


@pytest.mark.anyio
async def test_an_agent_that_spent_its_steps_and_then_raised_still_exits_and_says_why(tmp_path, monkeypatch):
    """The error step of a failed in-process agent cannot be kept (its steps are spent): it
    exits all the same, for the reason it failed."""
    settings = settings_in(tmp_path)
    agent = tmp_path / "chatty.py"
    agent.write_text("async def main(task, os):\n    await os.step('note', 'one')\n    raise ValueError('no more')\n")
    monkeypatch.setattr(steps_module, "MAX_STEPS", 1)
    async with Kernel(settings) as k:
        proc = await k.spawn("chatty", program=str(agent))
        with anyio.fail_after(20):
            done = await k.wait(proc.pid)
        assert (done.exit_code, done.exit_reason) == (1, "failed: ValueError: no more")
        assert [s.text for s in k.lifecycle.steps.since(proc.pid)] == ["one"]


@pytest.mark.anyio
async def test_a_trace_that_cannot_be_written_is_a_503_not_a_crash(tmp_path):
    settings = settings_in(tmp_path)
    async with Kernel(settings) as k, serve(create_app(settings, kernel=k)) as url, \
            httpx.AsyncClient(base_url=url, timeout=30) as c:
        pid = (await c.post("/v1/processes", json={"name": "a"})).json()["pid"]
        k.lifecycle.steps.path(pid).mkdir(parents=True)   # a folder where its trace file would be
        refused = await c.post(f"/v1/processes/{pid}/steps", json={"kind": "note", "text": "x"},
                               headers={"X-Aios-Pid": str(pid)})
        assert refused.status_code == 503 and "cannot write the trace" in refused.json()["error"]["message"]
        assert k.lifecycle.steps.since(pid) == []
