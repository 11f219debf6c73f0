"""The agent SDK: one client, blocking (`Client`) or async (`AsyncClient`), over a
transport: HTTP to a kernel's REST endpoint by default, or in-process to a Kernel object
(`transport=KernelTransport(kernel)`, from aios.process.inproc), with the same verbs,
results and errors either way.

    client.llm.chat(messages, model=None, max_tokens=None, tools=None, temperature=None,
                    priority=0, timeout_s=None) -> ChatResult
    client.llm.stream(...same...)            -> pieces of text (iterator / async iterator)
    client.tools.call(tool, **arguments)     -> the tool's result;  client.tools.list() -> [ToolInfo]
    client.memory.add(content, key=None) -> key;  .get(key) -> MemoryEntry;  .search(query, k=5),
        .list() -> [MemoryEntry];  .delete(key)
    client.storage.read(path) -> str;  .write(path, data) -> bytes written;  .list(prefix="") -> [path];
        .delete(path)
    client.processes.spawn(name, priority=0, program=None, task="", runner="inproc"), .get(pid),
        .suspend(pid), .resume(pid), .kill(pid) -> ProcessInfo;  .list(include_exited=False)
    client.models() -> [model];  client.syscall(dict, wait=True) -> SyscallInfo;  client.cancel(id)

Failures raise the aios.errors classes (NotFound, InvalidSyscall, PermissionDenied, ...), with
code, message, hint and field; a kernel that does not answer raises BackendUnavailable.

The agent program contract. An agent is a Python file or module that defines

    def main(task: str, os: Client) -> str            # or
    async def main(task: str, os: AsyncClient) -> str

The kernel starts it as a process and calls `main` with the task; `os` is a client already
bound to that process, so every syscall is charged to it. What main returns is the
process's result; an exception makes it exit with code 1. An agent reaches the kernel only
through `os`. Under the "inproc" runner `os` calls the kernel directly (a sync main runs in
a worker thread); under "subprocess" it comes from `connect()` / `connect_async()`, which read:

    AIOS_URL     the kernel's endpoint (default http://127.0.0.1:8642)
    AIOS_TOKEN   the bearer token: the kernel gives each agent one of its own process
    AIOS_PID     the agent's pid, sent as X-Aios-Pid on every request
    AIOS_MODEL   the model its LLM calls use when they name none (spawn's `model`)

Invariant: a verb's request building and answer parsing live once, in the sans-I/O core
(aios.sdk._core); transports only carry requests. This package imports nothing of the
kernel, its managers or the server (tests/test_layers.py)."""
from __future__ import annotations

import os

from aios.errors import (AiosError, BackendBusy, BackendError, BackendUnavailable, Cancelled, ConfigError,
                         Conflict, DeadlineExceeded, InternalError, InvalidSyscall, JournalUnavailable,
                         MalformedRequest, NotFound, PayloadTooLarge, PermissionDenied, ProgramError,
                         QuotaExceeded, SandboxUnavailable, ToolError, Unauthorized)
from aios.syscall import ProcState
from aios.sdk._core import DEFAULT_URL, default_model_from_env, from_env
from aios.sdk._http import AsyncHTTPTransport, HTTPTransport
from aios.sdk.client import AsyncClient, AsyncTransport, Client, Transport
from aios.sdk.types import ChatResult, MemoryEntry, ProcessInfo, SyscallInfo, ToolCall, ToolInfo
from aios.syscall import CallState, Kind, Step, Usage

__all__ = [
    "Client", "AsyncClient", "connect", "connect_async", "DEFAULT_URL",
    "Transport", "AsyncTransport", "HTTPTransport", "AsyncHTTPTransport",
    "ChatResult", "ToolCall", "Usage", "SyscallInfo", "ProcessInfo", "MemoryEntry", "ToolInfo", "Step",
    "CallState", "Kind", "ProcState",
    "AiosError", "InvalidSyscall", "ConfigError", "PermissionDenied", "Unauthorized", "NotFound", "Conflict",
    "ProgramError", "MalformedRequest", "PayloadTooLarge", "BackendUnavailable",
    "BackendBusy", "BackendError", "ToolError", "QuotaExceeded", "DeadlineExceeded", "JournalUnavailable",
    "Cancelled", "InternalError", "SandboxUnavailable",
]


def connect() -> Client:
    """A blocking client configured from AIOS_URL, AIOS_TOKEN, AIOS_PID and AIOS_MODEL."""
    return Client(**from_env(os.environ), model=default_model_from_env(os.environ))


def connect_async() -> AsyncClient:
    """An async client configured from AIOS_URL, AIOS_TOKEN, AIOS_PID and AIOS_MODEL."""
    return AsyncClient(**from_env(os.environ), model=default_model_from_env(os.environ))
