"""Runners: how an agent program runs. `inproc` runs it as a task in the kernel (trusted,
light: thousands fit); `subprocess` runs it as its own OS process that talks to the
kernel over HTTP, with its output in a log file and its exit code and resource use kept.

An agent program is a Python file or module with `def main(task: str, os: Client) -> str`
or `async def main(task: str, os: AsyncClient) -> str` (see aios.sdk). What main returns
is the process's result; an exception makes it exit with code 1.

Invariant: a runner's `run` returns an Exit on every path but cancellation, and a
cancelled subprocess runner has killed its OS process group before it returns."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from aios.errors import AiosError, InvalidSyscall, NotFound, ProgramError

RUNNERS = ("inproc", "subprocess")
# what a sandboxed agent may import of aios (pyproject maps all but the first outside aios/)
_PACKAGES = ("aios", "aios.agents", "aios.tools", "aios.sandbox")
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


# the agents `aios run NAME` knows without registration (aios.agents), by their modules
BUILTIN_AGENTS = {
    "chat": "aios.agents.examples.chat",
    "notes": "aios.agents.examples.notes",
    "compiler": "aios.agents.compiler",
    "react": "aios.agents.react",
    "parallel-fc": "aios.agents.react.parallel",
}


@dataclass(frozen=True, slots=True)
class Program:
    target: str     # an absolute file path, or a module name
    is_file: bool


@dataclass(frozen=True, slots=True)
class Exit:
    code: int
    reason: str
    cpu_s: float = 0.0
    max_rss_kib: int = 0
    traceback: str | None = None   # of an in-process program that raised (kept in its trace)


def failure_line(e: BaseException) -> str:
    """One line saying why a program failed: an aios error's message and hint; the reason
    an exception gives as its `reason` attribute (an agent that could not answer); else
    the exception's type and the first line of its text."""
    if isinstance(e, AiosError):
        return str(e)
    reason = getattr(e, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def resolve(program: str, registry: Mapping[str, str]) -> Program:
    """A registered name, a .py file, or an importable module; refuses what is none."""
    target = registry.get(program, program)
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise NotFound(f"no agent program at {target}", field="program",
                           hint="give a .py file, a module (pkg.mod) or a registered agent name")
        return Program(str(path), True)
    if not _MODULE.fullmatch(target):
        raise InvalidSyscall(f"{program!r} is not a file, a module name or a registered agent", field="program")
    try:
        found = importlib.util.find_spec(target) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise NotFound(f"no agent module or registered agent named {program!r}", field="program",
                       hint=f"registered agents: {', '.join(sorted(registry)) or 'none'}")
    return Program(target, False)


def load_main(program: Program) -> Callable[..., Any]:
    """Imports the program and returns its `main`; raises ProgramError saying why not."""
    try:
        if program.is_file:
            name = "aios_agent_" + hashlib.blake2b(program.target.encode(), digest_size=6).hexdigest()
            spec = importlib.util.spec_from_file_location(name, program.target)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(program.target)
    except Exception as e:
        raise ProgramError(f"{program.target} raised {type(e).__name__} at import: {e}",
                           field="program", hint="run it with python to see the traceback") from None
    main = getattr(module, "main", None)
    if not callable(main):
        raise ProgramError(f"{program.target} has no main(task, os) function", field="program")
    return main


class InprocRunner:
    """Runs `main` in the kernel's own event loop (async main) or a worker thread (sync
    main), with a client that calls the kernel directly."""
    name = "inproc"

    def __init__(self, main: Callable[..., Any], async_client: Any, make_sync_client: Callable[[], Any]):
        self.main = main
        self.async_client = async_client
        self.make_sync_client = make_sync_client

    async def run(self, task: str, log_path: Path) -> Exit:
        try:
            if inspect.iscoroutinefunction(self.main):
                result = await self.main(task, self.async_client)
            else:
                result = await anyio.to_thread.run_sync(self.main, task, self.make_sync_client(),
                                                        abandon_on_cancel=True)
        except Exception as e:   # why is its exit reason; the traceback goes to its trace
            return Exit(1, f"failed: {failure_line(e)}", traceback=traceback.format_exc())
        _append(log_path, f"{result}\n" if result is not None else "")
        return Exit(0, "exited")

    def suspend(self) -> None:
        """Nothing to stop beyond its syscalls, which the scheduler holds."""

    def resume(self) -> None:
        """See suspend."""


class SubprocessRunner:
    """Runs `python -m aios.agents.run PROGRAM TASK` in its own session, with the kernel's
    URL, a token and its pid in the environment (AIOS_URL, AIOS_TOKEN, AIOS_PID)."""
    name = "subprocess"

    def __init__(self, program: Program, env: Mapping[str, str], sandboxed: bool = False,
                 private: Path | None = None):
        self.program = program
        self.env = env
        self.sandboxed = sandboxed
        self.private = private   # the kernel's state folder: never visible to a sandboxed agent
        self.os_pid: int | None = None

    async def run(self, task: str, log_path: Path) -> Exit:
        cmd = [sys.executable, "-m", "aios.agents.run", self.program.target, task]
        prepared = self._sandbox(cmd) if self.sandboxed else None

        def start() -> subprocess.Popen[bytes]:
            with open(log_path, "ab") as log:
                if prepared is not None:   # nothing of the kernel's environment: only self.env
                    return prepared.start(stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
                return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={**os.environ, **self.env}, start_new_session=True)
        try:
            return await self._wait(await anyio.to_thread.run_sync(start))
        finally:
            if prepared is not None:
                shutil.rmtree(prepared.work, ignore_errors=True)

    def _sandbox(self, cmd: list[str]) -> Any:
        """The agent under bubblewrap (aios.sandbox): the interpreter, the installed packages,
        aios's own and its program's folder read-only, its own work directory, no
        capabilities, its own user id and rlimits, and of the environment only AIOS_URL,
        AIOS_PID, AIOS_TOKEN and AIOS_MODEL. No folder is bound that holds the kernel's state folder,
        its home or its current directory (in sys.path when it was started as `python -m`).
        It shares the host's network: it must reach the kernel."""
        from aios.sandbox import Limits, prepare
        interpreter = Path(os.path.realpath(sys.executable))
        read_only = {str(Path(sys.prefix)), str(Path(sys.base_prefix)), str(interpreter.parent.parent)}
        read_only |= {p for p in sys.path if p and Path(p).is_dir() and not p.startswith("/usr")}
        for package in _PACKAGES:   # an editable install maps them outside site-packages
            spec = importlib.util.find_spec(package)
            read_only |= set(spec.submodule_search_locations or ()) if spec is not None else set()
        hidden = [Path.cwd().resolve(), Path.home().resolve(), *([self.private.resolve()] if self.private else [])]
        read_only = {p for p in read_only if not any(h.is_relative_to(Path(p).resolve()) for h in hidden)}
        target = Path(self.program.target)
        if target.is_file():   # its own folder, even the kernel's current directory: put it in one of its own
            folder = target.resolve().parent
            if self.private is None or not self.private.resolve().is_relative_to(folder):
                read_only.add(str(folder))
        env = {"AIOS_URL": self.env.get("AIOS_URL", ""), "AIOS_PID": self.env.get("AIOS_PID", ""),
               **{k: self.env[k] for k in ("AIOS_TOKEN", "AIOS_MODEL") if k in self.env}}
        limits = Limits(timeout_s=1e9, memory_mb=2048, processes=64, open_files=1024, file_size_mb=256, disk_mb=1024)
        return prepare(cmd, limits=limits, network="host", env=env,
                       read_only=sorted(p for p in read_only if not p.startswith("/usr")))

    async def _wait(self, popen: subprocess.Popen[bytes]) -> Exit:
        self.os_pid = popen.pid
        try:
            _, status, usage = await anyio.to_thread.run_sync(os.wait4, popen.pid, 0, abandon_on_cancel=True)
        except BaseException:   # cancelled: a kill, or the kernel going down
            with anyio.CancelScope(shield=True):
                self._signal(signal.SIGKILL)
                await anyio.to_thread.run_sync(popen.wait)
            raise
        code = os.waitstatus_to_exitcode(status)
        reason = "exited" if code == 0 else (f"killed by signal {-code}" if code < 0 else f"exited with code {code}")
        return Exit(code, reason, usage.ru_utime + usage.ru_stime, usage.ru_maxrss)

    def _signal(self, sig: signal.Signals) -> None:
        if self.os_pid is not None:
            try:
                os.killpg(self.os_pid, sig)
            except ProcessLookupError:
                pass

    def suspend(self) -> None:
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)


def _append(path: Path, text: str) -> None:
    with open(path, "a") as log:
        log.write(text)
