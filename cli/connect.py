"""How the `aios` commands find the kernel: AIOS_URL if set, else the daemon recorded
under $AIOS_HOME; and as whom: AIOS_TOKEN if set, else, for the daemon of $AIOS_HOME, the
owner token it wrote there (aios.owner), else no token (a server without tokens trusts
loopback)."""
from __future__ import annotations

import os
from typing import Any

from aios import owner
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


def token(url: str) -> str | None:
    return os.environ.get("AIOS_TOKEN") or owner.token_from_env(url, os.environ)


def auth_headers() -> dict[str, str]:
    bearer = token(kernel_url())
    return {"Authorization": f"Bearer {bearer}"} if bearer else {}


def client(pid: int | None = None) -> Client:
    """A client of the kernel, as the principal, or acting on one of its agents (`pid`)."""
    url = kernel_url()
    return Client(url, token=token(url), pid=pid)


def kernel_request(method: str, path: str, body: Any = None, *, params: dict[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
    """One REST call to the running kernel, as the principal: the answer's JSON, or the
    AiosError its error body names (BackendUnavailable if no kernel answers). For the
    routes the SDK has no verb for (stats, confirmations, history)."""
    import httpx

    from aios.sdk._http import TIMEOUT, read_response, unreachable
    url = kernel_url()
    try:
        r = httpx.request(method, f"{url}{path}", json=body, params=params, headers=auth_headers(),
                          timeout=TIMEOUT if timeout is None else timeout)
    except httpx.TransportError as e:
        raise unreachable(url, e) from None
    return read_response(url, r.status_code, r.content)
