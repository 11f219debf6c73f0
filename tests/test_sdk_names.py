"""The SDK's public names, pinned: an agent written against them keeps working. A name
added or removed is a decision, made here, in the README and in the changelog of the
package, not a side effect of a refactoring."""
from __future__ import annotations

import inspect

import aios.sdk

PUBLIC = {
    # clients, how they connect, and what they speak through
    "Client", "AsyncClient", "connect", "connect_async", "DEFAULT_URL",
    "Transport", "AsyncTransport", "HTTPTransport", "AsyncHTTPTransport",
    # what the verbs return
    "ChatResult", "ToolCall", "Usage", "SyscallInfo", "ProcessInfo", "MemoryEntry", "ToolInfo", "Step",
    "CallState", "Kind", "ProcState",
    # what they raise
    "AiosError", "InvalidSyscall", "ConfigError", "PermissionDenied", "Unauthorized", "NotFound", "Conflict",
    "ProgramError", "MalformedRequest", "PayloadTooLarge", "BackendUnavailable", "BackendBusy", "BackendError",
    "ToolError", "QuotaExceeded", "DeadlineExceeded", "JournalUnavailable", "Cancelled", "InternalError",
    "SandboxUnavailable",
}

VERBS = {
    "llm": {"chat", "stream"},
    "tools": {"call", "list"},
    "memory": {"add", "get", "search", "list", "delete"},
    "storage": {"read", "write", "list", "delete", "versions", "read_version", "diff", "rollback", "move"},
    "processes": {"spawn", "get", "list", "suspend", "resume", "kill", "steps"},
}


def test_the_public_names_are_pinned_and_importable() -> None:
    assert set(aios.sdk.__all__) == PUBLIC
    assert len(aios.sdk.__all__) == len(PUBLIC)   # none listed twice
    for name in PUBLIC:
        assert getattr(aios.sdk, name) is not None


def test_every_error_class_a_kernel_can_raise_reaches_an_agent() -> None:
    import aios.errors
    raised = {name for name, cls in vars(aios.errors).items()
              if inspect.isclass(cls) and issubclass(cls, aios.errors.AiosError) and cls.__module__ == "aios.errors"
              and not name.startswith("_") and name not in ("KernelRunning", "InvalidTransition")}
    assert raised <= PUBLIC, f"not exported by aios.sdk: {sorted(raised - PUBLIC)}"


def test_both_clients_have_the_same_verbs() -> None:
    for client in (aios.sdk.Client, aios.sdk.AsyncClient):
        assert {"syscall", "cancel", "models", "history", "step", "llm", "tools", "memory", "storage",
                "processes"} <= (
            {n for n in dir(client) if not n.startswith("_")} | set(VERBS))
    sync, a = aios.sdk.Client("http://127.0.0.1:1"), aios.sdk.AsyncClient("http://127.0.0.1:1")
    try:
        for group, verbs in VERBS.items():
            for client in (sync, a):
                have = {n for n in dir(getattr(client, group)) if not n.startswith("_")}
                assert verbs <= have, f"{type(client).__name__}.{group} lacks {sorted(verbs - have)}"
    finally:
        sync.close()
