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

from aios import access, owner
from aios.errors import Unauthorized
from aios.kernel import Kernel
from aios.process import Process
from aios.process.runners import SubprocessRunner
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
NEEDS_TOKEN_HINT = ("set AIOS_TOKEN to a token from `aios token create --user NAME` (other HTTP clients send "
                    "Authorization: Bearer <token>), or run aios as the daemon's owner on this machine with "
                    "AIOS_TOKEN unset and AIOS_URL unset or naming this daemon: it sends $AIOS_HOME/owner.token "
                    "by itself")


async def principal_of(request: Request) -> str:
    """The caller's principal, from its bearer token, by the token's form:
    - a process token: the process's principal, acting only as that pid (see caller_pid);
    - the owner token (aios.owner): `local`, with every right, whatever else exists;
    - one of `server.tokens`, or an API token of the database (aios.access: checked on
      every request, so a revocation takes effect at once, and audited).
    A token of aios's own forms is always checked. Without API tokens (none configured, and
    none active in the database: known within a second of a change either way) the server
    trusts callers on loopback as `local`, ignoring any other header (OpenAI clients always
    send one); otherwise a caller without a valid token is refused."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else ""
    if access.PROCESS_TOKEN.fullmatch(token):
        return await _process_principal(request, token)
    if owner.FORM.fullmatch(token):
        return await _owner_principal(request, token)
    settings_tokens: dict[str, str] = request.app.state.settings.server.tokens
    for known, principal in settings_tokens.items():
        if token and hmac.compare_digest(known.encode(), token.encode()):
            return principal
    is_api_token = access.TOKEN.match(token) is not None
    if (not is_api_token and not settings_tokens and _from_loopback(request)
            and not await _database_has_tokens(request)):
        return access.LOCAL
    if not token:
        raise HttpError("unauthorized", "this server needs a bearer token", hint=NEEDS_TOKEN_HINT)
    k = kernel_of(request)
    now = time.time()
    try:
        return (await k.db.run(lambda e: access.authenticate(e, token, now))).name
    except Unauthorized as e:
        raise HttpError("unauthorized", e.message, hint=e.hint) from None


async def _process_principal(request: Request, token: str) -> str:
    """The principal of the live process the token was made for; the request acts as that
    pid and no other (an X-Aios-Pid naming another, 0 included, is refused and audited)."""
    pid = int(access.PROCESS_TOKEN.fullmatch(token).group(1))   # type: ignore[union-attr]
    k = kernel_of(request)
    run = k.supervisor.runs.get(pid)
    held = run.runner.env.get("AIOS_TOKEN") if run is not None and isinstance(run.runner, SubprocessRunner) else None
    proc = k.processes.procs.get(pid)
    if held is None or proc is None or not hmac.compare_digest(held.encode(), token.encode()):
        await _deny(request, proc.principal if proc is not None else "?", f"process:{pid}",
                    {"reason": "not the token of a running process"})
        raise HttpError("unauthorized", f"the token of process {pid} is not valid: a process token works only "
                        "while the kernel runs that process", hint="it is the agent's own (AIOS_TOKEN in its "
                        "environment); a principal uses a token from `aios token create`")
    raw = request.headers.get("x-aios-pid")
    if raw is not None and raw.strip() != str(pid):
        await _deny(request, proc.principal, f"process:{pid}", {"reason": "acts only as its own process",
                                                                 "asked_pid": raw[:40]})
        raise HttpError("permission_denied", f"the token of process {pid} acts only as process {pid}, not "
                        f"{raw[:40]!r}", field="X-Aios-Pid", hint="send no X-Aios-Pid, or this process's own pid")
    request.state.token_pid = pid
    return proc.principal


async def _owner_principal(request: Request, token: str) -> str:
    """`local`, when the token is the one this daemon wrote at its start and its file is
    still the owner's alone (aios.owner); refused and audited otherwise."""
    issued = request.app.state.owner_token
    if issued is None or not hmac.compare_digest(issued.encode(), token.encode()):
        await _deny(request, "?", "owner", {"reason": "not this daemon's owner token"})
        raise HttpError("unauthorized", "the owner token is not this daemon's: each start writes a new one",
                        hint="unset AIOS_TOKEN: aios reads $AIOS_HOME/owner.token by itself")
    path = owner.path_in(request.app.state.settings.home)
    why = owner.looseness(path)
    if why is not None:
        await _deny(request, access.LOCAL, "owner", {"reason": why, "file": str(path)})
        raise HttpError("unauthorized", f"the owner token file {path} {why}, so its token is refused",
                        hint=f"chmod 600 {path} (and restart the daemon if others may have read it: each start "
                             "writes a new owner token)")
    return access.LOCAL


async def _deny(request: Request, principal: str, target: str, detail: dict[str, Any]) -> None:
    now = time.time()
    await kernel_of(request).db.run(lambda e: access.audit(e, now, principal, "token.use", target, "deny", detail))


def _from_loopback(request: Request) -> bool:
    """Whether the caller's address is this machine's loopback: the only callers a server
    without tokens trusts (it may listen beyond loopback once tokens exist, and they may
    all be revoked later)."""
    return request.client is not None and owner.is_loopback(request.client.host)


async def _database_has_tokens(request: Request) -> bool:
    state = request.app.state
    cached = getattr(state, "db_tokens", None)
    now = time.monotonic()
    if cached is None or now - cached[1] > _TOKENS_TTL_S:
        wall = time.time()
        cached = (await kernel_of(request).db.run(lambda e: access.has_tokens(e, wall)), now)
        state.db_tokens = cached
    return cached[0]


def caller_pid(request: Request, principal: str) -> int:
    """The pid a syscall is charged to: a process token's own pid (principal_of checked
    the header against it), else the X-Aios-Pid header (agents get it in AIOS_PID), else
    0, the principal's own account. A pid of another principal does not exist for it."""
    bound = getattr(request.state, "token_pid", None)
    if bound is not None:
        return bound
    raw = request.headers.get("x-aios-pid")
    if raw is None:
        return 0
    if not (raw.strip().isascii() and raw.strip().isdigit()):   # '²' is a digit to isdigit()
        raise HttpError("malformed_request", f"X-Aios-Pid must be a process id, got {raw!r}", field="X-Aios-Pid")
    pid = int(raw)
    kernel_of(request).processes.find(principal, 0, pid)   # the principal's own account sees all of its own
    return pid


def visible_process(request: Request, pid: int, principal: str) -> Process:
    """A process that the caller may see (ProcessTable.find, the one visibility rule)."""
    return kernel_of(request).processes.find(principal, caller_pid(request, principal), pid)
