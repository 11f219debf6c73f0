"""The statuses each REST route can answer with, from the error classes it can raise:
each route names its groups below, and `answers` turns them into the OpenAPI document's
responses (one per status, naming the error codes), beside the route's own answer."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aios import errors
from aios.errors import AiosError

# before a route's own work (aios.server.http): the caller's token (401; 403 for a process
# token acting as another pid; 503 when the database's tokens cannot be read) and its
# X-Aios-Pid (400 when it is not a pid, 404 when it is not one of the principal's)
CALLER = (errors.Unauthorized, errors.PermissionDenied, errors.MalformedRequest, errors.NotFound,
          errors.JournalUnavailable)
PARAMS = (errors.InvalidSyscall,)   # a path or query parameter that is not of its type
BODY = (errors.MalformedRequest, errors.PayloadTooLarge, errors.InvalidSyscall)   # read_json, read_model
# a call by id, or by a prefix of it (Conflict: the prefix of several): in flight, or from the journal
LOOKUP = (errors.NotFound, errors.Conflict, errors.JournalUnavailable)
SUBMIT = (errors.InvalidSyscall, errors.PermissionDenied, errors.NotFound, errors.Conflict, errors.QuotaExceeded,
          errors.BackendUnavailable, errors.JournalUnavailable)   # Kernel.submit (Conflict: an exited pid)
SPAWN = (errors.InvalidSyscall, errors.PermissionDenied, errors.NotFound, errors.Conflict, errors.ProgramError,
         errors.ConfigError, errors.BackendUnavailable, errors.JournalUnavailable)
SIGNAL = (errors.NotFound, errors.Conflict, errors.JournalUnavailable)
TOOL_ADD = (errors.InvalidSyscall, errors.Conflict, errors.JournalUnavailable)   # the entry, the name taken
TOOL_REMOVE = (errors.NotFound, errors.Conflict, errors.JournalUnavailable)   # no such tool, one not added
ADMIN = (errors.PermissionDenied, errors.JournalUnavailable)   # an agent refused; the principal's admin flag read
STOP = (errors.Conflict,)   # a server that does not own its kernel
STEP = (errors.InvalidSyscall, errors.Conflict, errors.QuotaExceeded)   # a bad step, an exited process, too many
# how an LLM call the caller waited for can end other than done (POST /v1/chat/completions
# answers with its error): too large for the backend, a provider's failure, its deadline, a cancel
LLM_ENDED = (errors.InvalidSyscall, errors.BackendError, errors.BackendUnavailable, errors.DeadlineExceeded,
             errors.Cancelled, errors.JournalUnavailable)


def answers(*raised: Iterable[type[AiosError]], ok: Any = None, status: int = 200, stream: str | None = None,
            events: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    """A route's documented answers: under `status`, `ok` (as JSON) and, for a route that
    streams, the media type `stream` (text, or server-sent `events` of that schema); and one
    error answer per status of the classes it can raise, naming their codes."""
    codes: dict[int, set[str]] = {}
    for cls in (c for group in raised for c in group):
        codes.setdefault(cls.status, set()).add(cls.code)
    out: dict[int | str, dict[str, Any]] = {
        s: {"description": "error codes: " + ", ".join(sorted(c)), "content": {"application/json": {"schema": {
            "$ref": "#/components/schemas/ErrorBody"}}}} for s, c in sorted(codes.items())}
    if ok is not None or stream is not None:
        out[status] = {"description": "the answer"}
    if ok is not None:
        out[status]["model"] = ok
    if stream is not None:
        out[status]["content"] = {stream: {"schema": events or {"type": "string"}}}
    return out
