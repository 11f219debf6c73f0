"""Ids as git takes them: wherever a call id or a token id is asked for, any unique prefix
of 4 or more hex digits works; a prefix of several ids is refused naming them; a prefix
never reaches a call the caller may not see; tables show the shortest unique prefixes."""
from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

from aios import access
from aios.config import Settings
from aios.errors import Conflict, NotFound
from aios.kernel import Kernel
from aios.server import create_app
from aios.syscall import CallState, one_by_prefix, shortest_prefixes
from tests.conftest import llm, serve


def common_prefix(a: str, b: str) -> str:
    n = 0
    while a[n] == b[n]:
        n += 1
    return a[:n]


def test_shortest_prefixes_are_unique_and_taken_back() -> None:
    ids = ["188f00aa01", "188f00aa02", "188f00bb00", "1990000000ff"]
    short = shortest_prefixes(ids)
    assert short == {"188f00aa01": "188f00aa01", "188f00aa02": "188f00aa02", "188f00bb00": "188f00bb",
                     "1990000000ff": "19900000"}
    for full, prefix in short.items():
        assert one_by_prefix(prefix, ids, "syscall") == full
    with pytest.raises(Conflict, match="'188f' is the start of 3 syscall ids: 188f00aa01, 188f00aa02, 188f00bb00"):
        one_by_prefix("188f", ids, "syscall")
    assert one_by_prefix("2000", ids, "syscall") is None


@pytest.mark.anyio
async def test_a_call_by_any_unique_prefix_of_its_id_and_only_the_callers(make_settings: Callable[..., Settings]):
    async with Kernel(make_settings()) as k:
        mine, other = await k.submit(llm("a")), await k.submit(llm("b"))
        theirs = await k.submit(llm("c"), principal="bob")
        for t in (mine, other, theirs):
            await t.wait()
        shared = common_prefix(mine.id, other.id)
        assert len(shared) >= 4
        unique = mine.id[:len(shared) + 1]
        assert (await k.lookup(unique, principal="local")).id == mine.id
        assert (await k.lookup(mine.id[:-3], principal="local")).id == mine.id   # journaled: found there
        with pytest.raises(Conflict) as err:
            await k.lookup(shared, principal="local")
        assert mine.id in err.value.message and other.id in err.value.message and theirs.id not in err.value.message
        assert err.value.field == "id" and err.value.hint == "give more of the id"
        # bob's call: his prefix finds it, alice's (local's) never does, not even as a candidate
        assert (await k.lookup(theirs.id[:len(common_prefix(theirs.id, other.id)) + 1], principal="bob")).id == theirs.id
        with pytest.raises(NotFound):
            await k.lookup(theirs.id[:-2], principal="local")
        for bad in (mine.id[:3], "zzzz", mine.id[:6].upper()):   # too short, not hex: not a prefix
            with pytest.raises(NotFound):
                await k.lookup(bad, principal="local")
        with pytest.raises(NotFound):   # the kernel's own lookup takes whole ids only
            await k.lookup(unique)


@pytest.mark.anyio
async def test_rest_and_confirmations_take_prefixes(make_settings: Callable[..., Settings]):
    settings = make_settings(**{"clock.mode": "wall"})
    async with Kernel(settings) as k:
        k.register_tool("send", lambda to: f"sent to {to}", irreversible=True)
        agent = await k.spawn("agent")
        held = [await k.submit({"kind": "tool", "tool": "send", "arguments": {"to": to}}, pid=agent.pid)
                for to in ("a", "b")]
        assert all(t.call.state is CallState.WAITING_CONFIRMATION for t in held)
        short = shortest_prefixes(t.id for t in held)
        async with serve(create_app(settings, kernel=k)) as url, httpx.AsyncClient(base_url=url, timeout=10) as c:
            r = await c.get(f"/v1/syscalls/{short[held[0].id]}")
            assert r.status_code == 200 and r.json()["id"] == held[0].id
            both = common_prefix(held[0].id, held[1].id)
            r = await c.post(f"/v1/confirmations/{both}", json={"approve": True})
            assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"
            assert k.pending_confirmations() == [held[0].call, held[1].call]   # nothing decided
            r = await c.post(f"/v1/confirmations/{short[held[1].id]}", json={"approve": False})
            assert r.status_code == 200 and r.json()["id"] == held[1].id and r.json()["state"] == "failed"
            approved = await k.confirm(short[held[0].id], approve=True, by="local")
            assert approved.id == held[0].id and await held[0].result() == "sent to a"
            done = await k.submit(llm("x"))
            r = await c.delete(f"/v1/syscalls/{done.id[:-4]}")
            assert r.status_code == 200 and r.json()["id"] == done.id


def test_tokens_revoked_by_a_prefix(make_settings: Callable[..., Settings]) -> None:
    from sqlalchemy import create_engine, update

    from aios.storage.models import Base, TokenRow
    engine = create_engine(make_settings().db_url)
    Base.metadata.create_all(engine)
    now = time.time()
    access.create_principal(engine, "ann", now)
    made = [access.create_token(engine, "ann", now)[0].id for _ in range(3)]
    with engine.begin() as conn:   # two ids that share their first four digits, as random ids may
        for old, new in zip(made, ("abcd1234", "abcd5678")):
            conn.execute(update(TokenRow).where(TokenRow.id == old).values(id=new))
    with pytest.raises(Conflict, match="'abcd' is the start of 2 token ids: abcd1234, abcd5678"):
        access.revoke_token(engine, "abcd", now)
    with pytest.raises(NotFound):
        access.revoke_token(engine, "abc", now)   # three digits are not a prefix
    assert access.revoke_token(engine, "abcd1", now).id == "abcd1234"
    assert access.revoke_token(engine, made[2][:4], now).id == made[2]
    revoked = {t.id for t in access.list_tokens(engine) if t.revoked is not None}
    assert revoked == {"abcd1234", made[2]}
