"""Permission manifests (aios.access.manifest): parsed with clear errors, read beside a
program, intersected with the principal's rights and the parent's manifest, enforced on
every syscall before any work is done (403 naming the missing permission, 429 with what
is left of a budget), and every denial audited."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from aios import access
from aios.access.manifest import Manifest, beside, excess, intersect, rights_of
from aios.config import Settings
from aios.errors import ConfigError, PermissionDenied, QuotaExceeded
from aios.kernel import Kernel
from aios.server import create_app
from tests.conftest import llm, serve

MODEL = "sim-llama-3-8b"


def add(a: int, b: int) -> int:
    return a + b


def test_a_manifest_parses_and_says_what_is_wrong(tmp_path: Path):
    m = Manifest.parse({"models": [MODEL], "tools": ["add"], "spawn": False, "budget": {"run": {"tokens": 100}}})
    assert m.models == (MODEL,) and m.budget.run.tokens == 100 and m.storage_read is None
    for bad, field in (({"tool": ["add"]}, "manifest.tool"), ({"budget": {"run": {"tokens": -1}}},
                       "manifest.budget.run.tokens"), ({"priority_ceiling": 120}, "manifest.priority_ceiling")):
        with pytest.raises(ConfigError) as err:
            Manifest.parse(bad)
        assert err.value.field == field
    program = tmp_path / "agent.py"
    program.write_text("def main(task, os):\n    return 'ok'\n")
    assert beside(str(program)) is None
    (tmp_path / "agent.toml").write_text('tools = ["add"]\n[budget.run]\ntokens = 50\n')
    assert Manifest.load(beside(str(program))).tools == ("add",)   # type: ignore[arg-type]
    (tmp_path / "agent.toml").write_text("tools = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Manifest.load(tmp_path / "agent.toml")


@pytest.mark.parametrize(("glob", "says"), [
    ("/notes/*", "absolute"), ("notes/", "write 'notes/*'"), ("../x/*", "climbs out"), ("", "empty"),
    ("./notes/*", "write 'notes/*'"), ("notes//a", "write 'notes/a'")])
def test_a_glob_that_can_match_no_path_is_refused_naming_the_fix(glob: str, says: str):
    """Paths are relative and normalised, so these would deny every call in silence."""
    for field in ("storage_read", "storage_write"):
        with pytest.raises(ConfigError) as err:
            Manifest.parse({field: ["notes/*", glob]})
        assert err.value.field == f"manifest.{field}" and f"the glob {glob!r} can match no path" in err.value.message
        assert says in err.value.message and "relative to the agent's own file space" in err.value.hint
    assert Manifest.parse({"storage_write": ["notes/*", "*", "a/b.md"]}).storage_write == ("notes/*", "*", "a/b.md")


def test_rights_combine_by_intersection_and_union():
    asked = Manifest.parse({"tools": ["add", "python"], "storage_write": ["notes/*"], "priority_ceiling": 80})
    allowed = Manifest.parse({"tools": ["add", "search"], "storage_write": ["notes/*", "tmp/*"], "priority_ceiling": 50})
    assert excess(asked, allowed) == ["tools: python", "priority_ceiling: 80 (at most 50)"]
    both = intersect(asked, allowed)
    assert both.tools == ("add",) and both.storage_write == ("notes/*",) and both.priority_ceiling == 50
    groups = {"interns": Manifest.parse({"tools": ["add"]}), "ops": Manifest.parse({"tools": ["search"]})}
    assert rights_of(["interns", "ops"], False, groups).tools == ("add", "search")
    assert rights_of(["interns"], True, groups) == Manifest()          # an admin
    assert rights_of(["unknown"], False, groups) == Manifest()         # no configured group: not limited here


@pytest.mark.anyio
async def test_the_kernel_enforces_a_manifest_on_every_syscall(make_settings: Callable[..., Settings]):
    manifest = {"models": [MODEL], "tools": ["add"], "storage_read": ["notes/*"], "storage_write": ["notes/*"],
                "priority_ceiling": 10, "spawn": False}
    async with Kernel(make_settings()) as k:
        k.register_tool("add", add)
        agent = await k.spawn("agent", manifest=manifest)
        pid = agent.pid
        assert await k.call({"kind": "tool", "tool": "add", "arguments": {"a": 1, "b": 2}}, pid=pid) == 3
        assert await k.call({"kind": "storage", "op": "write", "path": "notes/a", "data": "x"}, pid=pid) is not None
        assert (await k.call({"kind": "storage", "op": "move", "path": "notes/a", "to": "notes/c"}, pid=pid))["version"] == 1
        await k.call({"kind": "storage", "op": "move", "path": "notes/c", "to": "notes/a"}, pid=pid)
        denials = [
            ({"kind": "tool", "tool": "python", "arguments": {"code": "print(1)"}}, "tools: python", "tool"),
            (llm(model="sim-mistral-7b"), "models: sim-mistral-7b", "model"),
            ({"kind": "storage", "op": "write", "path": "secrets/key", "data": "x"}, "storage_write: secrets/key",
             "path"),
            ({"kind": "storage", "op": "read", "path": "other/b"}, "storage_read: other/b", "path"),
            # a move writes both ends
            ({"kind": "storage", "op": "move", "path": "notes/a", "to": "public/a"}, "storage_write: public/a", "to"),
            ({"kind": "storage", "op": "move", "path": "other/a", "to": "notes/b"}, "storage_write: other/a", "path"),
            ({"kind": "tool", "tool": "add", "arguments": {"a": 1, "b": 2}, "priority": 20}, "ceiling is 10",
             "priority"),
            ({"kind": "process", "op": "kill", "target_pid": 999}, "spawn", "target_pid"),
        ]
        for call, words, field in denials:
            with pytest.raises(PermissionDenied) as err:
                await k.submit(call, pid=pid)
            assert words in err.value.message and err.value.field == field, err.value.message
        with pytest.raises(PermissionDenied, match="may not start processes"):
            await k.spawn("child", parent_pid=pid)
        log = await k.db.run(lambda e: access.query_audit(e, decision="deny"))
        assert len(log) == len(denials) + 1
        assert {x.action for x in log} == {"tool.submit", "llm.submit", "storage.submit", "process.submit",
                                           "process.spawn"}
        # nothing refused was journaled
        assert all(t.call.pid != pid or t.call.kind.value != "tool" or t.call.arguments.get("code") is None
                   for t in k.tickets.values())


@pytest.mark.anyio
async def test_a_token_budget_is_checked_before_the_call_and_stops_a_generation_at_it(
        make_settings: Callable[..., Settings]):
    async with Kernel(make_settings()) as k:
        agent = await k.spawn("agent", manifest={"budget": {"run": {"tokens": 60}}})
        reply = await k.call(llm("hello", max_tokens=None), pid=agent.pid)   # no max_tokens: cut to the budget
        used = k.processes.get(agent.pid).usage
        assert used.tokens_in + used.tokens_out <= 60 and reply is not None
        with pytest.raises(QuotaExceeded) as err:
            await k.submit(llm("x " * 400, max_tokens=8), pid=agent.pid)
        assert "token budget" in err.value.message and "left" in err.value.message
        assert err.value.field == "budget.run.tokens"


@pytest.mark.anyio
async def test_concurrent_syscalls_are_capped(make_settings: Callable[..., Settings]):
    async with Kernel(make_settings()) as k:
        agent = await k.spawn("agent", manifest={"max_concurrent_syscalls": 1})
        first = await k.submit(llm("one", max_tokens=50), pid=agent.pid)
        with pytest.raises(QuotaExceeded, match="max_concurrent_syscalls"):
            await k.submit(llm("two"), pid=agent.pid)
        await first.wait()
        await k.call(llm("three"), pid=agent.pid)   # room again


@pytest.mark.anyio
async def test_principal_rights_bound_a_manifest_and_a_parent_bounds_its_children(
        make_settings: Callable[..., Settings]):
    settings = make_settings(**{"access.groups": {"interns": {"tools": ["add"], "budget": {"run": {"tokens": 500}}}}})
    async with Kernel(settings) as k:
        k.register_tool("add", add)
        await k.db.run(lambda e: access.create_principal(e, "bob", 1.0, groups=["interns"]))
        with pytest.raises(PermissionDenied, match="asks for more than 'bob' may grant: tools: python") as err:
            await k.spawn("greedy", principal="bob", manifest={"tools": ["add", "python"]})
        assert err.value.field == "manifest"
        plain = await k.spawn("plain", principal="bob")   # no manifest of its own: bob's rights apply
        with pytest.raises(PermissionDenied, match="tools: python"):
            await k.submit({"kind": "tool", "tool": "python", "arguments": {"code": "1"}}, pid=plain.pid,
                           principal="bob")
        assert k.guard.manifests[plain.pid].budget.run.tokens == 500
        parent = await k.spawn("parent", manifest={"tools": ["add"], "spawn": True})
        with pytest.raises(PermissionDenied, match="tools: python"):
            await k.spawn("child", parent_pid=parent.pid, manifest={"tools": ["python"]})
        child = await k.spawn("child", parent_pid=parent.pid)
        assert k.guard.manifests[child.pid].tools == ("add",)   # a child never has more than its parent


@pytest.mark.anyio
async def test_a_processs_manifest_is_recorded_as_declared_and_as_enforced(make_settings: Callable[..., Settings]):
    from sqlalchemy import select

    from aios.storage.models import ManifestRow
    settings = make_settings(**{"access.groups": {"interns": {"tools": ["add", "search"]}}})
    async with Kernel(settings) as k:
        await k.db.run(lambda e: access.create_principal(e, "bob", 1.0, groups=["interns"]))
        agent = await k.spawn("agent", principal="bob", manifest={"tools": ["add"], "spawn": False})

        def read(engine):
            with engine.connect() as conn:
                return conn.execute(select(ManifestRow).where(ManifestRow.pid == agent.pid)).one()
        row = await k.db.run(read)
        assert row.declared == {"tools": ["add"], "spawn": False, "budget": {"run": {}, "day": {}}}
        assert row.effective["tools"] == ["add"] and row.effective["spawn"] is False


@pytest.mark.anyio
async def test_over_rest_a_denial_is_403_and_a_budget_429(make_settings: Callable[..., Settings]):
    settings = make_settings(**{"clock.mode": "wall"})
    async with Kernel(settings) as k:
        k.register_tool("add", add)
        async with serve(create_app(settings, kernel=k)) as url, httpx.AsyncClient(base_url=url) as c:
            r = await c.post("/v1/processes", json={"name": "agent", "manifest": {"tools": ["add"],
                                                                                   "budget": {"run": {"tokens": 20}}}})
            assert r.status_code == 201, r.text
            pid = r.json()["pid"]
            headers = {"X-Aios-Pid": str(pid)}
            r = await c.post("/v1/syscalls", json={"kind": "tool", "tool": "python", "arguments": {"code": "1"}},
                             headers=headers)
            assert r.status_code == 403 and "tools: python" in r.json()["error"]["message"]
            r = await c.post("/v1/syscalls", json=llm("word " * 200), headers=headers)
            assert r.status_code == 429 and "token budget" in r.json()["error"]["message"]
            r = await c.post("/v1/processes", json={"name": "bad", "manifest": {"tool": ["add"]}})
            assert r.status_code == 422 and r.json()["error"]["field"] == "manifest.tool"


@pytest.mark.anyio
async def test_network_tools_reach_only_the_hosts_a_manifest_lists(make_settings: Callable[..., Settings]):
    settings = make_settings(**{"tools.http_allow": ["example.com", "docs.example.org"]})
    from aios.tools import builtin_tools
    async with Kernel(settings) as k:
        for spec in builtin_tools(settings):
            k.register_tool(spec)
        agent = await k.spawn("agent", manifest={"network": ["docs.example.org"]})
        with pytest.raises(PermissionDenied, match="network: example.com") as err:
            await k.submit({"kind": "tool", "tool": "http_fetch", "arguments": {"url": "https://example.com/x"}},
                           pid=agent.pid)
        assert err.value.field == "arguments.url"
        offline = await k.spawn("offline", manifest={"network": []})
        with pytest.raises(PermissionDenied, match="docs.example.org"):
            await k.submit({"kind": "tool", "tool": "http_fetch",
                            "arguments": {"url": "https://docs.example.org/"}}, pid=offline.pid)
        assert intersect(Manifest.parse({"network": ["a.com", "b.com"]}),
                         Manifest.parse({"network": ["b.com"]})).network == ("b.com",)
        assert intersect(Manifest.parse({"network": ["*"]}), Manifest.parse({"network": ["b.com"]})).network == ("b.com",)
        assert excess(Manifest.parse({"network": ["evil.com"]}), Manifest.parse({"network": ["b.com"]})) == [
            "network: evil.com"]


@pytest.mark.anyio
async def test_a_day_budget_counts_every_run_of_the_agent_today(make_settings: Callable[..., Settings]):
    async with Kernel(make_settings(**{"clock.mode": "wall"})) as k:
        manifest = {"budget": {"day": {"tokens": 80}}}
        first = await k.spawn("writer", manifest=manifest)
        await k.call(llm("hello", max_tokens=None), pid=first.pid)
        await k.journal.flush()
        used = k.processes.get(first.pid).usage
        spent = used.tokens_in + used.tokens_out
        assert 0 < spent <= 80
        second = await k.spawn("writer", manifest=manifest)     # another run, the same day
        assert await k.guard.used_today("local", "writer") == (spent, 0.0)
        with pytest.raises(QuotaExceeded, match="per day left") as err:
            await k.submit(llm("x " * 100, max_tokens=8), pid=second.pid)
        assert err.value.field == "budget.day.tokens"
        other = await k.spawn("reader", manifest=manifest)      # another agent has its own day
        assert await k.guard.used_today("local", "reader") == (0, 0.0)
        await k.call(llm("hi", max_tokens=4), pid=other.pid)
        import anyio
        with anyio.fail_after(10):   # the allow decisions of manifest-bound processes are audited, in the background
            while len(await k.db.run(lambda e: access.query_audit(e, decision="allow", action="llm.submit"))) < 2:
                await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_memory_is_shared_read_only_and_only_when_its_manifest_says_so(make_settings: Callable[..., Settings]):
    async with Kernel(make_settings()) as k:
        sharer = await k.spawn("sharer", manifest={"memory_share": True})
        keeper = await k.spawn("keeper")
        reader = await k.spawn("reader")
        await k.call({"kind": "memory", "op": "add", "key": "plan", "content": "the shared plan"}, pid=sharer.pid)
        await k.call({"kind": "memory", "op": "add", "key": "diary", "content": "private"}, pid=keeper.pid)
        got = await k.call({"kind": "memory", "op": "get", "key": "plan", "owner": sharer.pid}, pid=reader.pid)
        assert got == {"key": "plan", "content": "the shared plan", "fault": True}   # new to the reader's context
        found = await k.call({"kind": "memory", "op": "search", "query": "plan", "owner": sharer.pid}, pid=reader.pid)
        assert [e["key"] for e in found["entries"]] == ["plan"]
        with pytest.raises(PermissionDenied, match="does not share its memory"):
            await k.submit({"kind": "memory", "op": "get", "key": "diary", "owner": keeper.pid}, pid=reader.pid)
        with pytest.raises(PermissionDenied, match="read-only"):
            await k.submit({"kind": "memory", "op": "delete", "key": "plan", "owner": sharer.pid}, pid=reader.pid)
        with pytest.raises(PermissionDenied, match="read-only"):
            await k.submit({"kind": "memory", "op": "add", "content": "x", "owner": sharer.pid}, pid=reader.pid)
        from aios.errors import NotFound
        with pytest.raises(NotFound):
            await k.submit({"kind": "memory", "op": "get", "key": "plan", "owner": 999}, pid=reader.pid)
        other = await k.spawn("other", principal="mallory")
        with pytest.raises(NotFound):   # another principal's agent: it does not exist for mallory
            await k.submit({"kind": "memory", "op": "get", "key": "plan", "owner": sharer.pid}, pid=other.pid,
                           principal="mallory")
        # every refusal is audited, naming what was refused
        denied = await k.db.run(lambda e: access.query_audit(e, decision="deny", action="memory.submit"))
        assert len(denied) == 5
        assert {d.detail["code"] for d in denied} == {"permission_denied", "not_found"}
        assert any("does not share its memory" in d.detail["missing"] for d in denied)
