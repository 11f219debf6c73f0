"""`aios fs ...`: the versioned file space, yours (the principal's own) or, with --pid, one
of your agents': ls, cat (an old version with --version), write, rm, mv, versions, diff,
rollback (to a version, or to a point in time with --at)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aios.clock import utc_text

app = typer.Typer(help="Files: versioned, with diff and rollback (your own space, or an agent's with --pid).",
                  no_args_is_help=True)
Pid = Annotated[int | None, typer.Option("--pid", help="one of your agent processes' space [default: your own]")]
JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON")]
console = Console()


def _client(pid: int | None):
    from aios.cli.connect import client
    return client(pid)


@app.command("ls")
def ls(prefix: Annotated[str, typer.Argument(help="only paths under this")] = "", pid: Pid = None,
       as_json: JsonFlag = False) -> None:
    """Lists the files."""
    with _client(pid) as c:
        paths = c.storage.list(prefix)
    print(json.dumps(paths) if as_json else "\n".join(paths))


@app.command("cat")
def cat(path: str, version: Annotated[int | None, typer.Option(help="an older version")] = None,
        pid: Pid = None) -> None:
    """Prints a file (or one of its versions)."""
    with _client(pid) as c:
        sys.stdout.write(c.storage.read(path) if version is None else c.storage.read_version(path, version))


@app.command("cp")
def cp(path: str, dest: Annotated[Path, typer.Argument(help="a local file to write (- for standard output)")],
       version: Annotated[int | None, typer.Option(help="an older version")] = None, pid: Pid = None) -> None:
    """Copies a file out of the space (an agent's with --pid, also once it has exited) to a
    local file."""
    with _client(pid) as c:
        data = c.storage.read(path) if version is None else c.storage.read_version(path, version)
    if str(dest) == "-":
        sys.stdout.write(data)
        return
    dest.write_text(data)
    print(f"{path} -> {dest} ({len(data.encode())} bytes)")


@app.command("write")
def write(path: str, data: Annotated[str | None, typer.Option(help="the content [default: standard input]")] = None,
          pid: Pid = None) -> None:
    """Writes a file: a new version of it."""
    text = data if data is not None else sys.stdin.read()
    with _client(pid) as c:
        n = c.storage.write(path, text)
    print(f"wrote {n} bytes to {path}")


@app.command("rm")
def rm(path: str, pid: Pid = None) -> None:
    """Deletes a file (its versions stay; an agent's delete waits for your confirmation)."""
    with _client(pid) as c:
        c.storage.delete(path)
    print(f"deleted {path}")


@app.command("mv")
def mv(path: str, to: str, pid: Pid = None) -> None:
    """Moves a file: a new version at TO, a deletion version at PATH (undone by rollback)."""
    with _client(pid) as c:
        version = c.storage.move(path, to)
    print(f"moved {path} to {to} (version {version})")


@app.command("versions")
def versions(path: str, pid: Pid = None, as_json: JsonFlag = False) -> None:
    """A file's versions, oldest first."""
    with _client(pid) as c:
        found = c.storage.versions(path)
    if as_json:
        print(json.dumps(found))
        return
    table = Table("version", "bytes", "sha256", "when (UTC)", "")
    for v in found:
        when = utc_text(v["created"])
        table.add_row(str(v["version"]), str(v["bytes"]), (v["sha256"] or "")[:12], when,
                      "deleted" if v["deleted"] else "")
    console.print(table)


@app.command("diff")
def diff(path: str, version: Annotated[int | None, typer.Option(help="from [default: the one before]")] = None,
         other: Annotated[int | None, typer.Option(help="to [default: the newest]")] = None, pid: Pid = None) -> None:
    """A unified diff between two versions."""
    with _client(pid) as c:
        sys.stdout.write(c.storage.diff(path, version, other))


@app.command("rollback")
def rollback(path: str, version: Annotated[int | None, typer.Option(help="the version to restore")] = None,
             at: Annotated[str | None, typer.Option(help="restore what it was this long ago: 10m, 2h, 1d")] = None,
             pid: Pid = None) -> None:
    """Restores a version (or the content of some time ago) as a new version."""
    from aios.access import parse_duration
    from aios.errors import ConfigError
    if (version is None) == (at is None):
        raise ConfigError("give exactly one of --version and --at", field="version")
    when = time.time() - parse_duration(at, "at") if at is not None else None
    with _client(pid) as c:
        new = c.storage.rollback(path, version=version, at=when)
    print(f"{path}: version {new} restores " + (f"version {version}" if version else f"the state of {at} ago"))
