"""The `aios` commands against one real daemon for the module: in-process through typer's
CliRunner (AIOS_URL), and as the real command in a subprocess (the daemon found through
$AIOS_HOME/daemon.json): run, ps [--tree], top, kill, suspend, resume, logs [-f], models,
tools, their --json, and the errors a user meets."""
from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from aios.cli.main import app
from aios.errors import AiosError, BackendUnavailable, ProgramError
from aios.sdk import Client

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CHAT = REPO / "agents" / "examples" / "chat.py"
NOTES = REPO / "agents" / "examples" / "notes.py"
SLOW_AGENT = '''
import os as system
import anyio

async def main(task, os):
    print("slow agent started in", system.getpid(), flush=True)
    await anyio.sleep(60)
    return "finished"
'''
RAISING_AGENT = '''
def main(task, os):
    raise RuntimeError("boom: " + task)
'''
STEPPING_AGENT = '''
def main(task, os):
    os.step("plan", "1. look up " + task)
    os.step("action", "search(query=%r)" % task)
    os.step("observation", "x" * 400)
    os.step("answer", "the answer about " + task)
    return "the answer about " + task
'''
BROKEN_AT_IMPORT = '''
raise ValueError("broken at import")

def main(task, os):
    return "never"
'''
PROCESS_FIELDS = {"pid", "name", "principal", "parent_pid", "priority", "state", "created", "exited",
                  "exit_reason", "exit_code", "program", "runner", "cpu_s", "max_rss_kib", "usage"}


@dataclass(frozen=True)
class Daemon:
    home: Path
    url: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_for(home: Path) -> dict[str, str]:
    """The user's environment with no AIOS_URL or AIOS_TOKEN: the daemon is found through home."""
    env = {k: v for k, v in os.environ.items() if k not in ("AIOS_URL", "AIOS_TOKEN")}
    return {**env, "AIOS_HOME": str(home), "NO_COLOR": "1"}


def aios(home: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The real command, run from the repository root."""
    return subprocess.run([sys.executable, "-m", "aios.cli.main", *args], capture_output=True, text=True,
                          check=False, env=env_for(home), cwd=REPO, timeout=timeout)


def cli(daemon: Daemon, *args: str) -> Result:
    """The same command in this process, through typer's CliRunner."""
    return CliRunner().invoke(app, list(args), env={"AIOS_URL": daemon.url, "AIOS_HOME": str(daemon.home),
                                                    "AIOS_TOKEN": None, "NO_COLOR": "1"})


def plain(result: Result) -> str:
    """Its stdout without the styles rich adds when pytest runs with -s on a terminal (the
    console decided on colour at import, before CliRunner swapped stdout)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)


def processes(daemon: Daemon) -> dict[int, dict]:
    result = cli(daemon, "ps", "--all", "--json")
    assert result.exit_code == 0, result.output
    return {p["pid"]: p for p in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("aios-home")
    config = home / "aios.toml"
    config.write_text("[clock]\nspeed = 20.0\n")   # simulated calls 20x faster than real time
    port = free_port()
    # started from home, so only the CLI can resolve a path relative to the user's directory
    started = subprocess.run([sys.executable, "-m", "aios.cli.main", "kernel", "start", "--detach",
                              "--port", str(port), "--config", str(config)],
                             capture_output=True, text=True, check=False, env=env_for(home), cwd=home,
                             timeout=30)
    assert started.returncode == 0, started.stderr
    yield Daemon(home, f"http://127.0.0.1:{port}")
    aios(home, "kernel", "stop", "--cancel")


# ---- aios run

def test_run_prints_the_answer_and_exits_0(daemon):
    r = aios(daemon.home, "run", "agents/examples/chat.py", "What does a kernel do?")   # relative to the user
    assert r.returncode == 0, r.stderr
    answer = r.stdout.strip()
    assert len(answer.split()) > 5
    (proc,) = [p for p in processes(daemon).values() if p["name"] == "chat" and p["runner"] == "subprocess"]
    assert proc["program"] == str(CHAT)   # resolved where the user named it, not in the daemon's directory
    assert proc["state"] == "exited" and proc["exit_code"] == 0 and proc["usage"]["tokens_out"] > 0
    assert cli(daemon, "logs", str(proc["pid"])).stdout.strip() == answer


@pytest.mark.parametrize("program, task, expected", [
    (CHAT, "What does a kernel do?", None),                                 # sync main
    (NOTES, "plan a trip to Lisbon", "wrote notes/plan-a-trip-to.md"),      # async main
])
def test_run_inproc(daemon, program, task, expected):
    result = cli(daemon, "run", str(program), task, "--runner", "inproc")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    if expected:
        assert expected in result.stdout


@pytest.mark.parametrize("runner", ["subprocess", "inproc"])
def test_run_on_a_named_model(daemon, tmp_path, runner):
    """aios run --model NAME: the agent's calls that name no model use NAME (a subprocess
    agent gets it as AIOS_MODEL); a model the kernel does not serve is refused up front."""
    agent = tmp_path / "which_model.py"
    agent.write_text("def main(task, os):\n    return os.llm.chat(task, max_tokens=2).model\n")
    result = cli(daemon, "run", str(agent), "hi", "--runner", runner, "--model", "sim-mistral-7b")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "sim-mistral-7b"
    refused = cli(daemon, "run", str(agent), "hi", "--runner", runner, "--model", "gpt-9")
    assert refused.exit_code != 0 and "gpt-9" in refused.exception.message


def test_run_detach_prints_a_pid_that_ps_lists(daemon):
    result = cli(daemon, "run", str(CHAT), "hello", "--detach", "--name", "detached-chat")
    assert result.exit_code == 0, result.output
    pid = int(result.stdout.strip())
    listed = processes(daemon)[pid]
    assert listed["name"] == "detached-chat" and listed["program"] == str(CHAT)


@pytest.mark.parametrize("runner", ["subprocess", "inproc"])
def test_an_agent_that_raises_fails_in_one_line_and_keeps_its_traceback_in_its_trace(daemon, tmp_path, runner):
    """No traceback on the terminal (it printed 20-35 lines of frames): one `error:` line
    saying why, one `hint:` line, exit 1; the traceback is in the process's trace (aios logs
    N --trace), and why it failed is its exit reason."""
    agent = tmp_path / "boom.py"
    agent.write_text(RAISING_AGENT)
    r = aios(daemon.home, "run", str(agent), "now", "--runner", runner)
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    assert r.stderr.count("error: RuntimeError: boom: now") == 1, r.stderr
    pid = int(re.search(r"hint: aios logs (\d+) --trace", r.stderr).group(1))
    assert processes(daemon)[pid]["exit_reason"] == "failed: RuntimeError: boom: now"
    logs = aios(daemon.home, "logs", str(pid))   # it printed nothing; why it ended goes to stderr
    assert logs.returncode == 0 and logs.stdout == "" and "RuntimeError: boom: now (exit code 1)" in logs.stderr
    traced = aios(daemon.home, "logs", str(pid), "--trace")
    assert "Traceback (most recent call last)" in traced.stdout and "RuntimeError: boom: now" in traced.stdout
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3} error  RuntimeError: boom: now", traced.stdout), traced.stdout
    assert "exit  1: failed: RuntimeError: boom: now" in traced.stdout


def test_run_shows_the_steps_an_agent_reports_as_it_goes(daemon, tmp_path):
    """Steps (os.step) go to stderr one line each, as they come; the answer to stdout; --quiet
    shows only the answer; the trace keeps them with their times."""
    agent = tmp_path / "stepper.py"
    agent.write_text(STEPPING_AGENT)
    r = aios(daemon.home, "run", str(agent), "Lisbon")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "the answer about Lisbon"
    lines = [" ".join(line.split()) for line in r.stderr.splitlines()]
    assert len(lines) == 3, r.stderr   # one line each; the answer is not said twice
    assert lines[:2] == ["plan 1. look up Lisbon", "action search(query='Lisbon')"]
    assert lines[2].startswith("observation xxxx") and lines[2].endswith("x…")   # cut to the terminal
    quiet = aios(daemon.home, "run", str(agent), "Lisbon", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout.strip() == "the answer about Lisbon"
    pid = max(processes(daemon))
    traced = aios(daemon.home, "logs", str(pid), "--trace")
    assert "plan  1. look up Lisbon" in traced.stdout and "answer  the answer about Lisbon" in traced.stdout


def test_an_agent_file_that_does_not_exist(daemon, tmp_path):
    missing = tmp_path / "missing.py"
    r = aios(daemon.home, "run", str(missing), "hello")
    assert r.returncode == 2
    assert f"error: no agent program at {missing}" in r.stderr and "hint:" in r.stderr


def test_an_agent_that_raises_at_import_is_refused_inproc(daemon, tmp_path):
    agent = tmp_path / "broken.py"
    agent.write_text(BROKEN_AT_IMPORT)
    result = cli(daemon, "run", str(agent), "--runner", "inproc")
    assert isinstance(result.exception, ProgramError) and result.exception.code == "invalid_program"

    r = aios(daemon.home, "run", str(agent), "--runner", "inproc")
    assert r.returncode == 2
    assert f"error: {agent} raised ValueError at import: broken at import" in r.stderr
    assert "hint: run it with python" in r.stderr
    assert all(p["program"] != str(agent) for p in processes(daemon).values())   # refused before recorded


# ---- ps, top, models, tools

def test_ps_table_tree_and_json(daemon, tmp_path):
    agent = tmp_path / "a-program-with-a-long-path" / "slow.py"
    agent.parent.mkdir()
    agent.write_text(SLOW_AGENT)
    with Client(daemon.url) as c:
        parent = c.processes.spawn("tree-parent")
        long = c.processes.spawn("a-long-path", program=str(agent), runner="subprocess")
    with Client(daemon.url, pid=parent.pid) as c:
        child = c.processes.spawn("tree-child")
    try:
        table = cli(daemon, "ps")   # 80 columns: the PROGRAM column gives way, no other
        assert table.exit_code == 0, table.output
        header = plain(table).splitlines()[0].split()
        assert header[:9] == ["PID", "PPID", "NAME", "STATE", "PRI", "RUNNER", "TOKENS", "in/out", "EXIT"]
        assert header[9].startswith("PROG")
        rows = {line.split()[0]: line.split() for line in plain(table).splitlines()[1:] if line.strip()}
        assert rows[str(child.pid)][1:4] == [str(parent.pid), "tree-child", "running"]
        assert rows[str(parent.pid)][1:3] == ["tree-parent", "running"]   # no PPID
        assert rows[str(long.pid)][1:4] == ["a-long-path", "running", "0"]
        # the program's useful end stays: cut at its start, as ps cuts a command line
        shown = rows[str(long.pid)][-1]
        assert shown.startswith("…") and len(shown) > 4 and str(agent).endswith(shown[1:]), shown
        assert all(len(line) <= 80 for line in plain(table).splitlines())

        tree = plain(cli(daemon, "ps", "--tree")).splitlines()
        p_line = next(i for i, line in enumerate(tree) if f"{parent.pid} tree-parent running" in line)
        c_line = tree[p_line + 1]
        assert f"{child.pid} tree-child running" in c_line
        assert c_line.index(str(child.pid)) > tree[p_line].index(str(parent.pid))   # nested under it

        listed = {p["pid"]: p for p in json.loads(cli(daemon, "ps", "--json").stdout)}
        assert set(listed[child.pid]) == PROCESS_FIELDS
        assert listed[child.pid]["parent_pid"] == parent.pid and listed[child.pid]["state"] == "running"
    finally:
        with Client(daemon.url) as c:
            for p in (child, parent, long):
                c.processes.kill(p.pid)


def test_top(daemon):
    frame = cli(daemon, "top", "--once")
    assert frame.exit_code == 0, frame.output
    assert "policy" in plain(frame) and "llm:sim-llama-3-8b" in plain(frame) and "RESOURCE" in plain(frame)
    stats = json.loads(cli(daemon, "top", "--json").stdout)
    assert {"policy", "num_in_flight", "tokens_in", "tokens_out", "resources", "processes"} <= set(stats)
    assert any(r["name"] == "llm:sim-llama-3-8b" for r in stats["resources"])


def test_models_and_tools(daemon):
    assert "sim-llama-3-8b" in json.loads(cli(daemon, "models", "--json").stdout)
    assert "sim-llama-3-8b" in cli(daemon, "models").stdout.split()
    listed = {t["name"]: t for t in json.loads(cli(daemon, "tools", "--json").stdout)}
    assert {"calculator", "search", "read_file", "write_file", "list_files", "http_fetch"} <= set(listed)
    assert listed["calculator"]["parameters"]["required"] == ["expression"]
    assert listed["http_fetch"]["needs_network"] is True
    table = plain(cli(daemon, "tools"))
    rows = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    assert "expression:" in rows["calculator"] and "query:" in rows["search"] and "network" in rows["http_fetch"]


@pytest.mark.parametrize("args", [
    ["ps", "--json"], ["ps", "--all", "--json"], ["ps", "--tree", "--json"], ["top", "--json"],
    ["models", "--json"], ["tools", "--json"], ["kernel", "status", "--json"],
])
def test_every_listing_prints_only_json(daemon, args):
    r = aios(daemon.home, *args)
    assert r.returncode == 0, r.stderr
    json.loads(r.stdout)


# ---- signals and logs

def read_until(fd: int, text: str, timeout_s: float = 20.0) -> str:
    seen = ""
    deadline = time.monotonic() + timeout_s
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"did not see {text!r}; got {seen!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 65536)
            assert chunk, f"the stream ended before {text!r}; got {seen!r}"
            seen += chunk.decode()
    return seen


def os_state(os_pid: int) -> str:
    """The kernel's view of an OS process: R, S, T (stopped), ..."""
    return Path(f"/proc/{os_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_suspend_resume_and_kill_a_running_agent_while_following_its_logs(daemon, tmp_path):
    agent = tmp_path / "slow.py"
    agent.write_text(SLOW_AGENT)
    started = cli(daemon, "run", str(agent), "--detach")
    assert started.exit_code == 0, started.output
    pid = started.stdout.strip()
    follower = subprocess.Popen([sys.executable, "-m", "aios.cli.main", "logs", pid, "-f"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for(daemon.home))
    try:
        seen = read_until(follower.stdout.fileno(), "\n")
        os_pid = int(re.search(r"slow agent started in (\d+)", seen).group(1))

        assert cli(daemon, "suspend", pid).stdout.strip() == f"{pid} suspended"
        assert processes(daemon)[int(pid)]["state"] == "suspended"
        deadline = time.monotonic() + 5   # SIGSTOP is delivered asynchronously: no event to wait on
        while os_state(os_pid) != "T":
            assert time.monotonic() < deadline, f"the agent's OS process is {os_state(os_pid)}, not stopped"
            time.sleep(0.01)

        assert cli(daemon, "resume", pid).stdout.strip() == f"{pid} running"
        assert processes(daemon)[int(pid)]["state"] == "running"
        assert follower.poll() is None   # still following

        assert cli(daemon, "kill", pid).stdout.strip() == f"{pid} exited"
        out, _ = follower.communicate(timeout=10)   # logs -f returns once the process has exited
        assert follower.returncode == 0
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(5)
    assert "finished" not in (seen + out.decode())
    ended = processes(daemon)[int(pid)]
    assert ended["state"] == "exited" and ended["exit_reason"] == "killed"
    with pytest.raises(ProcessLookupError):
        os.kill(os_pid, 0)   # its OS process is gone, not just stopped

    again = aios(daemon.home, "kill", pid)
    assert again.returncode == 2
    assert f"error: process {pid} has already exited" in again.stderr


# ---- no daemon

def test_without_a_daemon_the_commands_say_how_to_start_one(tmp_path):
    r = aios(tmp_path, "ps")
    assert r.returncode == 2
    assert "error: no aios kernel is running" in r.stderr
    assert "hint: start it with `aios kernel start`" in r.stderr


class NotAios(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<html>not here</html>")

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def not_aios():
    """An HTTP server on loopback that is not an aios kernel."""
    server = HTTPServer(("127.0.0.1", 0), NotAios)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(5)


@pytest.mark.parametrize("args", [
    ["ps"], ["top", "--once"], ["top", "--json"], ["logs", "1"], ["logs", "1", "-f"], ["kill", "1"], ["models"],
    ["tools"], ["run", str(CHAT), "hello"],
])
def test_a_wrong_aios_url_is_an_aios_error_for_every_command(args, not_aios):
    """A port where nothing listens, and a server that is not aios: each command ends in an
    AiosError (printed as error/hint, exit 2), never a traceback from httpx or json."""
    for url, says in ((f"http://127.0.0.1:{free_port()}", "no aios kernel answers at"),
                      (not_aios, "without an aios body")):
        result = CliRunner().invoke(app, args, env={"AIOS_URL": url, "AIOS_TOKEN": None})
        assert isinstance(result.exception, AiosError), (url, repr(result.exception))
        assert says in result.exception.message
        if says.startswith("no aios kernel"):
            assert isinstance(result.exception, BackendUnavailable)


# ---- aios fs: the versioned file space

def test_fs_writes_versions_diffs_and_rolls_back(daemon):
    assert cli(daemon, "fs", "write", "cli-notes.md", "--data", "one\ntwo\n").exit_code == 0
    assert cli(daemon, "fs", "write", "cli-notes.md", "--data", "one\n2\n").exit_code == 0
    assert "cli-notes.md" in cli(daemon, "fs", "ls", "cli-").stdout.split()
    found = json.loads(cli(daemon, "fs", "versions", "cli-notes.md", "--json").stdout)
    assert [v["version"] for v in found] == [1, 2]
    diff = cli(daemon, "fs", "diff", "cli-notes.md").stdout
    assert "-two" in diff and "+2" in diff
    back = cli(daemon, "fs", "rollback", "cli-notes.md", "--version", "1")
    assert back.exit_code == 0 and "version 3 restores version 1" in back.stdout
    assert cli(daemon, "fs", "cat", "cli-notes.md").stdout == "one\ntwo\n"
    assert cli(daemon, "fs", "cat", "cli-notes.md", "--version", "2").stdout == "one\n2\n"
    bad = aios(daemon.home, "fs", "rollback", "cli-notes.md", "--version", "9")
    assert bad.returncode == 2 and "no version 9" in bad.stderr
    both = aios(daemon.home, "fs", "rollback", "cli-notes.md")
    assert both.returncode == 2 and "exactly one" in both.stderr
    moved = cli(daemon, "fs", "mv", "cli-notes.md", "cli-moved.md")
    assert moved.exit_code == 0 and "moved cli-notes.md to cli-moved.md (version 1)" in moved.stdout
    assert cli(daemon, "fs", "cat", "cli-moved.md").stdout == "one\ntwo\n"
    clash = aios(daemon.home, "fs", "mv", "cli-moved.md", "cli-moved.md")
    assert clash.returncode == 2 and "onto itself" in clash.stderr
    assert json.loads(cli(daemon, "fs", "versions", "cli-notes.md", "--json").stdout)[-1]["deleted"]
    assert cli(daemon, "fs", "rm", "cli-moved.md").exit_code == 0
    assert json.loads(cli(daemon, "fs", "versions", "cli-moved.md", "--json").stdout)[-1]["deleted"]


# ---- aios memory: entries, search by meaning, working-memory stats

def test_memory_adds_searches_by_meaning_and_reports_stats(daemon):
    assert cli(daemon, "memory", "add", "The boiler was serviced in October by Dave", "--key", "boiler").exit_code == 0
    assert cli(daemon, "memory", "add", "Alice is allergic to peanuts", "--key", "alice").exit_code == 0
    found = json.loads(cli(daemon, "memory", "search", "heating maintenance", "-k", "1", "--json").stdout)
    assert (found["retrieval"], found["index"]) == ("embedding", "sqlite-vec")
    assert [e["key"] for e in found["entries"]] == ["boiler"]
    table = plain(cli(daemon, "memory", "search", "food intolerance", "-k", "1"))
    assert "all-MiniLM-L6-v2, sqlite-vec" in table and "alice" in table
    assert cli(daemon, "memory", "get", "alice").stdout == "Alice is allergic to peanuts\n"
    assert {"boiler", "alice"} <= {e["key"] for e in json.loads(cli(daemon, "memory", "ls", "--json").stdout)}
    stats = json.loads(cli(daemon, "memory", "stats", "--json").stdout)
    assert stats["policy"] == "lru" and {"boiler", "alice"} <= set(stats["resident"])
    assert "hit rate" in cli(daemon, "memory", "stats").stdout
    assert cli(daemon, "memory", "rm", "alice").exit_code == 0
    missing = aios(daemon.home, "memory", "get", "alice")
    assert missing.returncode != 0 and "no memory entry 'alice'" in missing.stderr
    dup = aios(daemon.home, "memory", "add", "again", "--key", "boiler")
    assert dup.returncode == 2 and "already exists" in dup.stderr


# ---- ids as git takes them

def test_confirmations_show_short_ids_that_approve_and_deny_take(daemon):
    """The table shows each held call's shortest unique prefix (it fits 80 columns), which
    `aios approve` and `aios deny` take back; a prefix of both held calls is refused,
    naming both, and decides nothing."""
    with Client(daemon.url) as owner:
        agent = owner.processes.spawn("deleter")
    with Client(daemon.url, pid=agent.pid) as client:
        held = [client.syscall({"kind": "storage", "op": "delete", "path": f"held-{i}"}, wait=False).id
                for i in range(2)]
    table = plain(cli(daemon, "confirmations"))
    shown = re.findall(rf"\b({held[0][:4]}[0-9a-f]*)\b", table)
    assert len(shown) == 2 and all(8 <= len(s) < 32 for s in shown), table
    assert sorted(held) == sorted(next(h for h in held if h.startswith(s)) for s in shown)
    n = 0
    while held[0][n] == held[1][n]:
        n += 1
    both = cli(daemon, "approve", held[0][:n])
    assert both.exit_code != 0 and "is the start of 2 held syscall ids" in both.exception.message
    assert held[0] in both.exception.message and held[1] in both.exception.message
    first = next(s for s in shown if held[0].startswith(s))
    assert cli(daemon, "approve", first).stdout.strip() == f"approved {held[0]}"
    second = next(s for s in shown if held[1].startswith(s))
    assert cli(daemon, "deny", second).stdout.strip() == f"denied {held[1]}"
    assert "nothing is waiting" in plain(cli(daemon, "confirmations"))


# ---- history

def test_history_lists_calls_of_exited_processes_newest_first_with_pages(daemon, tmp_path):
    agent = tmp_path / "three_calls.py"
    agent.write_text("def main(task, os):\n    for w in task.split():\n        os.llm.chat(w, max_tokens=2)\n"
                     "    return 'ok'\n")
    ran = cli(daemon, "run", str(agent), "one two three", "--runner", "inproc")
    assert ran.exit_code == 0, ran.output
    pid = max(processes(daemon))   # the agent just run, exited by now
    listed = json.loads(cli(daemon, "history", "--pid", str(pid), "--json").stdout)
    assert len(listed["data"]) == 3 and all(c["pid"] == pid and c["state"] == "done" for c in listed["data"])
    assert [c["payload"]["messages"][0]["content"] for c in listed["data"]] == ["three", "two", "one"]
    table = plain(cli(daemon, "history", "--pid", str(pid), "--limit", "2"))
    assert table.count("done") == 2 and "older: aios history --before " in table and f"--pid {pid}" in table
    older = table.split("older: aios history ", 1)[1].split()
    rest = cli(daemon, "history", *older)
    assert plain(rest).count("done") == 1
    bad = cli(daemon, "history", "--state", "finished")
    assert bad.exit_code != 0 and "state" in bad.exception.message


def test_what_an_exited_agent_wrote_stays_readable(daemon, tmp_path):
    """fs ls, cat and cp with --pid of an exited agent (they answered 'process N has
    exited'); writing there is still refused, the process being over."""
    ran = cli(daemon, "run", str(NOTES), "plan a trip to Lisbon", "--runner", "inproc")
    assert ran.exit_code == 0 and "wrote notes/plan-a-trip-to.md" in ran.stdout, ran.output
    pid = max(processes(daemon))
    assert processes(daemon)[pid]["state"] == "exited"
    listed = cli(daemon, "fs", "ls", "notes/", "--pid", str(pid))
    assert listed.exit_code == 0 and "notes/plan-a-trip-to.md" in listed.stdout, listed.output
    shown = cli(daemon, "fs", "cat", "notes/plan-a-trip-to.md", "--pid", str(pid))
    assert shown.exit_code == 0 and shown.stdout.strip()
    copied = cli(daemon, "fs", "cp", "notes/plan-a-trip-to.md", str(tmp_path / "plan.md"), "--pid", str(pid))
    assert copied.exit_code == 0, copied.output
    assert (tmp_path / "plan.md").read_text() == shown.stdout
    refused = cli(daemon, "fs", "write", "notes/late.md", "--data", "x", "--pid", str(pid))
    assert refused.exit_code != 0 and "has exited" in refused.exception.message
