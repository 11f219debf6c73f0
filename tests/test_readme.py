"""The README as a doctest: every shell command in its ```sh, ```bash and ```console blocks
is either run here, in the README's order, as one session, and its output checked against
what the README shows, or skipped by name in SKIPPED with the reason. A command the README
gains is in neither list and fails `test_every_command_is_run_or_skipped`, and so does an
entry whose command the README no longer has.

How a block is read: where some lines start with `$ `, those are the commands and the lines
after each are its shown output; otherwise every line is a command. A trailing `\\`
continues a command on the next line, and a trailing `# ...` is a comment.

The session runs each command with `bash -c`, under `set -e -o pipefail`, from nothing:
- PATH is the repository's `.venv/bin`, then the system's, so `aios` and `.venv/bin/aios`
  are the same command; HOME and AIOS_HOME are fresh temporary folders, and no other
  variable (no AIOS_URL, AIOS_TOKEN or provider key) comes from the test's environment.
  What a command exports (`export AIOS_TOKEN=...`) stays for the commands after it.
  Standard input is empty, so `aios mcp serve`, a stdio server, ends as soon as it starts.
- The working directory is a temporary folder holding links to what the commands read
  from the repository (`.venv`, `agents`, `docs`), so that what they write (`mytools.py`,
  `mcp.toml`, `plots/`) never lands in the working tree.
- The daemon listens on a free port, not the README's 8642, so a daemon the user runs
  does not answer in its place: `[server] port` in `$AIOS_HOME/config.toml`, which
  `aios kernel start` reads, and `127.0.0.1:8642` rewritten to that port in the
  commands (the curl URLs). The same file sets `[clock] speed = 20.0`, so the simulated
  LLM writes 20 times faster than real time and the three agents fail in seconds, not
  in half a minute each.
- The README's sections each start the daemon; an `aios kernel start` while the session's
  daemon runs is taken as a restart: `aios kernel stop` first.
- Files the README uses but does not make are written first (FILES), and the placeholder
  token id `3f9c0a1b` is replaced by the id of the token the session made.

Each command has its own timeout, and the session a budget of BUDGET_S. Whatever happens,
the daemon is stopped at the end, and what the session started and left running is killed."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHELLS = ("sh", "bash", "console")
READS = (".venv", "agents", "docs")   # what the commands read from the repository
PORT = "127.0.0.1:8642"               # the README's daemon address, rewritten to the session's
TOKEN_ID = "3f9c0a1b"                 # the README's example token id, replaced by a real one
TIMEOUT_S = 120                       # one command; the longest takes ~16 s on 2 cores
BUDGET_S = 270                        # the session: 60-90 s on 2 cores; under pytest's 300 s
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PS_HEADER = ["PID", "PPID", "NAME", "STATE", "PRI", "RUNNER", "TOKENS", "in/out", "EXIT", "PROGRAM"]

# Commands not run here, each with the reason. Keep it short: a command that can run
# offline in a few seconds belongs in RUN.
SKIPPED = {
    "make demo": "make first reinstalls .venv with pip when pyproject.toml is newer (the network, and the "
                 "shared venv changed), then `aios demo` takes 30 s; tests/test_demo.py runs it smaller",
    "make test": "the test suite this test is part of",
    ".venv/bin/aios top": "a live view until Ctrl-C, for a terminal; tests/test_shell.py drives it in one",
    "OPENAI_API_KEY=sk-... aios kernel start --model openai/gpt-4o-mini": "needs an OpenAI key and the network",
    "OPENAI_API_KEY=... aios kernel start --detach --model openai/gpt-4o-mini": "needs an OpenAI key and the "
                                                                               "network",
    'aios run compiler "How much older is Luciano Pavarotti than Andrea Bocelli?" --model openai/gpt-4o-mini':
        "needs the daemon above, with an OpenAI key and the network",
    "aios bench kernel --json": "about two minutes (114 s on 2 idle cores)",
    "aios bench compiler --json --plot gantt.png": "about two and a half minutes (155 s on 2 idle cores); "
                                                   "tests/test_bench_compiler.py runs a small one",
    "aios bench memory --json": "about a minute (62 s on 2 idle cores), with a PostgreSQL server of its own; "
                                "tests/test_memory_paging.py runs a small one",
    "aios bench hardware --json --plot papers.png": "about ten minutes (621 s on 2 idle cores); "
                                                    "tests/test_bench_hardware.py checks its parts",
}

# Files the README's commands use without making them, written into the working directory
# first. mytools.py is what the README shows `cat mytools.py` print; mcp.toml is the
# manifest its comment sketches.
FILES = {
    "mcp.toml": 'tools = ["search", "read_file"]\nstorage_read = ["docs/*"]\n',
}


@dataclass(frozen=True, slots=True)
class Command:
    text: str                 # as the README writes it: continuations joined, comment left out
    line: int                 # where it starts in README.md
    shown: tuple[str, ...]    # the output the README shows after it


@dataclass(frozen=True, slots=True)
class Ran:
    status: int
    out: str
    err: str


@dataclass(slots=True)
class Session:
    work: Path
    home: Path
    port: int
    env: dict[str, str]
    substitutes: dict[str, str] = field(default_factory=dict)   # placeholder -> the session's value

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, text: str, timeout_s: float, env: dict[str, str] | None = None) -> Ran:
        """Runs `text` with bash in the working directory; keeps what it exported, unless
        `env` is given. Kills its process group if it runs past `timeout_s`."""
        exported = self.work.parent / "exported.env"
        exported.unlink(missing_ok=True)
        script = f'trap "env -0 > {shlex.quote(str(exported))}" EXIT\nset -e -o pipefail\n{text}\n'
        proc = subprocess.Popen(["bash", "-c", script], cwd=self.work, env=env or self.env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                encoding="utf-8", start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{text!r} ran past {timeout_s:.0f} s\nstdout: {out}\nstderr: {err}")
        if env is None and exported.exists():
            pairs = (entry.split("=", 1) for entry in exported.read_text().split("\0") if "=" in entry)
            self.env = {k: v for k, v in pairs if k not in ("_", "SHLVL", "PWD", "OLDPWD")}
        return Ran(proc.returncode, out, err)

    def stop_daemon(self, cancel: bool = False) -> None:
        """`aios kernel stop` with the session's first environment (no token of the README's)."""
        ran = self.run("aios kernel stop" + (" --cancel" if cancel else ""), 60, env=self.fresh_env())
        assert ran.status == 0, ran.err

    def fresh_env(self) -> dict[str, str]:
        return {"PATH": f"{REPO / '.venv' / 'bin'}:{SYSTEM_PATH}", "HOME": str(self.work.parent / "user"),
                "AIOS_HOME": str(self.home), "LANG": "C.UTF-8"}

    def is_daemon_running(self) -> bool:
        return (self.home / "daemon.json").exists()


# ---- reading the README

def without_comment(line: str) -> str:
    """The line up to a `#` that starts a comment: outside quotes, after a space."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def read_block(lines: list[str], first_line: int) -> list[Command]:
    is_transcript = any(line.startswith("$ ") for line in lines)
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        start = i
        i += 1
        if is_transcript and not line.startswith("$ ") or not is_transcript and not without_comment(line):
            continue
        parts = [line.removeprefix("$ ") if is_transcript else line]
        while parts[-1].endswith("\\") and i < len(lines):
            parts[-1] = parts[-1][:-1].rstrip()
            parts.append(lines[i].strip())
            i += 1
        shown: list[str] = []
        while is_transcript and i < len(lines) and not lines[i].startswith("$ "):
            shown.append(lines[i])
            i += 1
        commands.append(Command(without_comment(" ".join(parts)), first_line + start, tuple(shown)))
    return commands


def readme_commands(text: str) -> list[Command]:
    commands: list[Command] = []
    for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if block[1] in SHELLS:
            first_line = text.count("\n", 0, block.start(2)) + 1
            commands += read_block(block[2].splitlines(), first_line)
    return commands


# ---- what each command must do

Check = Callable[[Ran, tuple[str, ...], Session], None]


@dataclass(frozen=True, slots=True)
class Expect:
    check: Check
    status: int = 0


def same_shape(pattern: str, shown: str, actual: str) -> re.Match[str]:
    """Both the README's line and the real one match `pattern`; the real one's match."""
    assert re.fullmatch(pattern, shown), f"the README's line no longer has the shape: {shown!r}"
    found = re.fullmatch(pattern, actual)
    assert found, f"{actual!r} does not have the README's shape {shown!r}"
    return found


def shown_json_fields(shown: tuple[str, ...], got: dict) -> None:
    """Every `"key":value` the README shows with a whole value has that value; values cut
    short with `...` (ids) are left out."""
    literal = r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|null|true|false'
    pairs = re.findall(rf'"(\w+)":({literal})', " ".join(shown))
    assert pairs, shown
    for key, value in pairs:
        if "..." not in value:
            assert got.get(key) == json.loads(value), (key, got.get(key), value)


def said_in_readme(phrase: str) -> str:
    assert f'"{phrase}"' in " ".join(README.read_text().split()), f"the README no longer says {phrase!r}"
    return phrase


def one_error(ran: Ran, phrase: str) -> None:
    """A failed run: one `error:` line, saying `phrase` as the README quotes it, and no answer."""
    errors = [line for line in ran.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and said_in_readme(phrase) in errors[0], ran.err
    assert ran.out == "", ran.out


def table_rows(out: str) -> list[list[str]]:
    """The body rows of a boxed rich table, as their cells."""
    return [[cell.strip() for cell in line.strip("│").split("│")] for line in out.splitlines()
            if line.startswith("│")]


def kernel_started(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    pattern = r"aios kernel started: (http://\S+) \(pid (\d+)\); logs in (\S+)"
    line, = ran.out.splitlines()
    found = same_shape(pattern, shown[0], line) if shown else re.fullmatch(pattern, line)
    assert found and found[1] == s.url and found[3] == str(s.home / "logs"), line


def chat_reply(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # one line of the simulated backend's scripted words, as the README shows
    assert re.fullmatch(r"[a-z]+( [a-z]+)* \.\.\.", shown[0]), shown
    assert re.fullmatch(r"[a-z]+( [a-z]+){4,}\n", ran.out), ran.out


def detached_pid(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    assert ran.out.splitlines() == list(shown)   # "2": the second process of a fresh home


def ps_all(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    lines = ran.out.splitlines()
    assert lines[0].split() == shown[0].split() == PS_HEADER, lines[0]
    rows = {cells[0]: cells for cells in map(str.split, lines[1:])}
    assert sorted(rows) == [row.split()[0] for row in shown[1:]], ran.out
    for row in shown[1:]:
        pid, name, state, pri, runner, tokens, _exit, program = row.split()
        got = rows[pid]
        assert got[1] == name and got[3:5] == [pri, runner] and re.fullmatch(r"\d+/\d+", got[5]), row
        # notes.py was started detached a moment ago: it may still be running
        assert got[2] == state or (name == "notes" and got[2] == "running"), got
        assert got[-1].endswith(Path(program).name), got


def llm_call(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    got = json.loads(ran.out)
    shown_json_fields(shown, got)
    assert re.fullmatch(r"[0-9a-f]{32}", got["id"]) and got["result"]["message"]["role"] == "assistant", got


def sim_table(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # "a summary table": what was simulated, then its figures
    assert ran.out.startswith("Simulated: ") and "\nsummary" in ran.out and "s simulated" in ran.out, ran.out


def sim_plots(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # "plus CDFs and latency against load"
    written = re.findall(r"^wrote (plots/\S+\.png)$", ran.out, re.M)
    assert "latency against load" in ran.out and any("cdf" in name for name in written), ran.out
    assert "plots/latency_vs_load.png" in written and all((s.work / name).is_file() for name in written)


def sim_json(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # "one JSON object"
    assert json.loads(ran.out)["simulated"] is True


def exact(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    assert ran.out.splitlines() == list(shown), ran.out


def tool_call(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    got = json.loads(ran.out)
    shown_json_fields(shown, got)
    assert got["result"] == "HI" and got["error"] is None, got


def tool_removed(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    found = same_shape(r"removed tool shout \((/\S+)/mytools\.py:shout\)", shown[0], ran.out.strip())
    assert Path(found[1]).resolve() == s.work.resolve(), found[1]   # the file added from here


def mcp_attached(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # its stdin ends at once, so it stops at once; it "says on stderr which of the two it does"
    assert f"attached to the daemon at {s.url}" in ran.err, ran.err


def compiler_fails(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    one_error(ran, "the model returned no plan")


def react_fails(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    one_error(ran, "the model does not follow the ReAct format")


def parallel_fc_fails(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    one_error(ran, "the model's reply was cut at the token limit")


BOILER = "The boiler was serviced in October by Dave"


def memory_added(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    assert ran.out == "boiler\n", ran.out


def memory_found(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # "a table", found by the embedding model the README names, in the index it names
    assert "by embeddings (all-MiniLM-L6-v2, sqlite-vec)" in " ".join(ran.out.split()), ran.out
    assert [row[1:] for row in table_rows(ran.out)] == [["boiler", BOILER]], ran.out


def memory_stats(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # "working memory: budget, hits, faults"
    assert re.fullmatch(r"policy lru, \d+ of 4000 tokens, .*; hits \d+, faults \d+, .*\n", ran.out), ran.out


def memory_ls_get_rm(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    assert table_rows(ran.out) == [["boiler", BOILER]], ran.out
    assert ran.out.splitlines()[-2:] == [BOILER, "deleted boiler"], ran.out


def fs_wrote(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    assert ran.out == "wrote 3 bytes to notes.md\n", ran.out


def fs_versions(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # "every version: bytes, sha256, time, deletions"
    assert ["version", "bytes", "sha256", "when (UTC)"] == table_header(ran.out)[:4], ran.out
    sha = [hashlib.sha256(data).hexdigest()[:12] for data in (b"one", b"two")]
    assert [row[:3] for row in table_rows(ran.out)] == [["1", "3", sha[0]], ["2", "3", sha[1]]], ran.out


def table_header(out: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith("┃"))
    return [cell.strip() for cell in line.strip("┃").split("┃")]


def fs_diff(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # "unified diff of the last two"
    lines = ran.out.splitlines()
    assert lines[:2] == ["--- notes.md@1", "+++ notes.md@2"] and "-one" in lines and "+two" in lines, ran.out


def fs_cat_old(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    assert ran.out == "one", ran.out


def fs_rolled_back(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # "restores it as a new version"
    assert ran.out == "notes.md: version 3 restores version 1\n", ran.out


def fs_moved(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    assert ran.out == "moved notes.md to done/notes.md (version 1)\n", ran.out


def token_made(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    assert ran.out == "added user bob\n", ran.out
    assert re.fullmatch(r"aios_[0-9a-f]{8}_\S+", s.env.get("AIOS_TOKEN", "")), "AIOS_TOKEN was not exported"
    assert "shown once" in ran.err, ran.err


def ps_as_bob(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # bob has started nothing, and sees no one else's processes
    assert [line.split() for line in ran.out.splitlines()] == [PS_HEADER], ran.out


def token_listed(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    # "ids and states, never the tokens"
    token = s.env["AIOS_TOKEN"]
    assert table_header(ran.out)[:4] == ["id", "principal", "label", "state"], ran.out
    rows = [row for row in table_rows(ran.out) if row[0]]   # a cell that wraps leaves a row of its own
    assert [(row[1], row[3]) for row in rows] == [("bob", "active")] and token not in ran.out, ran.out
    assert token.startswith(f"aios_{rows[0][0]}_"), (token, rows)
    s.substitutes[TOKEN_ID] = rows[0][0]


def token_revoked(ran: Ran, shown: tuple[str, ...], s: Session) -> None:
    assert ran.out == f"revoked {s.substitutes[TOKEN_ID]}\n", ran.out


RUN = {
    ".venv/bin/aios kernel start --detach": Expect(kernel_started),
    '.venv/bin/aios run agents/examples/chat.py "What does a kernel do?"': Expect(chat_reply),
    '.venv/bin/aios run agents/examples/notes.py "plan a trip to Lisbon" --detach': Expect(detached_pid),
    ".venv/bin/aios ps --all": Expect(ps_all),
    "curl -s 'http://127.0.0.1:8642/v1/syscalls?wait=true' -H 'Content-Type: application/json' -d "
    """'{"kind": "llm", "model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "hi"}], """
    """"max_tokens": 8}'""": Expect(llm_call),
    "aios sim run --config docs/sim/vllm-llama2-7b.toml": Expect(sim_table),
    "aios sim run --config docs/sim/sarathi-sweep.toml --plot plots/": Expect(sim_plots),
    "aios sim run --config docs/sim/llumnix-cluster.toml --json": Expect(sim_json),
    "cat mytools.py": Expect(exact),
    "aios tools add shout mytools.py:shout --timeout-s 5": Expect(exact),
    "curl -s 'http://127.0.0.1:8642/v1/syscalls?wait=true' -H 'Content-Type: application/json' -d "
    """'{"kind": "tool", "tool": "shout", "arguments": {"text": "hi"}}'""": Expect(tool_call),
    "aios tools remove shout": Expect(tool_removed),
    "aios kernel start --detach": Expect(kernel_started),
    "aios mcp serve --manifest mcp.toml": Expect(mcp_attached),
    'aios run compiler "How much older is Luciano Pavarotti than Andrea Bocelli?"': Expect(compiler_fails, 1),
    'aios run react "..."': Expect(react_fails, 1),
    'aios run parallel-fc "..."': Expect(parallel_fc_fails, 1),
    'aios memory add "The boiler was serviced in October by Dave" --key boiler': Expect(memory_added),
    'aios memory search "heating maintenance" -k 3': Expect(memory_found),
    "aios memory stats": Expect(memory_stats),
    "aios memory ls; aios memory get boiler; aios memory rm boiler": Expect(memory_ls_get_rm),
    'aios fs write notes.md --data "one"': Expect(fs_wrote),
    'aios fs write notes.md --data "two"': Expect(fs_wrote),
    "aios fs versions notes.md": Expect(fs_versions),
    "aios fs diff notes.md": Expect(fs_diff),
    "aios fs cat notes.md --version 1": Expect(fs_cat_old),
    "aios fs rollback notes.md --version 1": Expect(fs_rolled_back),
    "aios fs mv notes.md done/notes.md": Expect(fs_moved),
    "aios user add bob && export AIOS_TOKEN=$(aios token create --user bob --expires 30d)": Expect(token_made),
    "aios ps": Expect(ps_as_bob),
    "aios token list": Expect(token_listed),
    f"aios token revoke {TOKEN_ID}": Expect(token_revoked),
}


# ---- the tests

def test_every_command_is_run_or_skipped() -> None:
    commands = readme_commands(README.read_text())
    texts = {c.text for c in commands}
    unknown = [f"README.md:{c.line}: {c.text}" for c in commands if c.text not in RUN and c.text not in SKIPPED]
    assert not unknown, f"neither run nor skipped (add each to RUN, or to SKIPPED with the reason): {unknown}"
    gone = (RUN.keys() | SKIPPED.keys()) - texts
    assert not gone, f"entries whose command the README no longer has: {sorted(gone)}"
    assert not RUN.keys() & SKIPPED.keys()
    unrewritten = [c.text for c in commands if c.text in RUN and "8642" in c.text.replace(PORT, "")]
    assert not unrewritten, f"port 8642 in a form the session does not rewrite: {unrewritten}"
    cat = next(c for c in commands if c.text == "cat mytools.py")
    assert cat.shown, "the README no longer shows mytools.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def session(tmp_path: Path):
    work, home = tmp_path / "work", tmp_path / "home"
    for folder in (work, home, tmp_path / "user"):
        folder.mkdir()
    for name in READS:
        (work / name).symlink_to(REPO / name)
    port = free_port()
    (home / "config.toml").write_text(f"[server]\nport = {port}\n\n[clock]\nspeed = 20.0\n")
    s = Session(work, home, port, env={})
    s.env = s.fresh_env()
    try:
        yield s
    finally:
        stop_for_good(s)


def stop_for_good(s: Session) -> None:
    """Stops the session's daemon, then kills what the session started and left running
    (a daemon that did not stop, or one a timed-out start was still bringing up): every
    process whose AIOS_HOME is the session's own temporary home."""
    if s.is_daemon_running():
        try:
            s.stop_daemon(cancel=True)
        except (AssertionError, pytest.fail.Exception):
            pass   # killed below
    mine = f"AIOS_HOME={s.home}".encode()
    for proc in Path("/proc").iterdir():
        try:
            is_mine = proc.name.isdigit() and mine in (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue   # gone, or not ours to read
        if is_mine:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
def test_readme_commands(session: Session) -> None:
    commands = readme_commands(README.read_text())
    shown_cat = next(c.shown for c in commands if c.text == "cat mytools.py")
    (session.work / "mytools.py").write_text("\n".join(shown_cat) + "\n")
    for name, text in FILES.items():
        (session.work / name).write_text(text)
    deadline = time.monotonic() + BUDGET_S
    for c in commands:
        if c.text in SKIPPED:
            continue
        expect = RUN.get(c.text)
        assert expect, f"README.md:{c.line}: {c.text!r} is neither run nor skipped"
        if c.text.removeprefix(".venv/bin/").startswith("aios kernel start") and session.is_daemon_running():
            session.stop_daemon()   # a section of its own starts the daemon: a restart
        text = c.text.replace(PORT, f"127.0.0.1:{session.port}")
        for placeholder, value in session.substitutes.items():
            text = text.replace(placeholder, value)
        left_s = deadline - time.monotonic()
        assert left_s > 0, f"the session ran past {BUDGET_S} s before README.md:{c.line}"
        ran = session.run(text, min(TIMEOUT_S, left_s))
        where = f"README.md:{c.line}: {text}\nstdout: {ran.out}\nstderr: {ran.err}"
        assert ran.status == expect.status, f"exit status {ran.status}, not {expect.status}, at {where}"
        try:
            expect.check(ran, c.shown, session)
        except AssertionError as e:
            raise AssertionError(f"{e}\nat {where}") from e
