"""The sandbox, with bubblewrap for real: harmless code runs and hands its files back, and
each attack of the access issue is stopped and reported (a fork bomb, 10 GiB of memory,
10 GiB of writes, a socket to the host, /etc/shadow, the aios database, a sleep that never
ends, a busy loop), and secrets planted in the caller's environment, files and descriptors
are looked for from inside, in /proc/1 and every other process it sees, and not found. The
Makefile installs bubblewrap; these tests do not skip without it."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import aios.sandbox as sandbox
from aios.errors import ConfigError, InvalidSyscall, SandboxUnavailable
from aios.sandbox import EXIT_LIMIT, EXIT_TIMEOUT, EXIT_UNAVAILABLE, Limits, run

AIOS = Path(sys.executable).with_name("aios")


def py(code: str, **kw) -> sandbox.SandboxResult:
    return run(["python3", "-c", code], **kw)


def test_bubblewrap_runs_here():
    assert sandbox.unavailable_reason() is None, "make installs the Debian package bubblewrap"


def test_a_harmless_snippet_runs_and_hands_back_its_files():
    r = py("import sys; print(6 * 7); print('warn', file=sys.stderr); open('out/a.txt', 'w').write(open('in.txt').read())",
           files={"in.txt": "hello", "out/keep": b""})
    assert (r.exit_code, r.stdout, r.stderr, r.stopped_by) == (0, "42\n", "warn\n", None)
    assert r.files == {"in.txt": 5, "out/a.txt": 5, "out/keep": 0} and r.contents["out/a.txt"] == b"hello"
    assert r.mode == "bwrap" and r.network == "none"


def test_the_exit_code_and_stdin_pass_through():
    r = py("import sys; print(sys.stdin.read()[::-1]); sys.exit(3)", stdin=b"abc")
    assert r.exit_code == 3 and r.stdout == "cba\n" and r.cli_exit_code == 3


def test_a_fork_bomb_is_stopped_by_the_process_limit():
    code = ("import os, time\nfor i in range(300):\n    if os.fork() == 0:\n        time.sleep(3)\n        os._exit(0)\n"
            "print('ESCAPED')")
    r = py(code, limits=Limits(processes=32, timeout_s=20))
    assert "ESCAPED" not in r.stdout and r.exit_code != 0
    assert "Resource temporarily unavailable" in r.stderr


def test_ten_gib_of_memory_is_refused():
    r = py("x = bytearray(10 * 1024 ** 3); print('ESCAPED')", limits=Limits(memory_mb=256))
    assert "ESCAPED" not in r.stdout and r.exit_code != 0 and "MemoryError" in r.stderr


def test_ten_gib_in_one_file_stops_at_the_file_size_limit():
    code = "f = open('big', 'wb')\nfor i in range(10 * 1024):\n    f.write(b'x' * (1 << 20))\nprint('ESCAPED')"
    r = py(code, limits=Limits(file_size_mb=8))
    assert "ESCAPED" not in r.stdout and r.exit_code != 0 and "File too large" in r.stderr
    assert r.files["big"] == 8 << 20 and "size limit" in r.message


def test_many_files_stop_at_the_disk_quota():
    code = ("for k in range(1000):\n    f = open(f'f{k}', 'wb')\n    for i in range(4):\n"
            "        f.write(b'x' * (1 << 20))\n    f.close()\nprint('ESCAPED')")
    r = py(code, limits=Limits(file_size_mb=8, disk_mb=32, timeout_s=20))
    assert "ESCAPED" not in r.stdout and r.stopped_by == "disk" and r.cli_exit_code == EXIT_LIMIT
    assert "disk quota" in r.message
    assert sum(r.files.values()) < 32 * (1 << 20) * 8   # stopped soon after the quota, not at 4 GiB


def test_tmp_is_small_and_in_memory():
    code = "f = open('/tmp/big', 'wb')\nfor i in range(1024):\n    f.write(b'x' * (1 << 20))\nprint('ESCAPED')"
    r = py(code, limits=Limits(tmp_mb=8, file_size_mb=64))
    assert "ESCAPED" not in r.stdout and r.exit_code != 0
    assert "No space left" in r.stderr or "File too large" in r.stderr


def test_no_network_by_default():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        r = py(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('ESCAPED')")
        assert "ESCAPED" not in r.stdout and r.exit_code != 0
        r = py("import socket; socket.getaddrinfo('example.com', 80); print('ESCAPED')")
        assert "ESCAPED" not in r.stdout and r.exit_code != 0
    finally:
        server.close()


def test_the_host_network_when_allowed():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        r = py(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')",
               network="host")
        assert r.exit_code == 0 and r.stdout == "connected\n"
    finally:
        server.close()


def test_secrets_and_the_aios_database_are_not_visible(tmp_path: Path):
    db = tmp_path / "aios.db"
    db.write_text("the journal")
    r = py(f"import os\nfor p in ['/etc/shadow', '/etc/passwd', '/root', {str(db)!r}, {str(Path.home())!r}, "
           f"{str(Path(__file__).parent)!r}]:\n    print(p, os.path.exists(p))")
    assert r.exit_code == 0
    assert all(line.endswith(" False") for line in r.stdout.splitlines()), r.stdout
    r = py(f"print(open({str(db)!r}).read())")
    assert "the journal" not in r.stdout and "No such file" in r.stderr


def test_the_system_is_read_only_and_capabilities_are_gone():
    r = py("import os\ntry:\n    open('/usr/evil', 'w')\nexcept OSError as e:\n    print('ro', e.errno)\n"
           "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\nprint(os.getpid())")
    lines = r.stdout.split()
    assert lines[0] == "ro" and lines[2] == "0000000000000000"
    assert int(lines[3]) < 10   # its own pid namespace


def test_a_sleep_forever_is_stopped_at_the_timeout():
    start = time.monotonic()
    r = py("import time; time.sleep(1000)", limits=Limits(timeout_s=1.5))
    assert r.stopped_by == "timeout" and r.cli_exit_code == EXIT_TIMEOUT and "timeout" in r.message
    assert 1.4 < time.monotonic() - start < 15


def test_a_busy_loop_is_stopped_at_the_cpu_limit():
    r = py("while True: pass", limits=Limits(timeout_s=20, cpu_s=1))
    assert r.stopped_by == "cpu" and r.cli_exit_code == EXIT_LIMIT and r.duration_s < 15


def test_output_is_capped():
    r = py("import sys\nfor i in range(200): sys.stdout.write('x' * 10000)", limits=Limits(output_kb=64))
    assert r.truncated and len(r.stdout) == 64 * 1024 and r.exit_code == 0


def test_bad_input_is_refused_with_the_field():
    with pytest.raises(ConfigError, match="nothing to run"):
        run([])
    with pytest.raises(ConfigError) as err:
        run(["true"], network="internet")   # type: ignore[arg-type]
    assert err.value.field == "network"
    with pytest.raises(ConfigError) as err:
        run(["true"], mode="docker")   # type: ignore[arg-type]
    assert err.value.field == "mode"
    for name in ("../escape", "/etc/passwd", "a\x00b", ""):
        with pytest.raises(ConfigError, match="relative path"):
            run(["true"], files={name: "x"})
    with pytest.raises(ConfigError) as err:
        Limits(timeout_s=0)
    assert err.value.field == "timeout_s"


def test_without_bubblewrap_the_sandbox_says_why_and_the_weaker_mode_is_only_by_name(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None if name == "bwrap" else real_which(name))
    sandbox._probe.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="bubblewrap") as err:
            py("print(1)")
        assert "rlimits" in err.value.hint
        weak = py("import os; print(os.path.exists('/etc/passwd'))", mode="rlimits")
        assert weak.exit_code == 0 and weak.mode == "rlimits"
        assert weak.stdout == "True\n"   # no namespaces: it sees the system, as documented
        slow = py("import time; time.sleep(100)", mode="rlimits", limits=Limits(timeout_s=1))
        assert slow.stopped_by == "timeout"
    finally:
        monkeypatch.undo()
        sandbox._probe.cache_clear()


# ---- the command

def aios(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(AIOS), "sandbox", "run", *args], capture_output=True, text=True, timeout=timeout)


def test_the_command_prints_and_passes_the_exit_code_on():
    p = aios("--timeout", "10", "--", "python3", "-c", "print(6 * 7)")
    assert (p.returncode, p.stdout) == (0, "42\n")
    p = aios("--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (p.returncode, p.stdout, p.stderr) == (7, "out\n", "err\n")


def test_the_command_reports_a_limit_with_its_own_exit_code():
    p = aios("--timeout", "1", "--", "sleep", "100")
    assert p.returncode == EXIT_TIMEOUT and "timeout" in p.stderr
    p = aios("--timeout", "20", "--cpu", "1", "--", "python3", "-c", "while True: pass")
    assert p.returncode == EXIT_LIMIT and "CPU limit" in p.stderr


def test_the_command_refuses_bad_input():
    p = aios()
    assert p.returncode == 2 and "no command" in p.stderr
    p = aios("--network", "internet", "--", "true")
    assert p.returncode == 2 and "network" in p.stderr
    p = aios("--timeout", "-1", "--", "true")
    assert p.returncode == 2 and "timeout_s" in p.stderr
    assert EXIT_UNAVAILABLE == 69


# ---- agents whose manifest asks for the sandbox

SANDBOXED_AGENT = '''
import os as host

async def main(task, os):
    await os.storage.write("from-sandbox", "hi")
    print("uid", host.getuid(), flush=True)
    print("db visible", host.path.exists({db!r}), flush=True)
    print("passwd visible", host.path.exists("/etc/passwd"), flush=True)
    try:
        open("/usr/evil", "w")
    except OSError:
        print("usr read-only", flush=True)
    return "ok"
'''


@pytest.mark.anyio
async def test_an_agent_whose_manifest_asks_runs_in_the_sandbox(make_settings, tmp_path: Path):
    import anyio

    from aios.kernel import Kernel
    from aios.server import create_app
    from tests.conftest import serve
    agents = tmp_path / "agents"
    agents.mkdir()
    program = agents / "boxed.py"
    settings = make_settings(**{"clock.mode": "wall"})
    program.write_text(SANDBOXED_AGENT.format(db=str(settings.home / "aios.db")))
    async with Kernel(settings) as k, serve(create_app(settings, kernel=k)) as url:
        k.endpoint = url
        with pytest.raises(InvalidSyscall) as err:   # an agent in the kernel's own process cannot be boxed
            await k.spawn("boxed", program=str(program), manifest={"sandbox": True})
        assert "subprocess runner" in err.value.message
        proc = await k.spawn("boxed", program=str(program), runner="subprocess", manifest={"sandbox": True})
        with anyio.fail_after(60):
            done = await k.wait(proc.pid)
        log = (k.supervisor.log_path(proc.pid)).read_text()
        assert done.exit_code == 0, log
        assert "db visible False" in log and "passwd visible False" in log and "usr read-only" in log
        assert int(log.split("uid ")[1].split()[0]) == 65534   # nobody, in its own user namespace


@pytest.mark.anyio
async def test_the_kernel_keeps_serving_after_attacks_through_the_python_tool(make_settings):
    import anyio

    from aios.kernel import Kernel
    from aios.tools import builtin_tools
    settings = make_settings(**{"clock.mode": "wall"})
    attacks = {
        "fork": "import os, time\nfor i in range(300):\n    if os.fork() == 0:\n        time.sleep(3)\n        os._exit(0)",
        "memory": "x = bytearray(10 * 1024 ** 3)",
        "disk": "f = open('big', 'wb')\nfor i in range(10 * 1024):\n    f.write(b'x' * (1 << 20))",
        "socket": "import socket; socket.create_connection(('127.0.0.1', 22), timeout=2)",
        "shadow": "print(open('/etc/shadow').read())",
        "database": f"print(open({str(settings.home / 'aios.db')!r}, 'rb').read(100))",
        "sleep": "import time; time.sleep(1000)",
    }
    async with Kernel(settings) as k:
        for spec in builtin_tools(settings):
            k.register_tool(spec)
        agent = await k.spawn("agent")
        await k.call({"kind": "storage", "op": "write", "path": "keep", "data": "precious"}, pid=agent.pid)
        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:   # all at once
                results: dict[str, dict] = {}

                async def attack(name: str, code: str) -> None:
                    results[name] = await k.call({"kind": "tool", "tool": "python",
                                                  "arguments": {"code": code, "timeout_s": 5}}, pid=agent.pid)
                for name, code in attacks.items():
                    tg.start_soon(attack, name, code)
        for name, r in results.items():
            assert r["exit_code"] != 0 or r["stopped_by"], (name, r)
            assert "root:" not in r["stdout"] and "SQLite" not in r["stdout"], name
        assert results["sleep"]["stopped_by"] == "timeout"
        # the kernel still serves, and nothing stored before was lost
        assert await k.call({"kind": "storage", "op": "read", "path": "keep"}, pid=agent.pid) == {
            "path": "keep", "data": "precious"}
        ok = await k.call({"kind": "tool", "tool": "python", "arguments": {"code": "print(2 + 2)"}}, pid=agent.pid)
        assert ok["stdout"] == "4\n"


# ---- nothing of the caller is readable inside: secrets planted in its environment, its
# files and its descriptors, looked for everywhere the sandboxed code can look

# Prints all a program inside can find: its environment and descriptors; every process's
# environ, cmdline, descriptors (regular files read) and folders; every readable mapping of
# every other process's memory around the word every planted secret holds (spelled apart
# here, so that this source, which bwrap holds, does not match); the files named in argv.
PROBE = r'''
import os, stat, sys
WORD = ("plan" + "ted").encode()

def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError as e:
        return f"<{type(e).__name__}>"

def listing(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        return f"<{type(e).__name__}>"

def memory(pid):
    hits = []
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read().splitlines()
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            for line in maps:
                span, perms = line.split()[:2]
                start, end = (int(x, 16) for x in span.split("-"))
                if not perms.startswith("r") or end - start > 1 << 28:
                    continue
                try:
                    mem.seek(start)
                    data = mem.read(end - start)
                except (OSError, ValueError, OverflowError):
                    continue
                at = data.find(WORD)
                while at >= 0:
                    hits.append(data[max(0, at - 40):at + 60].decode(errors="replace"))
                    at = data.find(WORD, at + 1)
    except OSError as e:
        return f"<{type(e).__name__}>"
    return hits

me = str(os.getpid())
print("env", dict(os.environ))
print("fds", listing("/proc/self/fd"))
for pid in sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int):
    print(pid, "environ", read(f"/proc/{pid}/environ"))
    print(pid, "cmdline", read(f"/proc/{pid}/cmdline"))
    print(pid, "cwd", listing(f"/proc/{pid}/cwd"))
    fds = listing(f"/proc/{pid}/fd")
    for fd in fds if isinstance(fds, list) else []:
        path = f"/proc/{pid}/fd/{fd}"
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError:
            continue
        print(pid, "fd", fd, os.readlink(path), read(path) if regular else "")
    if pid != me:
        print(pid, "memory", memory(pid))
for path in sys.argv[1:]:
    print(path, listing(path) if os.path.isdir(path) else read(path))
print("probed")
'''


@pytest.fixture
def planted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    """Secrets where a kernel keeps them: provider keys and a token in its environment, a
    database and a token file in its $AIOS_HOME, a token file in its current directory, an
    inheritable descriptor open on one of them. Paths and names avoid the secrets' word."""
    tag = secrets.token_hex(8)
    values = {"OPENAI_API_KEY": f"sk-planted-openai-{tag}", "AIOS_TOKEN": f"planted-aios-token-{tag}",
              "ANTHROPIC_API_KEY": f"sk-ant-planted-{tag}"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    home, cwd = tmp_path / "kernel-home", tmp_path / "caller-cwd"
    home.mkdir()
    cwd.mkdir()
    files = {home / "journal.db": f"planted-database-{tag}", home / "owner.token": f"planted-owner-token-{tag}",
             cwd / ".aios-token": f"planted-cwd-token-{tag}"}
    for path, text in files.items():
        path.write_text(text)
        path.chmod(0o600)
    monkeypatch.setenv("AIOS_HOME", str(home))
    monkeypatch.chdir(cwd)
    fd = os.open(home / "owner.token", os.O_RDONLY)
    os.set_inheritable(fd, True)
    yield {"secrets": [*values.values(), *files.values()], "paths": [str(p) for p in files] + [str(home), str(cwd)],
           "home": home, "cwd": cwd, "env": {**os.environ}}
    os.close(fd)


def assert_nothing_leaked(output: str, planted: dict) -> None:
    assert "probed" in output, output[-2000:]
    for secret in planted["secrets"]:
        assert secret not in output, f"{secret} is readable inside:\n" + "\n".join(
            line[:300] for line in output.splitlines() if secret in line)


def test_nothing_of_the_caller_is_readable_inside(planted: dict):
    r = run(["python3", "probe.py", *planted["paths"]], files={"probe.py": PROBE})
    assert r.exit_code == 0, r.stderr
    assert_nothing_leaked(r.stdout + r.stderr, planted)
    assert "fds ['0', '1', '2', '3']" in r.stdout   # its standard streams, and the one listing them


def test_the_environment_it_is_given_is_all_it_has_and_stays_off_the_command_line():
    r = py("import os; print(sorted(os.environ)); print(os.environ['GIVEN']); print(open('/proc/1/environ').read());"
           "print(open('/proc/1/cmdline').read().replace(chr(0), ' '))", env={"GIVEN": "given-value"})
    names, value, bwrap_env, bwrap_argv = r.stdout.splitlines()[:4]
    assert names == str(sorted(["GIVEN", "HOME", "LANG", "PATH", "PWD", "PYTHONDONTWRITEBYTECODE", "TMPDIR"]))
    assert value == "given-value" and bwrap_env == ""
    assert "given-value" not in bwrap_argv and "--args" in bwrap_argv   # host users' ps does not show it
    for bad in ({"": "x"}, {"A=B": "x"}, {"A": "x\x00y"}):
        with pytest.raises(ConfigError) as err:
            py("pass", env=bad)
        assert err.value.field == "env"


def test_the_rlimits_mode_starts_from_a_clean_environment(planted: dict):
    r = run(["python3", "probe.py"], files={"probe.py": PROBE}, mode="rlimits", env={"GIVEN": "given-value"})
    assert r.exit_code == 0, r.stderr
    own = r.stdout.split("env ", 1)[1].split("\n", 1)[0]
    assert "'GIVEN': 'given-value'" in own
    assert not any(secret in own for secret in planted["secrets"])
    if os.geteuid() == 0:   # a user id of its own: no other process's environ, memory or 0600 file
        assert_nothing_leaked(r.stdout + r.stderr, planted)


def test_the_command_leaks_nothing_of_its_caller(planted: dict):
    p = subprocess.run([str(AIOS), "sandbox", "run", "--", "python3", "-c", PROBE, *planted["paths"]],
                       capture_output=True, text=True, timeout=60, env=planted["env"], cwd=planted["cwd"])
    assert p.returncode == 0, p.stderr
    assert_nothing_leaked(p.stdout + p.stderr, planted)


@pytest.mark.anyio
async def test_a_sandboxed_agent_reads_nothing_of_the_kernel(make_settings, planted: dict, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch):
    import anyio

    from aios.kernel import Kernel
    from aios.server import create_app
    from tests.conftest import serve
    # a kernel started as `python -m` from its current directory has that directory in sys.path
    monkeypatch.syspath_prepend(str(planted["cwd"]))
    agents = tmp_path / "agents"
    agents.mkdir()
    program = agents / "probe_agent.py"
    program.write_text(f"import subprocess, sys\nPROBE = {PROBE!r}\n\n"
                       "def main(task, os):\n"
                       "    out = subprocess.run([sys.executable, '-c', PROBE, *task.split()], capture_output=True,\n"
                       "                         text=True)\n"
                       "    print(out.stdout, out.stderr, flush=True)\n"
                       "    return 'done'\n")
    settings = make_settings(**{"clock.mode": "wall", "home": str(planted["home"])})
    async with Kernel(settings) as k, serve(create_app(settings, kernel=k)) as url:
        k.endpoint = url
        proc = await k.spawn("probe", program=str(program), runner="subprocess", manifest={"sandbox": True},
                             task=" ".join([*planted["paths"], str(planted["home"] / "aios.db")]))
        with anyio.fail_after(60):
            done = await k.wait(proc.pid)
        log = k.supervisor.log_path(proc.pid).read_text()
    assert done.exit_code == 0, log
    assert_nothing_leaked(log, planted)
    assert "SQLite format" not in log and str(planted["home"] / "aios.db") in log   # looked for, not found
