"""Isolation between agents, endpoint by endpoint: a principal sees only its own processes
and calls; an agent process (X-Aios-Pid) sees only itself and its descendants, and its
memory and files are its own. Every other id, guessed or known, does not exist for it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from aios.config import Settings
from aios.kernel import Kernel
from aios.server import create_app
from tests.conftest import serve

TOKENS = {"tok-alice": "alice", "tok-bob": "bob"}


def who(token: str, pid: int | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if pid is not None:
        headers["X-Aios-Pid"] = str(pid)
    return headers


async def call(c: httpx.AsyncClient, headers: dict[str, str], body: dict[str, Any]) -> httpx.Response:
    return await c.post("/v1/syscalls", params={"wait": "true"}, json=body, headers=headers)


@pytest.mark.anyio
async def test_every_endpoint_keeps_agents_and_principals_apart(make_settings: Callable[..., Settings]):
    settings = make_settings(**{"clock.mode": "wall", "server.tokens": TOKENS})
    async with Kernel(settings) as k:
        async with serve(create_app(settings, kernel=k)) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            async def spawn(token: str, name: str, parent: int | None = None) -> int:
                r = await c.post("/v1/processes", json={"name": name, "parent_pid": parent},
                                 headers=who(token, parent))
                assert r.status_code == 201, r.text
                return r.json()["pid"]

            a1 = await spawn("tok-alice", "a1")
            a2 = await spawn("tok-alice", "a2")
            c1 = await spawn("tok-alice", "c1", parent=a1)
            b1 = await spawn("tok-bob", "b1")
            # each agent leaves a memory, a file and a finished call behind
            ids = {}
            for pid, token in ((a1, "tok-alice"), (c1, "tok-alice"), (b1, "tok-bob")):
                h = who(token, pid)
                assert (await call(c, h, {"kind": "memory", "op": "add", "key": "secret", "content": f"of {pid}"})
                        ).status_code == 201
                assert (await call(c, h, {"kind": "storage", "op": "write", "path": "notes", "data": f"of {pid}"})
                        ).status_code == 201
                r = await call(c, h, {"kind": "storage", "op": "read", "path": "notes"})
                ids[pid] = r.json()["id"]

            def visible(r: httpx.Response) -> bool:
                assert r.status_code in (200, 404), r.text
                return r.status_code == 200

            # syscalls by id: read, events, cancel
            cases = [
                (who("tok-alice"), ids[a1], True), (who("tok-alice"), ids[c1], True),
                (who("tok-alice", a1), ids[c1], True), (who("tok-alice", a1), ids[a1], True),
                (who("tok-alice", a2), ids[a1], False), (who("tok-alice", c1), ids[a1], False),
                (who("tok-alice", a2), ids[c1], False), (who("tok-bob"), ids[a1], False),
                (who("tok-bob", b1), ids[c1], False), (who("tok-alice"), ids[b1], False),
                (who("tok-alice"), "0123456789abcdef0123456789abcdef", False),
            ]
            for headers, call_id, expected in cases:
                assert visible(await c.get(f"/v1/syscalls/{call_id}", headers=headers)) is expected
                r = await c.get(f"/v1/syscalls/{call_id}/events", headers=headers)
                assert (r.status_code == 200) is expected
                r = await c.delete(f"/v1/syscalls/{call_id}", headers=headers)
                assert (r.status_code != 404) is expected

            # processes: list, get, logs, signal, spawn under
            async def listed(headers: dict[str, str]) -> set[int]:
                r = await c.get("/v1/processes", headers=headers)
                assert r.status_code == 200
                return {p["pid"] for p in r.json()}
            assert await listed(who("tok-alice")) == {a1, a2, c1}
            assert await listed(who("tok-alice", a1)) == {a1, c1}
            assert await listed(who("tok-alice", a2)) == {a2}
            assert await listed(who("tok-bob")) == {b1}
            for headers, pid, expected in ((who("tok-alice", a2), a1, False), (who("tok-alice", c1), a1, False),
                                           (who("tok-alice", a1), c1, True), (who("tok-bob"), a1, False),
                                           (who("tok-bob", b1), c1, False)):
                assert visible(await c.get(f"/v1/processes/{pid}", headers=headers)) is expected
                assert visible(await c.get(f"/v1/processes/{pid}/logs", headers=headers)) is expected
                r = await c.post("/v1/processes", json={"name": "x", "parent_pid": pid}, headers=headers)
                assert (r.status_code == 201) is expected, r.text
            for headers, pid in ((who("tok-alice", a2), a1), (who("tok-bob"), c1), (who("tok-alice", c1), a1)):
                r = await c.post(f"/v1/processes/{pid}/signal", json={"signal": "kill"}, headers=headers)
                assert r.status_code == 404
            # a pid header naming another principal's process is refused
            r = await c.get("/v1/processes", headers=who("tok-bob", a1))
            assert r.status_code == 404

            # memory and files are each agent's own
            for pid, token in ((a2, "tok-alice"), (c1, "tok-alice"), (b1, "tok-bob")):
                r = await call(c, who(token, pid), {"kind": "memory", "op": "get", "key": "secret"})
                got = r.json()["result"]
                assert got is None or got["content"] == f"of {pid}", got
                r = await call(c, who(token, pid), {"kind": "storage", "op": "read", "path": "notes"})
                got = r.json()["result"]
                assert got is None or got["data"] == f"of {pid}", got
            r = await call(c, who("tok-alice", a2), {"kind": "memory", "op": "get", "key": "secret"})
            assert r.json()["result"] is None

            # process syscalls from an agent: only its own subtree
            r = await call(c, who("tok-alice", a2), {"kind": "process", "op": "kill", "target_pid": a1})
            assert r.json()["state"] == "failed" and r.json()["error"]["code"] == "not_found"
            r = await call(c, who("tok-alice", a1), {"kind": "process", "op": "list"})
            assert {p["pid"] for p in r.json()["result"]} == {a1, c1} | {p for p in k.processes.procs
                                                                          if k.processes.sees(a1, p)}
            r = await call(c, who("tok-bob", b1), {"kind": "process", "op": "status", "target_pid": a1})
            assert r.json()["error"]["code"] == "not_found"

            # stopping the kernel: not from an agent, not by a principal that is not an admin
            r = await c.post("/v1/kernel/stop", json={"drain": False}, headers=who("tok-alice", a1))
            assert r.status_code == 403
            r = await c.post("/v1/kernel/stop", json={"drain": False}, headers=who("tok-bob"))
            assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
            assert k.is_accepting
