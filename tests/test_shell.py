"""`aios shell` driven through a pseudo-terminal, as a person types at it: built-ins,
a plain-language task for the default agent, a background job, and Ctrl-C stopping the
foreground agent but not the shell."""
from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SLOW_AGENT = '''
import anyio

async def main(task, os):
    print("slow agent started", flush=True)
    await anyio.sleep(60)
    return "finished"
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Terminal:
    """A child process on a pty: write keystrokes, read until a text appears (bounded)."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:   # the child: the pty is its controlling terminal
            os.execve(argv[0], argv, env)
        self.output = ""
        self.closed = False

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, text: str, timeout_s: float = 20.0) -> str:
        deadline = time.monotonic() + timeout_s
        while text not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"did not see {text!r}; the terminal shows:\n{self.output[-2000:]}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    self.output += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:   # the child closed the pty
                    break
        assert text in self.output, self.output[-2000:]
        seen, self.output = self.output, self.output[self.output.index(text) + len(text):]
        return seen

    def close(self) -> int:
        try:
            _, status = os.waitpid(self.pid, 0)
        finally:
            os.close(self.fd)
            self.closed = True
        return os.waitstatus_to_exitcode(status)

    def kill(self) -> None:
        """Ends the child if a test left it running (a failed expect); once reaped, its pid is not ours."""
        if not self.closed:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.close()


@pytest.fixture
def daemon(tmp_path: Path):
    env = {**os.environ, "AIOS_HOME": str(tmp_path), "NO_COLOR": "1", "TERM": "dumb"}
    port = free_port()
    subprocess.run([sys.executable, "-m", "aios.cli.main", "kernel", "start", "--detach", "--port", str(port)],
                   env=env, check=True, capture_output=True, timeout=60)
    yield env
    subprocess.run([sys.executable, "-m", "aios.cli.main", "kernel", "stop", "--cancel"], env=env,
                   capture_output=True, timeout=60)


@pytest.fixture
def shell(daemon) -> Iterator[Terminal]:
    """`aios shell` on a pty, talking to the daemon; killed at teardown if still running."""
    term = Terminal([sys.executable, "-m", "aios.cli.main", "shell"], daemon)
    yield term
    term.kill()


def test_shell_through_a_pty(daemon, shell: Terminal, tmp_path: Path):
    slow = tmp_path / "slow.py"
    slow.write_text(SLOW_AGENT)
    term = shell
    term.expect("aios> ", timeout_s=60.0)   # start-up compiles every module (no bytecode cache in CI)
    term.send("models\n")
    assert "sim-llama-3-8b" in term.expect("aios> ")

    term.send("what does a kernel do\n")          # plain language: the default agent answers
    answer = term.expect("aios> ")
    assert len(answer.split()) > 5

    term.send(f"run {slow} &\n")                  # a background job
    term.expect("[1] ")
    term.expect("aios> ")
    term.send("jobs\n")
    assert "running" in term.expect("aios> ")

    term.send("fg 1\n")                           # to the foreground, then Ctrl-C
    term.expect("slow agent started")
    term.send("\x03")
    assert "stopped process" in term.expect("aios> ")
    term.send("jobs\n")
    assert "exited" in term.expect("aios> ")      # the agent died, the shell did not

    term.send("kill abc\n")
    assert "expected a process id" in term.expect("aios> ")
    term.send("\x03")                             # Ctrl-C at the prompt drops the line
    term.expect("aios> ")
    term.send("ps --all\n")
    assert "slow" in term.expect("aios> ")
    term.send("exit\n")
    assert term.close() == 0
    assert (Path(daemon["AIOS_HOME"]) / "shell_history").read_text().count("\n") >= 5


DELETER_AGENT = '''
async def main(task, os):
    await os.storage.write("notes", "x")
    print("asking to delete", flush=True)
    await os.storage.delete("notes")
    print("deleted", flush=True)
    return "done"
'''


def test_the_shell_announces_and_asks_about_an_irreversible_action(shell: Terminal, tmp_path: Path):
    deleter = tmp_path / "deleter.py"
    deleter.write_text(DELETER_AGENT)
    term = shell
    term.expect("aios> ", timeout_s=60.0)
    term.send(f"run {deleter}\n")
    term.expect("[waiting for your confirmation] process 1: delete notes")   # while it runs in the foreground
    term.send("\x1a")                                 # Ctrl-Z: back to the prompt, which asks
    term.expect("suspended")
    term.expect("wants to delete notes. Allow it? [y/N] ")
    term.send("y\n")
    term.expect("approved")
    term.expect("aios> ")
    term.send("fg 1\n")
    term.expect("deleted")
    term.expect("aios> ")
    term.send("confirm\n")
    assert "nothing is waiting" in term.expect("aios> ")
    term.send("exit\n")
    assert term.close() == 0


def test_q_leaves_aios_top(daemon):
    """`aios top` on a terminal refreshes until q is pressed, then exits 0 and leaves the
    terminal as it found it (cbreak mode only while it runs)."""
    term = Terminal([sys.executable, "-m", "aios.cli.main", "top", "--interval", "0.2"], {**daemon, "TERM": "xterm"})
    try:
        term.expect("q quits", timeout_s=60.0)
        term.expect("RESOURCE")   # a second frame: it is refreshing, not waiting for a line
        term.send("q")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pid, status = os.waitpid(term.pid, os.WNOHANG)
            if pid:
                term.closed = True
                os.close(term.fd)
                assert os.waitstatus_to_exitcode(status) == 0
                return
            time.sleep(0.1)
        raise AssertionError("aios top did not leave on q")
    finally:
        term.kill()


def test_help_lists_commands_only_and_tasks_are_named_for_their_agent(capsys) -> None:
    """`help` lists the commands one types (Ctrl-D is not one: no 'Undocumented commands:
    EOF'); a process is named for its program's last part, not 'aios.agents.examples'."""
    import cmd

    from aios.cli.procs import process_name
    from aios.cli.shell import DEFAULT_AGENT, Shell

    class Offline(Shell):   # the shell's commands, without a kernel to talk to
        def __init__(self) -> None:
            cmd.Cmd.__init__(self)

    Offline().onecmd("help")
    shown = capsys.readouterr().out
    assert "Undocumented" not in shown and "EOF" not in shown and "run" in shown and "approve" in shown
    assert process_name(DEFAULT_AGENT) == "chat"
    assert (process_name("aios.agents.examples.notes"), process_name("./agents/x.py"), process_name("compiler")) == (
        "notes", "x", "compiler")
