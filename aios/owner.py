"""The owner token: how the user who runs the daemon keeps every right (the `local`
principal's) whatever API tokens exist, with nothing to configure.

The daemon writes a fresh token to $AIOS_HOME/owner.token at each start, mode 0600, once
its kernel holds the database; the `aios` command and the SDK send it by themselves when
AIOS_TOKEN is unset and the URL is the daemon that home records (daemon.json), and the
server maps it to `local`. Why a file and not the peer's address: on loopback every local
user's process looks the same, but only the daemon's own user can read a file of mode
0600 in its home; that is the owner's proof. Why a new one per start: a copy that leaked
(an exported variable, a log) or that was sent to whatever listened on the port after a
crash is worth nothing once the daemon restarts, and no database row has to be kept.

Invariant: the server honours the owner token only while its file is the daemon user's
and readable by no one else; a looser file is refused (aios.server.http), naming it and
the fix. This module stays light: the SDK imports it."""
from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

OWNER_FILE = "owner.token"
DAEMON_FILE = "daemon.json"   # the daemon's record of its pid and address (aios.server.daemon)
FORM = re.compile(r"aios-owner-[A-Za-z0-9_-]{32}")


def path_in(home: Path) -> Path:
    return home / OWNER_FILE


def issue(home: Path) -> str:
    """Writes a new owner token to `home` (mode 0600, replacing any old one in one rename,
    so a reader finds the old token or the new one, never a part) and returns it."""
    token = f"aios-owner-{secrets.token_urlsafe(24)}"
    home.mkdir(parents=True, exist_ok=True)
    target = path_in(home)
    draft = target.with_name(f".{OWNER_FILE}.{os.getpid()}")
    draft.unlink(missing_ok=True)
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)   # whatever the umask
        os.write(fd, f"{token}\n".encode())
    finally:
        os.close(fd)
    os.replace(draft, target)
    return token


def retire(home: Path, token: str) -> None:
    """Removes the owner token file if it still holds `token` (a newer daemon's is kept)."""
    target = path_in(home)
    try:
        if target.read_text().strip() == token:
            target.unlink()
    except OSError:
        pass


def looseness(path: Path) -> str | None:
    """Why the file may not hold the owner's token, or None when it is the daemon user's
    regular file that no one else may read or write. A missing file exposes nothing: None."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_uid != os.geteuid():
        return f"belongs to uid {info.st_uid}, not to the daemon's user ({os.geteuid()})"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return f"has mode {mode:04o}: others may read it"
    return None


def token_for(url: str, home: Path) -> str | None:
    """The owner token of `home`, when `url` is the address of the daemon that `home`
    records; None otherwise (no daemon recorded, another port or host, no token file), so
    the token never goes to a server that is not that daemon."""
    try:
        record = json.loads((home / DAEMON_FILE).read_text())
        token = path_in(home).read_text().strip()
        where = urlsplit(url)
        port = where.port
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or where.scheme != "http" or port != record.get("port"):
        return None
    host, recorded = where.hostname or "", str(record.get("host", ""))
    if host != recorded and not (_is_this_machine(host) and _is_this_machine(recorded)):
        return None
    return token if FORM.fullmatch(token) else None


def token_from_env(url: str, environ: Mapping[str, str]) -> str | None:
    """What a client of `url` without a token of its own sends, as the daemon's owner: the
    owner token of $AIOS_HOME (default ~/.aios) when `url` is that home's daemon. Never in
    an agent (AIOS_PID set): an agent acts as its own process, with the token the kernel
    gave it."""
    if "AIOS_PID" in environ:
        return None
    return token_for(url, Path(environ.get("AIOS_HOME") or "~/.aios").expanduser())


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback."""
    return _is_this_machine(host, unspecified=False)


def _is_this_machine(host: str, unspecified: bool = True) -> bool:
    """Loopback, or (`unspecified`) an address a server listens on for every interface."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or (unspecified and address.is_unspecified)
