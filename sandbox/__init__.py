"""The sandbox: runs untrusted code so that it cannot escape, read what is not its own, or
take the machine down.

`run(argv, limits=Limits(...), network="none")` runs a command under bubblewrap (the Debian
package `bubblewrap`, which `make` installs) in new user, pid, mount, IPC, UTS and cgroup
namespaces, and a new network namespace unless the network is allowed:

- the system is seen read-only (/usr and its /bin, /lib links), with nothing of /etc but
  the loader cache and, when the network is allowed, the resolver and CA files: no
  /etc/shadow, no home directories, no aios database;
- the only writable places are a private work directory (bound at /work, the current
  directory, whose files come back in the result) and a small /tmp in memory;
- every capability is dropped and no new user namespace can be made inside;
- rlimits cap CPU seconds, address space, open files, processes and file size; run as
  root, the sandbox takes a user id of its own, so the process limit counts only its
  processes;
- a watchdog stops it at the wall-clock timeout or when the work directory outgrows its
  disk quota, and the output kept is capped.

Invariant: the sandbox starts from nothing and adds. prlimit and bubblewrap start with an
empty environment and no descriptor but the standard three and the one bubblewrap reads
its settings from and closes. The program's environment is PATH, HOME, LANG, TMPDIR,
PYTHONDONTWRITEBYTECODE and what the caller passes (`env`); it reaches bubblewrap through
that descriptor, not its command line (see `_start`). Inside, the program sees its own
processes and bubblewrap's init, PID 1: /proc/1/environ is empty, /proc/1/cmdline holds
bubblewrap's options (the host paths it binds) and the program's own argv, and /proc/1/mem
(readable: the same user inside) holds no more than that and `env`. Nothing of the
caller's environment, argv, descriptors, home, current directory or $AIOS_HOME is
readable: only what is bound is there.

Where bubblewrap cannot run, `SandboxUnavailable` says why. A weaker mode, `mode="rlimits"`
(rlimits, a fresh directory and the same clean environment, but no namespaces), exists only
when asked for by name, never as a silent fallback. It sees the host's file system, network
and /proc: every process's cmdline, the kernel's included. Run as root it has a user id of
its own, so other processes' environ and memory and files readable only by their owner
(a 0600 token, the database) stay closed; run as another user it is that user, and reads
all of it, the kernel's environment included.

What is not isolated: the kernel itself (a kernel exploit escapes any namespace), CPU time
shared with the host within the CPU limit, and the host's /usr (read-only)."""
from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aios.errors import ConfigError, SandboxUnavailable

Mode = Literal["bwrap", "rlimits"]
Network = Literal["none", "host"]

EXIT_TIMEOUT = 124       # the command ran past its wall-clock timeout (as coreutils' timeout)
EXIT_LIMIT = 125         # another limit stopped it: CPU time, a signal from a limit, the disk quota
EXIT_UNAVAILABLE = 69    # the sandbox cannot run here (sysexits' EX_UNAVAILABLE)

_UID_BASE, _UID_SPAN = 200_000, 60_000   # run as root: a user id of its own from this range
_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class Limits:
    """What a sandboxed command may use. Sizes in MiB; `cpu_s` defaults to the timeout."""
    timeout_s: float = 30.0
    memory_mb: int = 512          # address space
    cpu_s: int | None = None
    processes: int = 64
    open_files: int = 256
    file_size_mb: int = 64        # the largest file it may write
    disk_mb: int = 256            # all it may write to its work directory
    tmp_mb: int = 64              # its /tmp, in memory
    output_kb: int = 1024         # stdout and stderr kept, each

    def __post_init__(self) -> None:
        checks = {"timeout_s": self.timeout_s > 0, "memory_mb": self.memory_mb >= 16, "processes": self.processes >= 1,
                  "open_files": self.open_files >= 8, "file_size_mb": self.file_size_mb >= 1,
                  "disk_mb": self.disk_mb >= 1, "tmp_mb": self.tmp_mb >= 1, "output_kb": self.output_kb >= 1,
                  "cpu_s": self.cpu_s is None or self.cpu_s >= 1}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"sandbox limit {name} = {getattr(self, name)} is out of range", field=name,
                                  hint="timeout_s > 0, memory_mb >= 16, processes >= 1, open_files >= 8, sizes >= 1")

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else max(1, int(self.timeout_s + 1))


@dataclass(slots=True)
class SandboxResult:
    argv: list[str]
    exit_code: int                # the command's (128 + N if a signal N ended it)
    stdout: str
    stderr: str
    duration_s: float
    mode: Mode
    network: Network
    stopped_by: str | None = None   # "timeout" | "cpu" | "disk" | "signal" when the sandbox or a limit ended it
    message: str = ""               # what stopped it, in words
    files: dict[str, int] = field(default_factory=dict)      # what it left in /work: path -> bytes
    contents: dict[str, bytes] = field(default_factory=dict)  # the small ones, read back
    truncated: bool = False         # stdout or stderr was cut at the output limit

    @property
    def cli_exit_code(self) -> int:
        """The command's exit code, or EXIT_TIMEOUT / EXIT_LIMIT when a limit stopped it."""
        if self.stopped_by == "timeout":
            return EXIT_TIMEOUT
        if self.stopped_by in ("cpu", "disk"):
            return EXIT_LIMIT
        return self.exit_code


def unavailable_reason() -> str | None:
    """Why bubblewrap cannot run here (None if it can): it is tried once, on a no-op."""
    return _probe()


@functools.cache
def _probe() -> str | None:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed"
    try:
        p = subprocess.run([bwrap, *_namespace_args("none"), *_system_binds("none"), "--", "/usr/bin/true"],
                           capture_output=True, text=True, timeout=20, env={})
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"bwrap could not start: {e}"
    if p.returncode != 0:
        return f"bwrap cannot create its namespaces here: {p.stderr.strip()[-300:] or f'exit {p.returncode}'}"
    return None


def run(argv: Sequence[str], *, limits: Limits | None = None, network: Network = "none", mode: Mode = "bwrap",
        files: Mapping[str, bytes | str] | None = None, stdin: bytes | None = None,
        env: Mapping[str, str] | None = None, read_back_bytes: int = 64 * 1024) -> SandboxResult:
    """Runs `argv` in the sandbox and waits for it. `files`: written to its work directory
    first (relative paths). `read_back_bytes`: files up to this size come back in
    `contents`. Raises SandboxUnavailable (mode "bwrap" where bubblewrap cannot run) or
    ConfigError (a bad argument); a command that fails or is stopped is a result."""
    limits = limits or Limits()
    argv = [str(a) for a in argv]
    if not argv:
        raise ConfigError("nothing to run: give the command and its arguments", field="argv")
    if network not in ("none", "host"):
        raise ConfigError(f"unknown network setting {network!r}", field="network", hint="none or host")
    if mode not in ("bwrap", "rlimits"):
        raise ConfigError(f"unknown sandbox mode {mode!r}", field="mode", hint="bwrap, or rlimits (weaker) by name")
    if mode == "bwrap" and (why := _probe()) is not None:
        raise SandboxUnavailable(f"the sandbox cannot run: {why}",
                                 hint="install the Debian package bubblewrap (the Makefile does), or ask for the "
                                      "weaker mode 'rlimits' by name")
    root = os.geteuid() == 0
    uid = _UID_BASE + secrets.randbelow(_UID_SPAN) if root else os.getuid()
    gid = uid if root else os.getgid()
    work = Path(tempfile.mkdtemp(prefix="aios-sandbox-"))
    try:
        _seed(work, files or {})
        if root:
            for p in [work, *work.rglob("*")]:
                os.lchown(p, uid, gid)
        os.chmod(work, 0o700)
        inside = mode == "bwrap"   # its own mount namespace: the work directory is /work
        variables = _environment(env or {}, home="/work" if inside else str(work), tmp="/tmp" if inside else str(work))
        command = _command(limits, network, mode, work, root)
        return _supervise(command, argv, variables, limits, network, mode, work, uid if root else None, stdin,
                          read_back_bytes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _seed(work: Path, files: Mapping[str, bytes | str]) -> None:
    for name, data in files.items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or "\x00" in name or not rel.parts:
            raise ConfigError(f"a sandbox file must be a relative path inside the work directory, not {name!r}",
                              field="files")
        path = work / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)


def _namespace_args(network: Network, new_session: bool = True) -> list[str]:
    args = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--cap-drop", "ALL", "--hostname", "sandbox"]
    if new_session:   # no terminal injection (TIOCSTI); an agent keeps its process group, to be stopped
        args.append("--new-session")
    if network == "none":
        args.append("--unshare-net")
    return args


def _system_binds(network: Network) -> list[str]:
    """A read-only view of the system: /usr and the merged-/usr links, the loader cache;
    with the network, the resolver and CA files. Nothing else of /etc."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "lib", "lib64", "sbin", "lib32"):
        host = Path("/") / top
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{top}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{top}"]
    etc = ["/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime"]
    if network == "host":
        etc += ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/ssl", "/etc/ca-certificates"]
    for path in etc:
        args += ["--ro-bind-try", path, path]
    return args + ["--proc", "/proc", "--dev", "/dev"]


def _environment(env: Mapping[str, str], home: str, tmp: str) -> dict[str, str]:
    """The program's whole environment: a fixed few variables and what the caller passes;
    nothing is inherited."""
    for key, value in env.items():
        if not key or "=" in key or "\x00" in key or "\x00" in value:
            raise ConfigError(f"sandbox environment variable {key!r} is not a name=value pair", field="env",
                              hint="a non-empty name without '=' or NUL, and a value without NUL")
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "TMPDIR": tmp,
            "PYTHONDONTWRITEBYTECODE": "1", **env}


def _command(limits: Limits, network: Network, mode: Mode, work: Path, root: bool,
             read_only: Sequence[str] = (), cpu: bool = True, new_session: bool = True,
             mount: str = "/work") -> list[str]:
    """prlimit, then (mode bwrap) bubblewrap and its options; `_start` adds the environment
    and `argv`."""
    mib = 1 << 20
    # as root the process limit counts only this sandbox's own user id; otherwise the
    # caller's processes count too, so the limit is raised by what the caller already runs
    nproc = limits.processes if root else limits.processes + _processes_of(os.getuid())
    rlimits = [shutil.which("prlimit") or "/usr/bin/prlimit", f"--nproc={nproc}", f"--as={limits.memory_mb * mib}",
               *([f"--cpu={limits.cpu_seconds}"] if cpu else []), f"--fsize={limits.file_size_mb * mib}",
               f"--nofile={limits.open_files}", "--core=0", "--"]
    if mode == "rlimits":
        return rlimits
    box = [shutil.which("bwrap") or "/usr/bin/bwrap", *_namespace_args(network, new_session), *_system_binds(network),
           "--size", str(limits.tmp_mb * mib), "--tmpfs", "/tmp"]
    for path in read_only:   # after /tmp: a bound folder may lie under it
        box += ["--ro-bind", path, path]
    return rlimits + box + ["--bind", str(work), mount, "--chdir", mount]


def _start(command: list[str], argv: list[str], env: Mapping[str, str], mode: Mode, uid: int | None,
           **popen: Any) -> subprocess.Popen[bytes]:
    """Starts `command` (from `_command`) on `argv` with nothing of the caller's environment
    or descriptors. Mode rlimits: the program's environment is prlimit's. Mode bwrap:
    prlimit and bubblewrap start with an empty environment, and the program's reaches
    bubblewrap as `--clearenv --setenv ...` read from a memfd (`--args FD`), which bubblewrap
    closes before the program starts. So bubblewrap, the PID 1 the program sees, holds in its
    environ nothing, in its cmdline no value, and in its memory (its /proc/1/mem is readable
    from inside: same user in the namespace) only what the program is given anyway; and no
    one on the host sees the values in `ps`. `--setenv` on the command line would show them
    there; passing them as bubblewrap's own environment would run host binaries (prlimit,
    bwrap) under variables a caller chose (LD_PRELOAD)."""
    kwargs: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    if mode == "rlimits":
        return subprocess.Popen(command + argv, env=dict(env), close_fds=True, **kwargs, **popen)
    settings = ["--clearenv"]
    for key, value in env.items():
        settings += ["--setenv", key, value]
    fd = os.memfd_create("aios-sandbox-env")
    try:
        data = b"".join(a.encode() + b"\x00" for a in settings)
        while data:
            data = data[os.write(fd, data):]
        os.lseek(fd, 0, os.SEEK_SET)
        return subprocess.Popen([*command, "--args", str(fd), "--", *argv], env={}, close_fds=True, pass_fds=(fd,),
                                **kwargs, **popen)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Prepared:
    """A sandboxed command to start yourself (a long-running agent) with `start`: `argv`
    with the environment `env` and nothing else of the caller's, in `work`, which the
    caller removes once it is over."""
    command: list[str]    # prlimit, bubblewrap and its options
    argv: list[str]
    env: dict[str, str]
    work: Path

    def start(self, **popen: Any) -> subprocess.Popen[bytes]:
        """Popen's streams and session options; not its environment or descriptors."""
        return _start(self.command, self.argv, self.env, "bwrap", None, **popen)


def prepare(argv: Sequence[str], *, limits: Limits, network: Network, read_only: Sequence[str] = (),
            env: Mapping[str, str] | None = None) -> Prepared:
    """The command that runs `argv` in the sandbox with `read_only` host paths bound at
    the same place, no CPU-time limit and no wall-clock watchdog (the caller supervises
    it), keeping its process group so that it can be stopped and continued as a whole.
    Raises SandboxUnavailable where bubblewrap cannot run, ConfigError for a bad `env`.

    It runs under the caller's own user id, seen inside as nobody (65534): the interpreter
    and packages it needs may live in folders only that user can read (a pyenv under
    /root). Only what is bound is visible, read-only but for its work directory; the
    process limit then counts the caller's processes too (it is raised by what runs)."""
    if (why := _probe()) is not None:
        raise SandboxUnavailable(f"the sandbox cannot run: {why}",
                                 hint="install the Debian package bubblewrap (the Makefile does)")
    # its work directory at /sandbox: host paths it needs may lie under /work
    variables = _environment(env or {}, home="/sandbox", tmp="/tmp")
    work = Path(tempfile.mkdtemp(prefix="aios-agent-"))
    os.chmod(work, 0o700)
    command = _command(limits, network, "bwrap", work, root=False, read_only=[str(p) for p in read_only], cpu=False,
                       new_session=False, mount="/sandbox")
    at = command.index("--cap-drop")
    command[at:at] = ["--uid", "65534", "--gid", "65534"]
    return Prepared(command, [str(a) for a in argv], variables, work)


def _processes_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += 1
            except OSError:
                continue
    return count


def _supervise(command: list[str], argv: list[str], env: dict[str, str], limits: Limits, network: Network,
               mode: Mode, work: Path, uid: int | None, stdin: bytes | None, read_back_bytes: int) -> SandboxResult:
    cap = limits.output_kb * 1024
    start = time.monotonic()
    try:
        proc = _start(command, argv, env, mode, uid, cwd=str(work) if mode == "rlimits" else None,
                      stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        raise SandboxUnavailable(f"the sandbox could not start {command[0]}: {e.strerror or e}",
                                 hint="is util-linux's prlimit installed?") from None
    out, err = _Drain(proc.stdout, cap), _Drain(proc.stderr, cap)
    if stdin is not None and proc.stdin is not None:
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except OSError:
            pass
    stopped_by, message = None, ""
    while proc.poll() is None:
        elapsed = time.monotonic() - start
        if elapsed > limits.timeout_s:
            stopped_by, message = "timeout", f"stopped after its {limits.timeout_s:g} s timeout"
        elif _size(work) > limits.disk_mb * (1 << 20):
            stopped_by, message = "disk", f"stopped: it wrote more than its {limits.disk_mb} MiB disk quota"
        if stopped_by:
            _kill(proc)
            break
        try:
            proc.wait(timeout=_POLL_S)
        except subprocess.TimeoutExpired:
            pass
    proc.wait()
    out.join()
    err.join()
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    if stopped_by is None and code > 128:
        sig = code - 128
        if sig in (signal.SIGXCPU, signal.SIGKILL) and time.monotonic() - start < limits.timeout_s \
                and _cpu_bound(code, limits):
            stopped_by, message = "cpu", f"stopped at its {limits.cpu_seconds} s CPU limit"
        elif sig == signal.SIGXFSZ:
            stopped_by, message = "signal", f"stopped at its {limits.file_size_mb} MiB file size limit"
    files = {str(p.relative_to(work)): p.stat().st_size for p in sorted(work.rglob("*")) if p.is_file()}
    contents = {name: (work / name).read_bytes() for name, size in files.items() if size <= read_back_bytes}
    if not stopped_by and any(size >= limits.file_size_mb * (1 << 20) for size in files.values()):
        message = f"a file reached its {limits.file_size_mb} MiB size limit"
    return SandboxResult(argv, code, out.text(), err.text(), time.monotonic() - start, mode, network, stopped_by,
                         message, files, contents, out.truncated or err.truncated)


def _cpu_bound(code: int, limits: Limits) -> bool:
    """SIGXCPU is the CPU limit's; a SIGKILL is too when it came after the soft limit (the
    hard limit is the same here, so the kernel sends SIGKILL right away)."""
    return code - 128 == signal.SIGXCPU or limits.cpu_seconds < limits.timeout_s


def _kill(proc: subprocess.Popen) -> None:
    """The whole sandbox: bwrap dies, and with it (die-with-parent) the pid namespace."""
    for target in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            target()
        except (ProcessLookupError, PermissionError):
            pass


def _size(work: Path) -> int:
    total = 0
    stack = [str(work)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        continue
        except OSError:
            continue
    return total


class _Drain:
    """Reads a pipe to its end on a thread, keeping the first `cap` bytes."""

    def __init__(self, pipe, cap: int):
        self.cap, self.data, self.truncated = cap, bytearray(), False
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        with pipe:
            while chunk := pipe.read(65536):
                room = self.cap - len(self.data)
                if room > 0:
                    self.data += chunk[:room]
                if len(chunk) > max(room, 0):
                    self.truncated = True

    def join(self) -> None:
        self._thread.join()

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


__all__ = ["EXIT_LIMIT", "EXIT_TIMEOUT", "EXIT_UNAVAILABLE", "Limits", "Prepared", "SandboxResult",
           "SandboxUnavailable", "prepare", "run", "unavailable_reason"]
