"""The shapes of the REST API, for the OpenAPI document (and so for generated clients).
Bodies are decoded by aios.syscall.decode, the one validator of syscalls; these models
describe them and are not used to parse them."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from aios.param import MAX_IDEMPOTENCY_KEY_CHARS, MAX_PRIORITY


class _Common(BaseModel):
    priority: int = Field(0, ge=0, le=MAX_PRIORITY, description="higher is more urgent")
    timeout_s: float | None = Field(None, gt=0, description="fail the call if it is not done by then")


class LLMCall(_Common):
    kind: Literal["llm"]
    model: str
    messages: list[dict[str, Any]] = Field(description="OpenAI-shaped messages")
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    stream: bool = False


class ToolCall(_Common):
    kind: Literal["tool"]
    tool: str
    arguments: dict[str, Any] = {}
    idempotency_key: str | None = Field(None, min_length=1, max_length=MAX_IDEMPOTENCY_KEY_CHARS,
                                        description="the client's own, given again when it resubmits a call that "
                                                    "failed as interrupted; the tool gets it (else the call's id)")


class MemoryCall(_Common):
    kind: Literal["memory"]
    op: Literal["add", "get", "search", "list", "delete"]
    key: str | None = None
    content: str | None = None
    query: str | None = None
    k: int = 5


class StorageCall(_Common):
    kind: Literal["storage"]
    op: Literal["read", "write", "list", "delete"]
    path: str = ""
    data: str | None = None


class ProcessCall(_Common):
    kind: Literal["process"]
    op: Literal["status", "list", "suspend", "resume", "kill"]
    target_pid: int | None = None


SyscallIn = LLMCall | ToolCall | MemoryCall | StorageCall | ProcessCall


class UsageOut(BaseModel):
    tokens_in: int
    tokens_out: int
    cost_usd: float
    service_s: float


class ErrorOut(BaseModel):
    code: str
    message: str
    field: str | None = None
    hint: str | None = None


class SyscallOut(BaseModel):
    id: str
    kind: str
    pid: int
    principal: str
    state: Literal["queued", "running", "preempted", "done", "failed", "cancelled"]
    priority: int
    deadline: float | None
    created: float
    started: float | None
    finished: float | None
    num_preemptions: int
    usage: UsageOut
    payload: dict[str, Any]
    result: Any = None
    error: ErrorOut | None = None


class ProcessIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    priority: int = Field(0, ge=0, le=MAX_PRIORITY)
    parent_pid: int | None = None
    program: str | None = Field(None, description="a .py file, a module or a registered agent name; "
                                "none makes a bare process (an account to charge calls to)")
    task: str = Field("", description="passed to the program's main(task, os)")
    runner: Literal["inproc", "subprocess"] = "inproc"
    manifest: dict[str, Any] | None = Field(None, description="its permission manifest (models, tools, "
                                            "storage_read, storage_write, spawn, max_concurrent_syscalls, "
                                            "priority_ceiling, budget.run)")


class ConfirmIn(BaseModel):
    approve: bool = Field(description="true: the held call is queued; false: it fails as denied")


class ProcessOut(BaseModel):
    pid: int
    name: str
    principal: str
    parent_pid: int | None
    priority: int
    state: Literal["running", "suspended", "exited"]
    created: float
    exited: float | None
    exit_reason: str | None
    exit_code: int | None = None
    program: str | None = None
    runner: str | None = None
    cpu_s: float = 0.0
    max_rss_kib: int = 0
    usage: UsageOut


class SignalIn(BaseModel):
    signal: Literal["suspend", "resume", "terminate", "kill"]


class StopIn(BaseModel):
    drain: bool = Field(True, description="finish the calls in flight (else cancel them)")


class ErrorBody(BaseModel):
    error: ErrorOut


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in ((400, "malformed request"), (401, "missing or bad token"), (403, "not allowed"),
                         (404, "no such thing"), (409, "not in a state for that"), (413, "body too large"),
                         (422, "invalid field"), (429, "over quota"), (503, "backend or journal unavailable"))
}
