"""How the `aios` commands find the kernel: AIOS_URL if set, else the daemon recorded
under $AIOS_HOME; AIOS_TOKEN for the bearer token."""
from __future__ import annotations

import os

from aios.config import load_settings
from aios.errors import BackendUnavailable
from aios.sdk import Client
from aios.server.daemon import read_info


def kernel_url() -> str:
    url = os.environ.get("AIOS_URL")
    if url:
        return url
    info = read_info(load_settings().home)
    if info is None:
        raise BackendUnavailable("no aios kernel is running", hint="start it with `aios kernel start`")
    return info.url


def auth_headers() -> dict[str, str]:
    token = os.environ.get("AIOS_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(pid: int | None = None) -> Client:
    """A client of the kernel, as the principal, or acting on one of its agents (`pid`)."""
    return Client(kernel_url(), token=os.environ.get("AIOS_TOKEN"), pid=pid)
