"""Python tools on the daemon (aios.tools.entries): `[tools.python]` entries registered at
boot, by an in-process kernel and a daemon alike; `aios tools add` and `remove` (POST and
DELETE /v1/tools), kept in the database across restarts; an entry that does not import
left out, logged and warned of, never stopping the kernel; the schema checks those of
Kernel.register_tool, message for message."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from aios import access
from aios.config import load_settings
from aios.errors import ConfigError, Conflict, InvalidSyscall
from aios.kernel import Kernel
from aios.server import create_app
from aios.tools import calculator, spec_of, tool
from aios.tools import entries as python_tools
from aios.tools.entries import PythonTool
from tests.conftest import serve
from tests.test_cli import env_for, free_port

TOOLS = '''
from aios.tools import tool


def double(n: int) -> int:
    """Twice n.

    Args:
        n: any whole number
    """
    return 2 * n


@tool(timeout_s=3, cost_usd=0.01)
async def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()
'''
UNSCHEMABLE = '''
import socket


def connect(sock: socket.socket, retries: int = 3) -> str:
    """Takes what JSON cannot carry."""
    return ""
'''
# entries that do not import, each with what its error says (FILE: the file of each)
BROKEN = {
    "missing module": ("", "aios_no_such_module.sub:fn",
                       ["cannot import module 'aios_no_such_module.sub'",
                        "ModuleNotFoundError: No module named 'aios_no_such_module'"]),
    "missing attribute": (TOOLS, "FILE:tripple", ["file 'FILE' has no attribute 'tripple'"]),
    "not callable": ("answer = 42\n", "FILE:answer", ["a tool must be callable, not int"]),
    "raises at import": ('raise RuntimeError("no database here")\n', "FILE:f",
                         ["cannot import file 'FILE'", "RuntimeError: no database here"]),
    "exits at import": ("import sys\nsys.exit(3)\n", "FILE:f", ["cannot import file 'FILE'", "SystemExit: 3"]),
    "no schema": (UNSCHEMABLE, "FILE:connect", ["tool 'bad': parameter 'sock' has no JSON schema",
                                                "IsInstanceSchema (<class 'socket.socket'>)"]),
    "a class that raises when made": (
        'class Weather:\n    def __init__(self):\n        raise KeyError("WEATHER_KEY")\n\n'
        '    def __call__(self, city: str) -> str:\n        return city\n', "FILE:Weather",
        ["cannot make a tool of it: KeyError: 'WEATHER_KEY'"]),
}


def settings_for(home: Path, config: Path | None = None, **overrides: object):
    return load_settings(config, env={}, overrides={"home": str(home), "clock.mode": "wall", **overrides})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tool_call(name: str, **arguments: object) -> dict[str, object]:
    return {"kind": "tool", "tool": name, "arguments": arguments}


# ---- [tools.python]: registered at boot

@pytest.mark.anyio
async def test_configured_tools_are_registered_at_boot_and_called_over_rest(tmp_path, monkeypatch):
    """A file entry relative to the config file's folder (not to where the kernel runs),
    a module entry on the kernel's sys.path, and a @tool function that keeps its metadata."""
    write(tmp_path / "conf" / "lib" / "mytools.py", TOOLS)
    write(tmp_path / "pkgs" / "aios_test_weather" / "__init__.py", "")
    write(tmp_path / "pkgs" / "aios_test_weather" / "forecast.py",
          'def forecast(city: str, days: int = 1) -> str:\n    """The weather ahead."""\n'
          '    return f"sun in {city} for {days} days"\n')
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    monkeypatch.delitem(sys.modules, "aios_test_weather", raising=False)
    config = write(tmp_path / "conf" / "aios.toml", '[tools.python]\ndouble = "lib/mytools.py:double"\n'
                   'shout = "lib/mytools.py:shout"\nweather = "aios_test_weather.forecast:forecast"\n')
    settings = settings_for(tmp_path / "home", config)
    assert settings.tools.python["double"] == f"{tmp_path / 'conf' / 'lib' / 'mytools.py'}:double"
    async with Kernel(settings) as k:
        async with serve(create_app(settings, kernel=k)) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
            listed = {t["name"]: t for t in (await c.get("/v1/tools")).json()["tools"]}
            assert {n: listed[n]["source"] for n in ("double", "shout", "weather")} == dict.fromkeys(
                ("double", "shout", "weather"), "python:config")
            assert listed["double"]["parameters"]["properties"]["n"] == {"type": "integer",
                                                                         "description": "any whole number"}
            assert (listed["shout"]["timeout_s"], listed["shout"]["cost_usd"]) == (3, 0.01)   # its @tool's
            for name, arguments, result in (("double", {"n": 21}, 42), ("shout", {"text": "hi"}, "HI"),
                                            ("weather", {"city": "Lisbon"}, "sun in Lisbon for 1 days")):
                r = await c.post("/v1/syscalls", params={"wait": "true"}, json=tool_call(name, **arguments))
                assert r.status_code == 201 and r.json()["state"] == "done", r.text
                assert r.json()["result"] == result
            bad = await c.post("/v1/syscalls", params={"wait": "true"}, json=tool_call("double", n="many"))
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "arguments.n"


@pytest.mark.anyio
@pytest.mark.parametrize("case", list(BROKEN))
async def test_an_entry_that_does_not_import_is_logged_and_left_out(tmp_path, caplog, case):
    text, entry, says = BROKEN[case]
    bad_file = write(tmp_path / "broken.py", text)
    entry, says = entry.replace("FILE", str(bad_file)), [s.replace("FILE", str(bad_file)) for s in says]
    good = write(tmp_path / "good.py", TOOLS)
    entries = {"bad": entry, "double": f"{good}:double"}
    settings = settings_for(tmp_path, **{"tools.python": entries})
    with caplog.at_level(logging.ERROR, logger="aios.tools.entries"):
        async with Kernel(settings) as k:   # it boots, without the bad one
            assert "bad" not in k.tools
            assert await k.call(tool_call("double", n=2)) == 4
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "aios.tools.entries"]
    assert logged.startswith(f"tools.python.bad = {entry!r} is left out: ")
    assert all(s in logged for s in says), logged
    assert python_tools.problems(entries) == [logged]   # what aios kernel start warns of, one line


def test_an_entry_not_of_the_form_is_a_config_error_naming_it(tmp_path):
    config = write(tmp_path / "aios.toml", '[tools.python]\nweather = "mytools.weather"\n')
    with pytest.raises(ConfigError) as refused:
        settings_for(tmp_path, config)
    assert refused.value.field == "tools.python.weather"
    assert "'mytools.weather' is not package.module:function or path/to/file.py:function" in refused.value.message


@pytest.mark.anyio
async def test_a_signature_is_refused_with_the_message_of_register_tool(tmp_path):
    """In-process registration and POST /v1/tools refuse a parameter no JSON schema
    describes with one message, naming the parameter."""
    path = write(tmp_path / "unschemable.py", UNSCHEMABLE)
    connect = python_tools.load(f"{path}:connect")
    settings = settings_for(tmp_path)
    async with Kernel(settings) as k:
        with pytest.raises(InvalidSyscall) as in_process:
            k.register_tool(connect)
        assert "parameter 'sock' has no JSON schema" in in_process.value.message
        assert "a type JSON can carry" in in_process.value.hint
        async with serve(create_app(settings, kernel=k)) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
            r = await c.post("/v1/tools", json={"name": "connect", "entry": f"{path}:connect"})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert (error["message"], error["hint"], error["field"]) == (in_process.value.message, in_process.value.hint,
                                                                      "entry")
        assert "connect" not in k.tools


# ---- POST and DELETE /v1/tools

@pytest.mark.anyio
async def test_tools_added_and_removed_over_rest(tmp_path):
    mine = write(tmp_path / "mytools.py", TOOLS)
    settings = settings_for(tmp_path / "home", **{"tools.python": {"double": f"{mine}:double"}})
    async with Kernel(settings) as k:
        k.register_tool(tool(calculator, timeout_s=5.0))   # as the daemon offers its built-ins
        k.register_tool(spec_of(calculator, name="files.sum", source="mcp:files"))   # as MCP imports do
        agent = await k.spawn("agent")
        async with serve(create_app(settings, kernel=k)) as url, httpx.AsyncClient(base_url=url, timeout=30) as c:
            added = await c.post("/v1/tools", json={"name": "loud", "entry": f"{mine}:shout", "timeout_s": 7})
            assert added.status_code == 201, added.text
            assert {key: added.json()[key] for key in ("name", "source", "timeout_s", "cost_usd",
                                                       "max_concurrency")} == {
                "name": "loud", "source": "python:added", "timeout_s": 7, "cost_usd": 0.01, "max_concurrency": 16}
            assert added.json()["parameters"]["required"] == ["text"]
            called = await c.post("/v1/syscalls", params={"wait": "true"}, json=tool_call("loud", text="hey"))
            assert called.json()["result"] == "HEY", called.text

            async def refused(method: str, path: str, status: int, code: str, field: str | None, *says: str,
                              **kwargs: object) -> dict[str, str]:
                r = await c.request(method, path, **kwargs)
                error = r.json()["error"]
                assert (r.status_code, error["code"], error["field"]) == (status, code, field), r.text
                assert all(s in error["message"] + (error["hint"] or "") for s in says), error
                return error

            for name, origin in (("loud", "added with aios tools add"), ("double", "from [tools.python]"),
                                 ("calculator", "built in")):
                await refused("POST", "/v1/tools", 409, "conflict", "name", f"a tool named {name!r} is already "
                              f"registered ({origin}", json={"name": name, "entry": f"{mine}:double"})
            await refused("POST", "/v1/tools", 422, "invalid_syscall", "entry", "bad tool entry 'mytools.shout'",
                          "package.module:function or path/to/file.py:function",
                          json={"name": "x", "entry": "mytools.shout"})
            await refused("POST", "/v1/tools", 422, "invalid_syscall", "entry",
                          "cannot import module 'aios_no_such_module'", "ModuleNotFoundError",
                          json={"name": "x", "entry": "aios_no_such_module:f"})
            await refused("POST", "/v1/tools", 422, "invalid_syscall", "entry", "not an absolute path",
                          json={"name": "x", "entry": "mytools.py:double"})
            await refused("POST", "/v1/tools", 422, "invalid_syscall", "timeout_s",
                          json={"name": "x", "entry": f"{mine}:double", "timeout_s": 0})
            await refused("POST", "/v1/tools", 422, "invalid_syscall", "name",
                          json={"name": "two words", "entry": f"{mine}:double"})
            for method, path, body in (("POST", "/v1/tools", {"name": "x", "entry": f"{mine}:double"}),
                                       ("DELETE", "/v1/tools/loud", None)):
                await refused(method, path, 403, "permission_denied", "X-Aios-Pid", "an agent process may not",
                              json=body, headers={"X-Aios-Pid": str(agent.pid)})
            assert "x" not in k.tools

            await refused("DELETE", "/v1/tools/calculator", 409, "conflict", "name", "is built in",
                          "a built-in tool stays")
            await refused("DELETE", "/v1/tools/double", 409, "conflict", "name", "from [tools.python]",
                          "take it out of [tools.python]")
            await refused("DELETE", "/v1/tools/files.sum", 409, "conflict", "name",
                          "imported from the MCP server 'files'", "take files out of [tools.mcp]")
            await refused("DELETE", "/v1/tools/nothing", 404, "not_found", "name", "no tool named 'nothing'")
            removed = await c.delete("/v1/tools/loud")
            assert removed.status_code == 200, removed.text
            assert removed.json() == {"name": "loud", "entry": f"{mine}:shout", "description": None,
                                      "timeout_s": 7, "irreversible": None, "needs_network": None,
                                      "cost_usd": None, "max_concurrency": None}
            gone = await c.post("/v1/syscalls", params={"wait": "true"}, json=tool_call("loud", text="hey"))
            assert gone.status_code == 404 and gone.json()["error"]["field"] == "tool"
            assert {"calculator", "double", "files.sum"} <= set(k.tools)   # what cannot be removed stayed
            # the audit log has both (written beside the kernel's work), read through the kernel's
            # own connection: another SQLite library in this process would not see its locks
            with anyio.fail_after(10):
                while len(audited := await k.db.run(lambda e: access.query_audit(e, action="tool"))) < 2:
                    await anyio.sleep(0.01)
            assert [(a.principal, a.action, a.target, a.detail) for a in reversed(audited)] == [
                ("local", "tool.add", "loud", {"entry": f"{mine}:shout", "timeout_s": 7}),
                ("local", "tool.remove", "loud", {"entry": f"{mine}:shout"})]


@pytest.mark.anyio
async def test_only_an_admin_may_add_a_tool(tmp_path):
    mine = write(tmp_path / "mytools.py", TOOLS)
    settings = settings_for(tmp_path, **{"server.tokens": {"tok-bob": "bob"}})
    async with Kernel(settings) as k:
        async with serve(create_app(settings, kernel=k)) as url, \
                httpx.AsyncClient(base_url=url, timeout=30, headers={"Authorization": "Bearer tok-bob"}) as bob:
            for r in (await bob.post("/v1/tools", json={"name": "double", "entry": f"{mine}:double"}),
                      await bob.delete("/v1/tools/double")):
                assert r.status_code == 403, r.text
                assert "principal 'bob' may not" in r.json()["error"]["message"]
        assert "double" not in k.tools


@pytest.mark.anyio
async def test_an_added_tool_is_registered_again_at_boot_until_removed(tmp_path, database_url, caplog):
    mine = write(tmp_path / "mytools.py", TOOLS)
    settings = settings_for(tmp_path, database_url=database_url)
    async with Kernel(settings) as k:
        await python_tools.add(k, PythonTool("twice", f"{mine}:double", max_concurrency=2, irreversible=True),
                               "local")
    async with Kernel(settings) as k:   # a restart keeps it, with its metadata
        spec = k.tools["twice"]
        assert (spec.source, spec.max_concurrency, spec.irreversible, spec.description) == (
            "python:added", 2, True, "Twice n.")
        assert await k.call(tool_call("twice", n=4)) == 8
    write(mine, "")   # the function is gone: the next boot leaves it out, and says how to forget it
    with caplog.at_level(logging.ERROR, logger="aios.tools.entries"):
        async with Kernel(settings) as k:
            assert "twice" not in k.tools
            with pytest.raises(Conflict, match="was added before"):   # the name stays taken until removed
                await python_tools.add(k, PythonTool("twice", f"{mine}:double"), "local")
            removed = await python_tools.remove(k, "twice", "local")
            assert (removed.entry, removed.max_concurrency) == (f"{mine}:double", 2)
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "aios.tools.entries"]
    assert logged == (f"tool twice = '{mine}:double' (added with aios tools add) is left out: file '{mine}' has "
                      "no attribute 'double'; aios tools remove twice forgets it")
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="aios.tools.entries"):
        async with Kernel(settings) as k:
            assert "twice" not in k.tools
    assert caplog.records == []


# ---- the commands against a real daemon

def aios_in(cwd: Path, home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real command, run from `cwd`, as the owner of the daemon of `home`."""
    return subprocess.run([sys.executable, "-m", "aios.cli.main", *args], capture_output=True, text=True,
                          check=False, env=env_for(home), cwd=cwd, timeout=timeout)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_aios_tools_add_call_restart_and_remove_on_a_daemon(tmp_path):
    home, work = tmp_path / "home", tmp_path / "work"
    write(work / "mytools.py", TOOLS)
    write(home / "config.toml", f'[clock]\nspeed = 20.0\n\n[tools.python]\ndouble = "{work}/mytools.py:double"\n'
          'weather = "aios_no_such_module:forecast"\n')
    port = str(free_port())
    url = f"http://127.0.0.1:{port}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return aios_in(work, home, *args)

    def call(name: str, **arguments: object) -> httpx.Response:
        return httpx.post(f"{url}/v1/syscalls", params={"wait": "true"}, json=tool_call(name, **arguments),
                          timeout=30)

    def listed() -> dict[str, dict]:
        r = run("tools", "--json")
        assert r.returncode == 0, r.stderr
        return {t["name"]: t for t in json.loads(r.stdout)}

    started = run("kernel", "start", "--detach", "--port", port)
    try:
        assert started.returncode == 0, started.stderr
        assert started.stderr.splitlines() == [   # one line for the entry left out; it started without it
            "warning: tools.python.weather = 'aios_no_such_module:forecast' is left out: cannot import module "
            "'aios_no_such_module': ModuleNotFoundError: No module named 'aios_no_such_module'"]
        assert "weather" not in listed() and listed()["double"]["source"] == "python:config"
        assert call("double", n=5).json()["result"] == 10

        added = run("tools", "add", "loud", "mytools.py:shout", "--timeout-s", "9")   # relative to here
        assert added.returncode == 0, added.stderr
        assert added.stdout == "added tool loud(text: string)\n"
        assert call("loud", text="hi").json()["result"] == "HI"
        # a flag is switched either way (off overrides what the function's @tool says)
        assert run("tools", "add", "careful", "mytools.py:double", "--irreversible").returncode == 0
        assert listed()["careful"]["irreversible"] is True
        assert run("tools", "remove", "careful").returncode == 0
        assert run("tools", "add", "careful", "mytools.py:double", "--reversible", "--no-network").returncode == 0
        assert (listed()["careful"]["irreversible"], listed()["careful"]["needs_network"]) == (False, False)
        assert run("tools", "remove", "careful").returncode == 0
        table = run("tools")
        assert table.returncode == 0 and "loud" in table.stdout and "double" in table.stdout
        assert run("tools", "list").stdout == table.stdout

        for args, says in ((("add", "loud", "mytools.py:double"), "error: a tool named 'loud' is already registered"),
                           (("add", "x", "mytools:shout:extra"), "hint: the form is package.module:function"),
                           (("add", "x", "aios_no_such_module:f"), "error: cannot import module "
                                                                   "'aios_no_such_module': ModuleNotFoundError"),
                           (("remove", "calculator"), "error: tool 'calculator' is built in"),
                           (("remove", "double"), "hint: take it out of [tools.python]"),
                           (("remove", "nothing"), "error: no tool named 'nothing'")):
            r = run("tools", *args)
            assert (r.returncode, r.stdout) == (2, ""), (args, r.stderr)
            assert says in r.stderr, (args, r.stderr)
            assert "Traceback" not in r.stderr
        agent = httpx.post(f"{url}/v1/processes", json={"name": "agent"}, timeout=30).json()["pid"]
        refused = httpx.post(f"{url}/v1/tools", json={"name": "x", "entry": f"{work}/mytools.py:double"},
                             headers={"X-Aios-Pid": str(agent)}, timeout=30)
        assert refused.status_code == 403 and refused.json()["error"]["field"] == "X-Aios-Pid"

        assert run("kernel", "stop").returncode == 0
        again = run("kernel", "start", "--detach", "--port", port)
        assert again.returncode == 0, again.stderr
        kept = listed()["loud"]
        assert (kept["source"], kept["timeout_s"], kept["cost_usd"]) == ("python:added", 9, 0.01)
        assert call("loud", text="again").json()["result"] == "AGAIN"

        removed = run("tools", "remove", "loud")
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout == f"removed tool loud ({work}/mytools.py:shout)\n"
        assert "loud" not in listed()
        assert call("loud", text="hi").status_code == 404
        assert run("kernel", "stop").returncode == 0
        assert run("kernel", "start", "--detach", "--port", port).returncode == 0
        assert "loud" not in listed()   # removed for later boots too
    finally:
        run("kernel", "stop", "--cancel")
