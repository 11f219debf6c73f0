"""The daemon: the kernel and its REST endpoint in one long-running process, with its
state under $AIOS_HOME (config, database, logs/, daemon.json naming its pid and URL).

Invariant: at most one daemon per port and per home, and one kernel per database (its
lease, aios.storage.lease); daemon.json exists exactly while one serves."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from aios import owner
from aios.config import Settings
from aios.errors import AiosError, BackendUnavailable, ConfigError, KernelRunning

STATE_FILE = "daemon.json"


class DaemonError(AiosError):
    code = "daemon_error"


@dataclass(frozen=True, slots=True)
class DaemonInfo:
    pid: int
    host: str
    port: int
    started: float

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def state_path(home: Path) -> Path:
    return home / STATE_FILE


def read_info(home: Path) -> DaemonInfo | None:
    """The running daemon's record, or None when none is recorded or its process is gone."""
    try:
        info = DaemonInfo(**json.loads(state_path(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return info if is_alive(info.pid) else None


def is_alive(pid: int) -> bool:
    """True while the process runs; a zombie (exited, not yet reaped by its new parent,
    as a detached daemon's is) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True   # no /proc: trust the signal
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def bind(host: str, port: int) -> socket.socket:
    """Binds the listening socket before anything else starts, so a port in use is said
    plainly (and no other daemon's files are touched)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given, so asyncio sets TCP_NODELAY on accepted connections (it checks proto);
    # with 0, Nagle holds each response body behind its headers until a delayed ACK (~40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise DaemonError(f"port {port} on {host} is already in use",
                              hint="is a kernel running already? `aios kernel status`; or pick --port") from None
        raise DaemonError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def check_free(settings: Settings) -> None:
    """Raises KernelRunning, naming it, when a daemon serves this home or a kernel holds the
    database's lease: before a start opens the database or binds a port. The kernel's own
    lease, taken at its boot, is what decides a race between two starts."""
    from aios.storage import lease
    info = read_info(settings.home)
    if info is not None:
        raise KernelRunning(f"an aios kernel already serves the home {settings.home}: pid {info.pid}, at {info.url}",
                            hint=f'talk to it through the SDK, aios.sdk.Client("{info.url}") (the aios command: '
                                 f"AIOS_URL={info.url}), or give this kernel another home (AIOS_HOME)")
    lease.check(settings.db_url)


def check_exposure(settings: Settings, host: str) -> str:
    """Refuses to listen beyond loopback without tokens (in the settings or the database's
    API tokens, aios.access); returns the line to print."""
    if settings.server.tokens:
        return f"{len(settings.server.tokens)} bearer token(s) configured"
    if _database_tokens(settings):
        return "bearer tokens required (API tokens in the database: aios token list)"
    if not owner.is_loopback(host):
        raise ConfigError(f"refusing to listen on {host} with no tokens configured", field="server.tokens",
                          hint="make one with `aios token create --user NAME`, or add [server.tokens] to the "
                               "config, or listen on 127.0.0.1")
    return "loopback only: no tokens are configured, so every local caller is trusted"


def _database_tokens(settings: Settings) -> bool:
    from aios import access
    from aios.clock import WallClock
    from aios.storage.db import Database
    db = Database(settings.db_url, WallClock())
    db.open()
    try:
        return access.has_tokens(db.engine, time.time())   # type: ignore[arg-type]
    finally:
        db.close()


def serve(settings: Settings, host: str, port: int, *, on_ready: object = None) -> None:
    """Runs the daemon in this process until SIGTERM or SIGINT (or POST /v1/kernel/stop)."""
    import uvicorn   # the daemon's own dependency: `aios` commands that only talk to it skip it

    from aios.server.app import create_app
    check_free(settings)
    exposure = check_exposure(settings, host)
    sock = bind(host, port)
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=int(settings.drain_timeout_s)))
    app.state.server = server
    info = DaemonInfo(os.getpid(), host, sock.getsockname()[1], time.time())
    app.state.endpoint = info.url
    print(f"aios kernel listening on {info.url} (pid {info.pid}; {exposure})", flush=True)
    print(f"state in {home}; database {settings.db_url}", flush=True)
    state_path(home).write_text(json.dumps(asdict(info)))
    try:
        server.run(sockets=[sock])
    finally:
        current = read_info(home)
        if current is None or current.pid == info.pid:
            state_path(home).unlink(missing_ok=True)
        sock.close()


def start_detached(argv: list[str], home: Path, timeout_s: float = 15.0) -> DaemonInfo:
    """Starts `aios kernel start` (argv, without --detach) in its own session, logging to
    $AIOS_HOME/logs/daemon.log, and returns once it answers /healthz."""
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / "daemon.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "aios.cli.main", *argv], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise DaemonError(f"the kernel exited at start (code {proc.returncode}): {' | '.join(tail)}",
                              hint=f"see {log_path}")
        info = read_info(home)
        if info is not None and info.pid == proc.pid and healthy(info):
            return info
        time.sleep(0.05)
    proc.terminate()
    raise DaemonError(f"the kernel did not answer within {timeout_s:g} s", hint=f"see {log_path}")


def healthy(info: DaemonInfo) -> bool:
    try:
        return httpx.get(f"{info.url}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def status(home: Path) -> tuple[DaemonInfo, dict]:
    info = read_info(home)
    if info is None:
        raise BackendUnavailable("no aios kernel is running", hint="start it with `aios kernel start`")
    try:
        health = httpx.get(f"{info.url}/healthz", timeout=2.0).json()
    except (httpx.HTTPError, ValueError) as e:
        raise BackendUnavailable(f"the kernel (pid {info.pid}) does not answer on {info.url}: {e}") from None
    return info, health


def stop(home: Path, *, drain: bool, token: str | None = None, timeout_s: float = 60.0) -> DaemonInfo:
    """Asks the daemon to stop (draining or cancelling its calls) and waits until it is gone.
    Without a token, as the daemon's owner: the owner token of `home` (aios.owner)."""
    info = read_info(home)
    if info is None:
        raise BackendUnavailable("no aios kernel is running", hint="nothing to stop")
    token = token or owner.token_for(info.url, home)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(f"{info.url}/v1/kernel/stop", json={"drain": drain}, headers=headers, timeout=5.0)
        if r.status_code >= 400:
            error = r.json().get("error", {})
            raise DaemonError(f"the kernel refused to stop: {error.get('message', r.text)}", hint=error.get("hint"))
    except httpx.HTTPError:
        os.kill(info.pid, signal.SIGTERM)   # not answering: the signal drains as the config says
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(info.pid):
            return info
        time.sleep(0.05)
    raise DaemonError(f"the kernel (pid {info.pid}) is still running after {timeout_s:g} s",
                      hint=f"kill it with `kill {info.pid}`")
