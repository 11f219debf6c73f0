"""The one error hierarchy. Codes are stable snake_case strings that the SDK raises again
and the CLI prints with the hint; each class's `status` is the HTTP status the server
answers with, the one source of the REST API's documented error statuses.

    AiosError                   (status)
    ├── caller's fault
    │   ├── InvalidSyscall        422  a syscall or payload that cannot run as given (names the field)
    │   ├── InvalidTransition     409  a state change the syscall state machine forbids
    │   ├── ConfigError           422  a bad settings file, variable or flag (names the field)
    │   ├── PermissionDenied      403
    │   │   └── Unauthorized      401  no bearer token, or one the server does not know
    │   ├── NotFound              404  an unknown syscall id, model, tool or process
    │   ├── Conflict              409  the thing is not in a state for that (a signal to an exited process)
    │   │   └── KernelRunning     409  another kernel holds the database's lease (names it: pid, host, URL)
    │   ├── ProgramError          422  an agent program that cannot be loaded (raises at import, no main)
    │   ├── MalformedRequest      400  a request that is not JSON, or not the JSON asked for
    │   └── PayloadTooLarge       413  a request body over the configured limit
    ├── a resource's fault
    │   ├── BackendUnavailable    503  a backend is down, busy, or timed out
    │   │   └── BackendBusy       503  all of its slots are taken; a caller outside the kernel retries
    │   ├── SandboxUnavailable    503  the sandbox (bubblewrap) cannot run on this machine
    │   ├── BackendError          502  a provider refused or failed the call (keeps its message)
    │   ├── ToolError             502  a tool raised, or returned what cannot be stored
    │   ├── QuotaExceeded         429
    │   ├── DeadlineExceeded      504
    │   └── JournalUnavailable    503  the database cannot be written (read-only, corrupt, gone)
    ├── Cancelled                 409  the call was cancelled (by its caller, a kill, or shutdown)
    └── InternalError             500  a bug in the kernel
"""
from __future__ import annotations

from typing import Any, ClassVar


class AiosError(Exception):
    code = "aios_error"
    status: ClassVar[int] = 500   # each class names its own; an error of no known class is the server's fault

    def __init__(self, message: str, *, hint: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "hint": self.hint, "field": self.field}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AiosError:
        """Rebuilds the error a journal row or an HTTP body describes, by its code."""
        kind = ERRORS_BY_CODE.get(data.get("code", ""), AiosError)
        err = kind.__new__(kind)
        AiosError.__init__(err, data.get("message", ""), hint=data.get("hint"), field=data.get("field"))
        if kind is AiosError:
            err.code = data.get("code", AiosError.code)
        return err

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class InvalidSyscall(AiosError):
    code = "invalid_syscall"
    status = 422


class InvalidTransition(AiosError):
    code = "invalid_transition"
    status = 409

    def __init__(self, call_id: str, state: str, to: str):
        super().__init__(f"syscall {call_id} cannot move from {state} to {to}",
                         hint="see aios.syscall.MOVES for the legal moves")
        self.call_id, self.state, self.to = call_id, state, to


class ConfigError(AiosError):
    code = "invalid_config"
    status = 422


class PermissionDenied(AiosError):
    code = "permission_denied"
    status = 403


class Unauthorized(PermissionDenied):
    code = "unauthorized"
    status = 401


class NotFound(AiosError):
    code = "not_found"
    status = 404


class Conflict(AiosError):
    code = "conflict"
    status = 409


class KernelRunning(Conflict):
    """A second kernel on a database that a live kernel holds (aios.storage.lease)."""
    code = "kernel_running"
    status = 409


class ProgramError(AiosError):
    code = "invalid_program"
    status = 422


class MalformedRequest(AiosError):
    code = "malformed_request"
    status = 400


class PayloadTooLarge(AiosError):
    code = "payload_too_large"
    status = 413


class BackendUnavailable(AiosError):
    code = "backend_unavailable"
    status = 503


class BackendBusy(BackendUnavailable):
    """All of a backend's slots are taken; a caller outside the kernel retries later."""
    code = "backend_busy"
    status = 503


class SandboxUnavailable(AiosError):
    """The sandbox (bubblewrap) cannot run on this machine; the message says why."""
    code = "sandbox_unavailable"
    status = 503


class BackendError(AiosError):
    code = "backend_error"
    status = 502


class ToolError(AiosError):
    code = "tool_error"
    status = 502


class QuotaExceeded(AiosError):
    code = "quota_exceeded"
    status = 429


class DeadlineExceeded(AiosError):
    code = "deadline_exceeded"
    status = 504


class JournalUnavailable(AiosError):
    code = "journal_unavailable"
    status = 503


class Cancelled(AiosError):
    code = "cancelled"
    status = 409


class InternalError(AiosError):
    code = "internal_error"
    status = 500


ERRORS_BY_CODE: dict[str, type[AiosError]] = {
    cls.code: cls for cls in (
        InvalidSyscall, InvalidTransition, ConfigError, PermissionDenied, Unauthorized, NotFound,
        Conflict, KernelRunning, ProgramError, MalformedRequest, PayloadTooLarge,
        BackendUnavailable, BackendBusy, BackendError, SandboxUnavailable, ToolError, QuotaExceeded, DeadlineExceeded,
        JournalUnavailable, Cancelled, InternalError,
    )
}
