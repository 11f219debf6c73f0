"""A throwaway PostgreSQL server on loopback, from the Debian package's binaries: for the
tests and benchmarks that run the database code on a real PostgreSQL (`make` installs the
package). Not for production: it trusts every local connection and skips fsync.

Debian's PostgreSQL 15 has no pgvector package (bookworm); `with_pgvector()` finds a
PostgreSQL that has it: the server binaries with pgvector that the PyPI package
`pgserver` ships (a test dependency), run the same way."""
from __future__ import annotations

import atexit
import glob
import importlib.util
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


def with_pgvector() -> str | None:
    """A bin folder of a PostgreSQL that has the pgvector extension (an installed one
    first, then pgserver's build), or None."""
    found = []
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin")):
        share = subprocess.run([f"{candidate}/pg_config", "--sharedir"], capture_output=True, text=True).stdout.strip() \
            if os.path.exists(f"{candidate}/pg_config") else f"/usr/share/postgresql/{candidate.split('/')[-2]}"
        if os.path.exists(f"{share}/extension/vector.control"):
            found.append(candidate)
    spec = importlib.util.find_spec("pgserver")   # not imported: only its binaries are used
    if spec is not None and spec.submodule_search_locations:
        bundled = os.path.join(list(spec.submodule_search_locations)[0], "pginstall")
        if os.path.exists(os.path.join(bundled, "share", "postgresql", "extension", "vector.control")):
            found.append(os.path.join(bundled, "bin"))
    return found[0] if found else None


_COPIES: dict[str, str] = {}


def reachable(bin_dir: str, as_user: list[str]) -> str:
    """`bin_dir`, or a copy of its installation that the server's user can reach: a build
    inside a folder only root may enter (a virtualenv in a private temporary folder) is
    copied once per process to a shared temporary folder, removed at exit. The copy keeps
    the layout of a wheel's build (`<site>/<pkg>/pginstall/bin`, its libraries found by
    rpath in `<site>/<pkg>.libs`)."""
    if subprocess.run([*as_user, "test", "-x", f"{bin_dir}/initdb"], capture_output=True).returncode == 0:
        return bin_dir
    if bin_dir not in _COPIES:
        shared = tempfile.mkdtemp(prefix="aios-pgbin-")
        os.chmod(shared, 0o755)
        atexit.register(shutil.rmtree, shared, True)
        install = os.path.dirname(os.path.abspath(bin_dir))
        site = os.path.dirname(os.path.dirname(install))
        inside = os.path.relpath(install, site)
        shutil.copytree(install, os.path.join(shared, inside), symlinks=True)
        libs = os.path.join(site, inside.split(os.sep)[0] + ".libs")   # auditwheel's folder of the package
        if os.path.isdir(libs):
            shutil.copytree(libs, os.path.join(shared, os.path.basename(libs)), symlinks=True)
        _COPIES[bin_dir] = os.path.join(shared, inside, os.path.basename(bin_dir))
    return _COPIES[bin_dir]


class LocalPostgres:
    """A server of its own on a free loopback port (`url`: its SQLAlchemy base URL, no
    database name); `stop()` and `start()` take it away and bring it back, as an outage
    would. Run as the `postgres` user when the caller is root (the server refuses root)."""

    def __init__(self, bin_dir: str | None = None) -> None:
        bin_dir = bin_dir or binaries()
        if bin_dir is None:
            raise BackendUnavailable("PostgreSQL is not installed",
                                     hint="`make` installs the Debian package postgresql")
        self.folder = tempfile.mkdtemp(prefix="aios-pg-")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            runuser = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
            if runuser is None:
                raise BackendUnavailable("running PostgreSQL as root needs runuser (util-linux), which is not here",
                                         hint="install the Debian package util-linux, or run as another user")
            self.as_user = [runuser, "-u", "postgres", "--"]
            bin_dir = reachable(bin_dir, self.as_user)
        self.bin = bin_dir
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.data = os.path.join(self.folder, "data")
        self.url = f"postgresql+psycopg://aios@127.0.0.1:{self.port}"
        subprocess.run([*self.as_user, f"{self.bin}/initdb", "-D", self.data, "--auth=trust", "-U", "aios",
                        "-E", "UTF8"], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        subprocess.run([*self.as_user, f"{self.bin}/pg_ctl", "-D", self.data, "-w", "-l",
                        os.path.join(self.folder, "log"), "-o",
                        f"-p {self.port} -h 127.0.0.1 -k {self.folder} -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self.as_user, f"{self.bin}/pg_ctl", "-D", self.data, "-w", "-m", mode, "stop"],
                       capture_output=True, timeout=120)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def local_postgres(bin_dir: str | None = None) -> Iterator[str]:
    """A LocalPostgres for the block: started, its base URL yielded, removed after."""
    server = LocalPostgres(bin_dir)
    try:
        server.start()
        yield server.url
    finally:
        server.remove()


def fresh_database(base_url: str) -> str:
    """A new, empty database on the server; its URL."""
    import psycopg
    name = f"aios_{uuid.uuid4().hex[:12]}"
    host, port = base_url.split("@", 1)[1].split(":")
    with psycopg.connect(host=host, port=int(port), user="aios", dbname="postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{base_url}/{name}"
