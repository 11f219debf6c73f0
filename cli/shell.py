"""`aios shell`: an interactive shell on the kernel. Built-in commands (ps, kill 12,
run PROGRAM TASK, a trailing & for the background, jobs, fg, bg, logs, models, tools)
mix with plain-language lines, which go to the default agent as its task.

History (kept in $AIOS_HOME/shell_history) and tab completion come from readline.
Ctrl-C stops the foreground agent, never the shell; Ctrl-Z suspends it into `jobs`."""
from __future__ import annotations

import cmd
import json
import os
import shlex
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import readline

from aios.cli import access as access_cli
from aios.cli import procs
from aios.cli.connect import client, kernel_request
from aios.config import load_settings
from aios.errors import AiosError

DEFAULT_AGENT = "aios.agents.examples.chat"
BUILTINS = ("ps", "run", "jobs", "fg", "bg", "kill", "suspend", "resume", "logs", "models", "tools",
            "confirm", "approve", "deny", "help", "exit")


class Suspended(Exception):
    """Ctrl-Z while an agent runs in the foreground."""


class Shell(cmd.Cmd):
    intro = ("aios shell: built-ins are " + ", ".join(BUILTINS) + ";\n"
             "any other line is a task for the default agent. Ctrl-C stops the agent, Ctrl-D leaves.")
    prompt = "aios> "

    def __init__(self, default_agent: str = DEFAULT_AGENT):
        super().__init__()
        self.default_agent = default_agent
        self.jobs: dict[int, int] = {}   # job number -> pid
        self.os = client()

    # ---- running agents

    def _spawn(self, program: str, task: str, runner: str) -> int:
        proc = self.os.processes.spawn(procs.process_name(program), program=procs.program_path(program),
                                       task=task, runner=runner)
        return proc.pid

    def _foreground(self, pid: int) -> None:
        """Follows the agent's output until it exits; Ctrl-C kills it, Ctrl-Z suspends it.
        An irreversible action it asks for meanwhile is announced: Ctrl-Z, then answer."""
        stop = threading.Event()
        watcher = threading.Thread(target=self._announce_held, args=(stop,), daemon=True)
        watcher.start()
        try:
            with _sigtstp_raises():
                procs.follow_logs(pid, follow=True)
        except KeyboardInterrupt:
            self.os.processes.kill(pid)
            print(f"\n^C: stopped process {pid}")
        except Suspended:
            self.os.processes.suspend(pid)
            job = self._add_job(pid)
            print(f"\n[{job}] suspended  {pid}")
        finally:
            stop.set()

    # ---- confirmation of irreversible actions

    def _held(self) -> list[dict]:
        try:
            return kernel_request("GET", "/v1/confirmations")
        except AiosError:
            return []

    def _announce_held(self, stop: threading.Event) -> None:
        seen: set[str] = set()
        while not stop.wait(0.5):
            for call in self._held():
                if call["id"] not in seen:
                    seen.add(call["id"])
                    print(f"\n[waiting for your confirmation] process {call['pid']}: {_describe(call)}"
                          " (Ctrl-Z, then answer at the prompt)", flush=True)

    def _ask(self) -> None:
        """Asks, for each held action, whether it may go ahead."""
        for call in self._held():
            try:
                answer = input(f"process {call['pid']} wants to {_describe(call)}. Allow it? [y/N] ")
            except EOFError:
                answer = ""
            approve = answer.strip().lower() in ("y", "yes")
            try:
                kernel_request("POST", f"/v1/confirmations/{call['id']}", {"approve": approve})
                print("approved" if approve else "denied")
            except AiosError as e:
                print(f"error: {e.message}")

    def postcmd(self, stop: bool, line: str) -> bool:
        if not stop:
            self._ask()
        return stop

    def do_confirm(self, arg: str) -> None:
        """confirm: asks about each irreversible action agents wait to run."""
        if not self._held():
            print("nothing is waiting for a confirmation")

    def do_approve(self, arg: str) -> None:
        """approve ID: lets a held irreversible action run."""
        access_cli.approve(arg.strip())

    def do_deny(self, arg: str) -> None:
        """deny ID: refuses a held irreversible action."""
        access_cli.deny(arg.strip())

    def _add_job(self, pid: int) -> int:
        job = max(self.jobs, default=0) + 1
        self.jobs[job] = pid
        return job

    def _job_pid(self, arg: str) -> int:
        spec = arg.strip().lstrip("%")
        if not spec:
            if not self.jobs:
                raise AiosError("no jobs")
            return self.jobs[max(self.jobs)]
        if not spec.isdigit() or int(spec) not in self.jobs:
            raise AiosError(f"no job {arg.strip()}", hint="see `jobs`")
        return self.jobs[int(spec)]

    # ---- built-ins

    def do_run(self, arg: str) -> None:
        """run PROGRAM [TASK...] [&]: runs an agent; with a trailing &, in the background."""
        background = arg.rstrip().endswith("&")
        words = shlex.split(arg.rstrip().rstrip("&"))
        if not words:
            print("usage: run PROGRAM [TASK...] [&]")
            return
        pid = self._spawn(words[0], " ".join(words[1:]), "subprocess")   # as `aios run` does
        if background:
            print(f"[{self._add_job(pid)}] {pid}")
        else:
            self._foreground(pid)

    def do_jobs(self, arg: str) -> None:
        """jobs: the agents started from this shell, and their state."""
        for job, pid in sorted(self.jobs.items()):
            p = self.os.processes.get(pid)
            print(f"[{job}] {p.state.value:<9} {pid} {p.name}")

    def do_fg(self, arg: str) -> None:
        """fg [JOB]: brings a job to the foreground (resuming it if suspended)."""
        pid = self._job_pid(arg)
        if self.os.processes.get(pid).state.value == "suspended":
            self.os.processes.resume(pid)
        self._foreground(pid)

    def do_bg(self, arg: str) -> None:
        """bg [JOB]: resumes a suspended job in the background."""
        pid = self._job_pid(arg)
        self.os.processes.resume(pid)
        print(f"{pid} running")

    def do_ps(self, arg: str) -> None:
        """ps [--all] [--tree]: lists processes."""
        procs.ps(all_="--all" in arg or "-a" in arg.split(), tree="--tree" in arg, as_json="--json" in arg)

    def do_kill(self, arg: str) -> None:
        """kill PID: stops a process."""
        procs.kill(_pid(arg))

    def do_suspend(self, arg: str) -> None:
        """suspend PID"""
        procs.suspend(_pid(arg))

    def do_resume(self, arg: str) -> None:
        """resume PID"""
        procs.resume(_pid(arg))

    def do_logs(self, arg: str) -> None:
        """logs PID: a process's output so far."""
        procs.logs(_pid(arg), follow=False)

    def do_models(self, arg: str) -> None:
        """models: the models the kernel serves."""
        procs.models()

    def do_tools(self, arg: str) -> None:
        """tools: the tools the kernel offers."""
        procs.tools()

    def do_exit(self, arg: str) -> bool:
        """exit: leaves the shell (agents started here keep running)."""
        return True

    def do_EOF(self, arg: str) -> bool:   # noqa: N802 (cmd's name for Ctrl-D)
        print()
        return True

    def get_names(self) -> list[str]:
        """The commands `help` lists: all but EOF, which is Ctrl-D, not a command to type."""
        return [n for n in super().get_names() if n != "do_EOF"]

    # ---- everything else is a task for the default agent

    def default(self, line: str) -> None:
        background = line.rstrip().endswith("&")
        task = line.rstrip().rstrip("&").strip()
        pid = self._spawn(self.default_agent, task, "inproc")
        if background:
            print(f"[{self._add_job(pid)}] {pid}")
        else:
            self._foreground(pid)

    def emptyline(self) -> None:
        return None

    def onecmd(self, line: str) -> bool:
        try:
            return super().onecmd(line)
        except AiosError as e:
            print(f"error: {e.message}" + (f" ({e.hint})" if e.hint else ""))
        except ValueError as e:   # shlex on an unclosed quote
            print(f"error: {e}")
        return False

    def completenames(self, text: str, *ignored: object) -> list[str]:
        return [b + " " for b in BUILTINS if b.startswith(text)]

    def complete_run(self, text: str, line: str, begidx: int, endidx: int) -> list[str]:
        return _complete_path(text)

    def cmdloop(self, intro: str | None = None) -> None:
        """As cmd's loop, but Ctrl-C at the prompt drops the line instead of the shell."""
        print(self.intro)
        while True:
            try:
                super().cmdloop(intro="")
                return
            except KeyboardInterrupt:
                print("^C")


def _describe(call: dict) -> str:
    """A held call in words: `run tool send {"to": "bob"}`, `delete notes`."""
    payload = call.get("payload") or {}
    if payload.get("tool"):
        return f"run tool {payload['tool']} {json.dumps(payload.get('arguments') or {})}"
    return f"{payload.get('op', call['kind'])} {payload.get('path', '')}".strip()


def _pid(arg: str) -> int:
    word = arg.strip()
    if not word.isdigit():
        raise AiosError(f"expected a process id, got {word!r}")
    return int(word)


def _complete_path(text: str) -> list[str]:
    base = Path(text).expanduser()
    folder = base if text.endswith("/") else base.parent
    try:
        names = sorted(os.listdir(folder if str(folder) else "."))
    except OSError:
        return []
    prefix = "" if text.endswith("/") else base.name
    stem = text[: len(text) - len(prefix)]
    return [stem + n + ("/" if (folder / n).is_dir() else "") for n in names if n.startswith(prefix)]


@contextmanager
def _sigtstp_raises() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Suspended
    previous = signal.signal(signal.SIGTSTP, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTSTP, previous)


def run_shell() -> None:
    history = load_settings().home / "shell_history"
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    readline.set_completer_delims(" \t\n")
    readline.parse_and_bind("tab: complete")
    shell = Shell()
    try:
        shell.cmdloop()
    finally:
        history.parent.mkdir(parents=True, exist_ok=True)
        readline.set_history_length(1000)
        readline.write_history_file(history)
