"""What every route needs from a request: its JSON body (bounded), its principal (from
the bearer token), and the caller's pid. Decoding only: no policy lives here."""
from __future__ import annotations

import hmac
import json
import math
import re
import time
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from aios import access
from aios.errors import Unauthorized
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
        value = json.loads(body.decode(), parse_constant=_refuse_constant, parse_float=_finite_float)
        if _SURROGATE_ESCAPE.search(body):   # a lone one cannot be stored or sent back as UTF-8
            json.dumps(value, ensure_ascii=False).encode()
        return value
    except (ValueError, RecursionError) as e:   # JSONDecodeError and UnicodeError are ValueErrors
        match e:
            case json.JSONDecodeError():
                why = f" at line {e.lineno} column {e.colno}"
            case UnicodeError():
                why = ": it is not UTF-8 text, or it holds a lone surrogate (\\ud800-\\udfff)"
            case RecursionError():
                why = ": it is nested too deeply"
            case _:   # NaN, Infinity, a number out of range or with too many digits
                why = f": {e}"
        raise HttpError("malformed_request", f"the body is not valid JSON{why}",
                        hint="send a JSON object with Content-Type: application/json") from None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
M = TypeVar("M", bound=BaseModel)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


async def read_model(request: Request, model: type[M]) -> M:
    """The body (read as `read_json` does) checked against a pydantic model; the error
    names the first bad field."""
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise HttpError("invalid_syscall", f"{field or 'body'}: {first['msg']}", field=field or None) from None


_TOKENS_TTL_S = 1.0   # how long "the database holds tokens" is cached for callers without one


async def principal_of(request: Request) -> str:
    """The caller's principal, from its bearer token: one of `server.tokens`, or an API
    token of the database (aios.access: checked on every request, so a revocation takes
    effect at once, and audited). With no tokens anywhere the server is loopback-only and
    every caller is `local`; once tokens exist (within a second of the first one), a
    caller without a valid one is refused."""
    settings_tokens: dict[str, str] = request.app.state.settings.server.tokens
    if not settings_tokens and not await _database_has_tokens(request):
        return access.LOCAL   # any header is ignored (OpenAI clients always send one)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HttpError("unauthorized", "this server needs a bearer token",
                        hint="send the header Authorization: Bearer <token>")
    for known, principal in settings_tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            return principal
    k = kernel_of(request)
    now = time.time()
    try:
        return (await k.db.run(lambda e: access.authenticate(e, token, now))).name
    except Unauthorized as e:
        raise HttpError("unauthorized", e.message, hint=e.hint) from None


async def _database_has_tokens(request: Request) -> bool:
    state = request.app.state
    cached = getattr(state, "db_tokens", None)
    now = time.monotonic()
    if cached is None or now - cached[1] > _TOKENS_TTL_S:
        cached = (await kernel_of(request).db.run(access.has_tokens), now)
        state.db_tokens = cached
    return cached[0]


def caller_pid(request: Request, principal: str) -> int:
    """The pid a syscall is charged to: the X-Aios-Pid header (agents get it in AIOS_PID),
    or 0, the principal's own account. A pid of another principal does not exist for it."""
    raw = request.headers.get("x-aios-pid")
    if raw is None:
        return 0
    if not (raw.strip().isascii() and raw.strip().isdigit()):   # '²' is a digit to isdigit()
        raise HttpError("malformed_request", f"X-Aios-Pid must be a process id, got {raw!r}", field="X-Aios-Pid")
    pid = int(raw)
    owned_process(request, pid, principal)
    return pid


def owned_process(request: Request, pid: int, principal: str) -> Process:
    proc = kernel_of(request).processes.procs.get(pid)
    if proc is None or proc.principal != principal:
        raise HttpError("not_found", f"no process {pid}", field="pid")
    return proc


def visible_process(request: Request, pid: int, principal: str) -> Process:
    """A process of the principal that the caller may see: an agent (X-Aios-Pid) sees
    itself and its descendants only, the principal's own account all of them. Any other
    pid does not exist for the caller."""
    proc = owned_process(request, pid, principal)
    if not kernel_of(request).processes.sees(caller_pid(request, principal), pid):
        raise HttpError("not_found", f"no process {pid}", field="pid")
    return proc
