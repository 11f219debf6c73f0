"""Confirmation of irreversible actions: an agent process's irreversible tool call or
storage delete waits in `waiting_confirmation` until a principal with the right approves
(it runs) or denies it (it fails); a timeout denies; each step is audited; a crash denies
what was still waiting; over REST an agent cannot confirm its own actions."""
from __future__ import annotations

from collections.abc import Callable

import anyio
import httpx
import pytest
from sqlalchemy import update

from aios import access
from aios.config import Settings
from aios.errors import NotFound, PermissionDenied
from aios.kernel import Kernel
from aios.server import create_app
from aios.storage.models import SyscallRow
from aios.syscall import CallState
from tests.conftest import serve

SENT: list[str] = []


def send(to: str) -> str:
    SENT.append(to)
    return f"sent to {to}"


def kernel(make_settings: Callable[..., Settings], **overrides) -> Kernel:
    k = Kernel(make_settings(**{"clock.mode": "wall", **overrides}))
    return k


@pytest.mark.anyio
async def test_an_irreversible_action_waits_for_a_yes_or_a_no(make_settings):
    SENT.clear()
    async with kernel(make_settings) as k:
        k.register_tool("send", send, irreversible=True)
        agent = await k.spawn("agent")
        held = await k.submit({"kind": "tool", "tool": "send", "arguments": {"to": "bob"}}, pid=agent.pid)
        assert held.call.state is CallState.WAITING_CONFIRMATION and SENT == []
        assert [c.id for c in k.pending_confirmations("local")] == [held.id]
        assert (await k.lookup(held.id)).state is CallState.WAITING_CONFIRMATION
        await k.confirm(held.id, approve=True, by="local")
        assert await held.result() == "sent to bob" and SENT == ["bob"]

        no = await k.submit({"kind": "tool", "tool": "send", "arguments": {"to": "eve"}}, pid=agent.pid)
        ended = await k.confirm(no.id, approve=False, by="local")
        assert ended.state is CallState.FAILED and ended.error["code"] == "permission_denied"
        with pytest.raises(PermissionDenied, match="denied by local"):
            await no.result()
        assert SENT == ["bob"]

        # the principal's own calls (no process) are its own decision: not held
        assert await k.call({"kind": "tool", "tool": "send", "arguments": {"to": "me"}}) == "sent to me"
        # a storage delete by an agent is held too; cancelling a held call ends it
        delete = await k.submit({"kind": "storage", "op": "delete", "path": "notes"}, pid=agent.pid)
        assert delete.call.state is CallState.WAITING_CONFIRMATION
        assert (await k.cancel(delete.id)).state is CallState.CANCELLED and not k.pending_confirmations()
        with pytest.raises(NotFound):
            await k.confirm(delete.id, approve=True, by="local")

        with anyio.fail_after(10):   # requests are audited in the background
            while (actions := [x.action for x in await k.db.run(
                    lambda e: access.query_audit(e, action="confirmation"))]).count("confirmation.request") < 3:
                await anyio.sleep(0.02)
        assert {"confirmation.approve", "confirmation.deny"} <= set(actions)


@pytest.mark.anyio
async def test_only_the_calls_principal_or_an_admin_may_confirm(make_settings):
    async with kernel(make_settings) as k:
        k.register_tool("send", send, irreversible=True)
        await k.db.run(lambda e: access.create_principal(e, "alice", 1.0))
        agent = await k.spawn("agent", principal="alice")
        held = await k.submit({"kind": "tool", "tool": "send", "arguments": {"to": "x"}}, pid=agent.pid,
                              principal="alice")
        with pytest.raises(NotFound):
            await k.confirm(held.id, approve=True, by="mallory")
        await k.confirm(held.id, approve=False, by="root", is_admin=True)
        assert (await held.wait()).state is CallState.FAILED


@pytest.mark.anyio
async def test_a_timeout_denies(make_settings):
    async with kernel(make_settings, **{"access.confirm_timeout_s": 0.3}) as k:
        k.register_tool("send", send, irreversible=True)
        agent = await k.spawn("agent")
        held = await k.submit({"kind": "tool", "tool": "send", "arguments": {"to": "late"}}, pid=agent.pid)
        with anyio.fail_after(10):
            ended = await held.wait()
        assert ended.state is CallState.FAILED and "not confirmed within" in ended.error["message"]
        with anyio.fail_after(10):   # audited in the background
            while not (log := await k.db.run(lambda e: access.query_audit(e, action="confirmation.timeout"))):
                await anyio.sleep(0.02)
        assert [x.target for x in log] == [held.id]


@pytest.mark.anyio
async def test_confirmation_can_be_turned_off_and_a_crash_denies_what_was_waiting(make_settings):
    async with kernel(make_settings, **{"access.confirm": False}) as k:
        k.register_tool("send", send, irreversible=True)
        agent = await k.spawn("agent")
        assert await k.call({"kind": "tool", "tool": "send", "arguments": {"to": "y"}}, pid=agent.pid) == "sent to y"
    settings = make_settings(**{"clock.mode": "wall"})
    async with Kernel(settings) as k:
        k.register_tool("send", send, irreversible=True)
        agent = await k.spawn("agent")
        held = await k.submit({"kind": "tool", "tool": "send", "arguments": {"to": "z"}}, pid=agent.pid)
        await k.journal.flush()
        call_id = held.id

        def as_if_crashed(engine) -> None:   # the record a kill -9 would leave behind
            with engine.begin() as conn:
                conn.execute(update(SyscallRow).where(SyscallRow.id == call_id)
                             .values(state="waiting_confirmation", finished=None, error=None))
    async with Kernel(settings) as k2:
        await k2.db.run(as_if_crashed)
    async with Kernel(settings) as k3:
        recovered = await k3.lookup(call_id)
        assert recovered.state is CallState.FAILED and "restarted before" in recovered.error["message"]


@pytest.mark.anyio
async def test_over_rest_a_principal_confirms_and_an_agent_cannot(make_settings):
    settings = make_settings(**{"clock.mode": "wall", "server.tokens": {"tok-a": "alice", "tok-b": "bob"}})
    async with Kernel(settings) as k:
        k.register_tool("send", send, irreversible=True)
        async with serve(create_app(settings, kernel=k)) as url, httpx.AsyncClient(base_url=url) as c:
            alice = {"Authorization": "Bearer tok-a"}
            r = await c.post("/v1/processes", json={"name": "agent"}, headers=alice)
            pid = r.json()["pid"]
            agent = {**alice, "X-Aios-Pid": str(pid)}
            r = await c.post("/v1/syscalls", json={"kind": "tool", "tool": "send", "arguments": {"to": "q"}},
                             headers=agent)
            call_id = r.json()["id"]
            assert r.json()["state"] == "waiting_confirmation"
            r = await c.get("/v1/confirmations", headers=agent)
            assert r.status_code == 403
            r = await c.post(f"/v1/confirmations/{call_id}", json={"approve": True}, headers=agent)
            assert r.status_code == 403
            r = await c.get("/v1/confirmations", headers={"Authorization": "Bearer tok-b"})
            assert r.json() == []
            r = await c.post(f"/v1/confirmations/{call_id}", json={"approve": True},
                             headers={"Authorization": "Bearer tok-b"})
            assert r.status_code == 404
            r = await c.get("/v1/confirmations", headers=alice)
            assert [x["id"] for x in r.json()] == [call_id]
            r = await c.post(f"/v1/confirmations/{call_id}", json={"approve": "yes please"}, headers=alice)
            assert r.status_code == 422 and r.json()["error"]["field"] == "approve"
            r = await c.post(f"/v1/confirmations/{call_id}", json={"approve": True}, headers=alice)
            assert r.status_code == 200
            r = await c.get(f"/v1/syscalls/{call_id}", params={}, headers=alice)
            with anyio.fail_after(10):
                while r.json()["state"] != "done":
                    await anyio.sleep(0.05)
                    r = await c.get(f"/v1/syscalls/{call_id}", headers=alice)
            assert r.json()["result"] == "sent to q"
