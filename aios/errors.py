"""The one error hierarchy. Codes are stable snake_case strings that the server maps to
HTTP statuses, the SDK raises again and the CLI prints with the hint.

    AiosError
    ├── caller's fault
    │   ├── InvalidSyscall        a syscall or payload that cannot run as given (names the field)
    │   ├── InvalidTransition     a state change the syscall state machine forbids
    │   ├── ConfigError           a bad settings file, variable or flag (names the field)
    │   ├── PermissionDenied
    │   │   └── Unauthorized      no bearer token, or one the server does not know (HTTP 401)
    │   ├── NotFound              an unknown syscall id, model, tool or process
    │   ├── Conflict              the thing is not in a state for that (a signal to an exited process)
    │   │   └── KernelRunning     another kernel holds the database's lease (names it: pid, host, URL)
    │   ├── ProgramError          an agent program that cannot be loaded (raises at import, no main)
    │   ├── MalformedRequest      a request that is not JSON, or not the JSON asked for
    │   └── PayloadTooLarge       a request body over the configured limit
    ├── a resource's fault
    │   ├── BackendUnavailable    a backend is down, busy, or timed out
    │   ├── BackendError          a provider refused or failed the call (keeps its message)
    │   ├── ToolError             a tool raised, or returned what cannot be stored
    │   ├── QuotaExceeded
    │   ├── DeadlineExceeded
    │   └── JournalUnavailable    the database cannot be written (read-only, corrupt, gone)
    ├── Cancelled                 the call was cancelled (by its caller, a kill, or shutdown)
    └── InternalError             a bug in the kernel
"""
from __future__ import annotations

from typing import Any


class AiosError(Exception):
    code = "aios_error"

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


class InvalidTransition(AiosError):
    code = "invalid_transition"

    def __init__(self, call_id: str, state: str, to: str):
        super().__init__(f"syscall {call_id} cannot move from {state} to {to}",
                         hint="see aios.syscall.MOVES for the legal moves")
        self.call_id, self.state, self.to = call_id, state, to


class ConfigError(AiosError):
    code = "invalid_config"


class PermissionDenied(AiosError):
    code = "permission_denied"


class Unauthorized(PermissionDenied):
    code = "unauthorized"


class NotFound(AiosError):
    code = "not_found"


class Conflict(AiosError):
    code = "conflict"


class KernelRunning(Conflict):
    """A second kernel on a database that a live kernel holds (aios.storage.lease)."""
    code = "kernel_running"


class ProgramError(AiosError):
    code = "invalid_program"


class MalformedRequest(AiosError):
    code = "malformed_request"


class PayloadTooLarge(AiosError):
    code = "payload_too_large"


class BackendUnavailable(AiosError):
    code = "backend_unavailable"


class BackendBusy(BackendUnavailable):
    """All of a backend's slots are taken; a caller outside the kernel retries later."""
    code = "backend_busy"


class SandboxUnavailable(AiosError):
    """The sandbox (bubblewrap) cannot run on this machine; the message says why."""
    code = "sandbox_unavailable"


class BackendError(AiosError):
    code = "backend_error"


class ToolError(AiosError):
    code = "tool_error"


class QuotaExceeded(AiosError):
    code = "quota_exceeded"


class DeadlineExceeded(AiosError):
    code = "deadline_exceeded"


class JournalUnavailable(AiosError):
    code = "journal_unavailable"


class Cancelled(AiosError):
    code = "cancelled"


class InternalError(AiosError):
    code = "internal_error"


ERRORS_BY_CODE: dict[str, type[AiosError]] = {
    cls.code: cls for cls in (
        InvalidSyscall, InvalidTransition, ConfigError, PermissionDenied, Unauthorized, NotFound,
        Conflict, KernelRunning, ProgramError, MalformedRequest, PayloadTooLarge,
        BackendUnavailable, BackendBusy, BackendError, SandboxUnavailable, ToolError, QuotaExceeded, DeadlineExceeded,
        JournalUnavailable, Cancelled, InternalError,
    )
}
