"""A throwaway PostgreSQL server on loopback, from the Debian package's binaries: for the
tests and benchmarks that run the database code on a real PostgreSQL (`make` installs the
package). Not for production: it trusts every local connection and skips fsync."""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from aios.errors import BackendUnavailable


def binaries() -> str | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    return found[-1] if found else None


@contextmanager
def local_postgres() -> Iterator[str]:
    """Starts a server of its own on a free loopback port and yields its SQLAlchemy base URL
    (no database name); stops it and removes its files on the way out. Run as the
    `postgres` user when the caller is root (the server refuses root)."""
    bin_dir = binaries()
    if bin_dir is None:
        raise BackendUnavailable("PostgreSQL is not installed", hint="`make` installs the Debian package postgresql")
    folder = tempfile.mkdtemp(prefix="aios-pg-")
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = os.path.join(folder, "data")
    try:
        subprocess.run([*as_user, f"{bin_dir}/initdb", "-D", data, "--auth=trust", "-U", "aios", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, f"{bin_dir}/pg_ctl", "-D", data, "-w", "-l", os.path.join(folder, "log"),
                        "-o", f"-p {port} -h 127.0.0.1 -k {folder} -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
        yield f"postgresql+psycopg://aios@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(base_url: str) -> str:
    """A new, empty database on the server; its URL."""
    import psycopg
    name = f"aios_{uuid.uuid4().hex[:12]}"
    host, port = base_url.split("@", 1)[1].split(":")
    with psycopg.connect(host=host, port=int(port), user="aios", dbname="postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base_url}/{name}"
