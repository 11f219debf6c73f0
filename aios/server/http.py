"""What every route needs from a request: its JSON body (bounded), its principal (from
the bearer token), and the caller's pid. Decoding only: no policy lives here."""
from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import Request

from aios.kernel import Kernel
from aios.process import Process
from aios.server.errors import HttpError


def kernel_of(request: Request) -> Kernel:
    return request.app.state.kernel


async def read_json(request: Request) -> Any:
    """The body as JSON, refusing more than server.max_body_bytes before reading it all."""
    limit = request.app.state.settings.server.max_body_bytes
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HttpError("payload_too_large", f"the body is {length} bytes; the limit is {limit}",
                        hint="raise server.max_body_bytes, or send less")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HttpError("payload_too_large", f"the body is over the {limit}-byte limit",
                            hint="raise server.max_body_bytes, or send less")
    if not body:
        raise HttpError("malformed_request", "the request has no body; it needs a JSON object")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise HttpError("malformed_request", f"the body is not valid JSON{where}",
                        hint="send a JSON object with Content-Type: application/json") from None


def principal_of(request: Request) -> str:
    """The caller's principal. With no tokens configured the server is loopback-only and
    every caller is `local`; otherwise a known bearer token is required."""
    tokens: dict[str, str] = request.app.state.settings.server.tokens
    if not tokens:
        return "local"
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HttpError("unauthorized", "this server needs a bearer token",
                        hint="send the header Authorization: Bearer <token>")
    for known, principal in tokens.items():
        if hmac.compare_digest(known.encode(), token.strip().encode()):
            return principal
    raise HttpError("unauthorized", "the bearer token is not valid", hint="check AIOS_TOKEN")


def caller_pid(request: Request, principal: str) -> int:
    """The pid a syscall is charged to: the X-Aios-Pid header (agents get it in AIOS_PID),
    or 0, the principal's own account. A pid of another principal does not exist for it."""
    raw = request.headers.get("x-aios-pid")
    if raw is None:
        return 0
    if not raw.strip().isdigit():
        raise HttpError("malformed_request", f"X-Aios-Pid must be a process id, got {raw!r}", field="X-Aios-Pid")
    pid = int(raw)
    owned_process(request, pid, principal)
    return pid


def owned_process(request: Request, pid: int, principal: str) -> Process:
    proc = kernel_of(request).processes.procs.get(pid)
    if proc is None or proc.principal != principal:
        raise HttpError("not_found", f"no process {pid}", field="pid")
    return proc
