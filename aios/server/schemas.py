"""The shapes of the REST API, for the OpenAPI document (and so for generated clients),
generated from the types they describe: a syscall's fields, kinds, ops and states
(aios.syscall), a process's fields and states (aios.process), and each error class's
HTTP status (aios.errors).

Invariant: nothing here lists a record's fields, a state or a status a second time. A
record's model has every field of its dataclass, each always present, and no other key,
as syscall_json and process_json write them (tests/test_schemas.py validates real records
against the document). Bodies are decoded by aios.syscall.decode, the one validator of
syscalls; these models describe them and are not used to parse them."""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.json_schema import models_json_schema

from aios import errors
from aios.config import ENTRY_FORM
from aios.param import MAX_IDEMPOTENCY_KEY_CHARS, MAX_MESSAGES, MAX_PRIORITY, MAX_TOKENS
from aios.process import Process
from aios.process.runners import RUNNERS
from aios.scheduler import ResourceStats
from aios.syscall import COMMON_FIELDS, SYSCALL_TYPES, CallState, Kind, Step, Syscall, Usage
from aios.tools.entries import PythonTool
from aios.tools.registry import TOOL_NAME

_EXACT = ConfigDict(extra="forbid")   # a record's JSON has these keys and no others
_REF = "#/components/schemas/{model}"


def _record(name: str, cls: type, *, skip: Iterable[str] = (), swap: dict[Any, Any] | None = None,
            **added: Any) -> type[BaseModel]:
    """The model of the dataclass `cls` as its JSON function writes it: each field (but
    `skip`, and a field left out of comparison, which is a cache and not the record's, as
    Syscall.payload_text), always present, so required (null where its type allows), and no
    other key. `swap` maps a field's name or type to the type of its JSON; `added` are the
    keys the function writes beyond the fields."""
    swap = swap or {}
    hints = typing.get_type_hints(cls)
    shape = {f.name: (swap.get(f.name, swap.get(hints[f.name], hints[f.name])), ...)
             for f in dataclasses.fields(cls) if f.name not in set(skip) and f.compare}
    return create_model(name, __config__=_EXACT, **shape, **{k: (t, ...) for k, t in added.items()})


UsageOut = _record("UsageOut", Usage)


class ErrorOut(BaseModel):
    """An error as AiosError.to_dict writes it: a failed or cancelled call's `error`."""
    model_config = _EXACT
    code: str = Field(description="stable snake_case; the SDK raises the class of that code again")
    message: str
    hint: str | None
    field: str | None = Field(description="the field at fault, if one is")


class HttpErrorOut(ErrorOut):
    type: str = Field(description="the code again, where OpenAI clients look for it")


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code", "message", "field", "hint", "type"}}`."""
    model_config = _EXACT
    error: HttpErrorOut


# ---- syscalls: what a caller sends, and the record the kernel keeps of it

# What decode and check_payload refuse beyond a field's type, for the document; a key
# that is not a payload field of its kind fails here, at import.
_LIMITS: dict[tuple[Kind, str], dict[str, Any]] = {
    (Kind.LLM, "model"): {"min_length": 1},
    (Kind.LLM, "messages"): {"min_length": 1, "max_length": MAX_MESSAGES, "description": "OpenAI-shaped messages"},
    (Kind.LLM, "max_tokens"): {"ge": 1, "le": MAX_TOKENS},
    (Kind.TOOL, "tool"): {"min_length": 1},
    (Kind.TOOL, "idempotency_key"): {
        "min_length": 1, "max_length": MAX_IDEMPOTENCY_KEY_CHARS,
        "description": "the client's own, given again when it resubmits a call that failed as interrupted; "
                       "the tool gets it (else the call's id)"},
}


class MessageIn(BaseModel):
    """An OpenAI-shaped message, as check_payload takes it: a role, and text or parts."""
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[Any] | None = None


# What a payload field's JSON is, where its type hint says less
_TYPES: dict[tuple[Kind, str], Any] = {(Kind.LLM, "messages"): list[MessageIn]}
_CALLER_FIELDS: dict[str, Any] = {
    "priority": (int, Field(0, ge=0, le=MAX_PRIORITY, description="higher is more urgent")),
    "timeout_s": (float | None, Field(None, gt=0, description="fail the call if it is not done by then")),
}


def _payload_fields(kind: Kind) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(SYSCALL_TYPES[kind]) if f.name not in COMMON_FIELDS]


def _call_model(kind: Kind) -> type[BaseModel]:
    """The body that submits a call of `kind`: its payload fields (required where the
    dataclass has no default) and the caller's priority and timeout; decode refuses others."""
    shape: dict[str, Any] = {"kind": (Literal[kind.value], ...), **_CALLER_FIELDS}
    for f in _payload_fields(kind):
        limits = _LIMITS.get((kind, f.name), {})
        if f.default is not dataclasses.MISSING:
            shape[f.name] = (_type(kind, f.name), Field(f.default, **limits))
        elif f.default_factory is not dataclasses.MISSING:
            shape[f.name] = (_type(kind, f.name), Field(default_factory=f.default_factory, **limits))
        else:
            shape[f.name] = (_type(kind, f.name), Field(..., **limits))
    return create_model(f"{_stem(kind)}Call", __config__=_EXACT, **shape)


def _type(kind: Kind, name: str) -> Any:
    return _TYPES.get((kind, name)) or typing.get_type_hints(SYSCALL_TYPES[kind])[name]


def _stem(kind: Kind) -> str:
    return SYSCALL_TYPES[kind].__name__.removesuffix("Syscall")


for _kind, _name in (*_LIMITS, *_TYPES):
    if _name not in {f.name for f in _payload_fields(_kind)}:
        raise TypeError(f"aios.server.schemas names {_name!r}, which is not a payload field of a {_kind} syscall")

SYSCALL_MODELS: tuple[type[BaseModel], ...] = tuple(_call_model(kind) for kind in SYSCALL_TYPES)
PAYLOAD_MODELS: tuple[type[BaseModel], ...] = tuple(
    _record(f"{_stem(kind)}Payload", cls, skip=COMMON_FIELDS) for kind, cls in SYSCALL_TYPES.items())
SyscallOut = _record("SyscallOut", Syscall, swap={Usage: UsageOut, "error": ErrorOut | None},
                     kind=Kind, payload=typing.Union[PAYLOAD_MODELS])   # noqa: UP007 (a union built from a tuple)

# a body of each kind, for the document's readers (tests/test_schemas.py decodes each)
EXAMPLES: dict[Kind, dict[str, Any]] = {
    Kind.LLM: {"kind": "llm", "model": "sim-llama-3-8b", "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": 8},
    Kind.TOOL: {"kind": "tool", "tool": "calculator", "arguments": {"expression": "6 * 7"}},
    Kind.MEMORY: {"kind": "memory", "op": "add", "key": "colour", "content": "the sky is blue"},
    Kind.STORAGE: {"kind": "storage", "op": "write", "path": "notes/todo.md", "data": "buy milk"},
    Kind.PROCESS: {"kind": "process", "op": "list", "priority": 5},
}
SYSCALL_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"oneOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in SYSCALL_MODELS],
               "discriminator": {"propertyName": "kind"}},
    "examples": {kind.value: {"value": body} for kind, body in EXAMPLES.items()}}}}}


_CALLER_PID = {"name": "X-Aios-Pid", "in": "header", "required": False, "schema": {"type": "integer", "minimum": 1},
               "description": "the agent process the request acts as (an agent has it in AIOS_PID); absent: the "
                              "principal's own account. A process token acts only as its own process"}


def complete(spec: dict[str, Any]) -> dict[str, Any]:
    """The document FastAPI generates, made whole: with the schemas named only by
    reference (the syscall bodies, which no route parses with a model, the error body,
    the events of streams); with what a route that names its caller reads of every request
    (aios.server.http: the bearer token, X-Aios-Pid), which no route declares; and without
    the 422 answers FastAPI adds by itself in a shape of its own (the app answers 422 with
    ErrorBody, and the routes that can say so)."""
    _, top = models_json_schema([(m, "validation") for m in _BY_REFERENCE], ref_template=_REF)
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    components.update(top["$defs"])
    spec["components"]["securitySchemes"] = {"bearer": {
        "type": "http", "scheme": "bearer", "description": "a token of `aios token create`, the daemon's owner "
        "token, or an agent's process token; none is needed from loopback while no token exists"}}
    for operation in (op for item in spec["paths"].values() for op in item.values()):
        if "HTTPValidationError" in str(operation["responses"].get("422")):
            del operation["responses"]["422"]
        if str(errors.Unauthorized.status) in operation["responses"]:   # it names its caller
            operation["security"] = [{"bearer": []}, {}]
            operation.setdefault("parameters", []).append(_CALLER_PID)
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return spec


# ---- processes

ProcessOut = _record("ProcessOut", Process, swap={Usage: UsageOut})
StepOut = _record("StepOut", Step)


class StepIn(BaseModel):
    """What an agent says it is doing (aios.process.steps checks it: a longer text is cut)."""
    kind: str = Field(description="plan, thought, action, observation, decision, answer, error, note, ...")
    text: str
    data: dict[str, Any] = Field(default_factory=dict, description="anything more, as JSON (at most 64 KiB)")


class ProcessIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    priority: int = Field(0, ge=0, le=MAX_PRIORITY)
    parent_pid: int | None = None
    program: str | None = Field(None, description="a .py file, a module or a registered agent name; "
                                "none makes a bare process (an account to charge calls to)")
    task: str = Field("", description="passed to the program's main(task, os)")
    runner: Literal[RUNNERS] = "inproc"   # type: ignore[valid-type]
    model: str | None = Field(None, min_length=1, description="the model its program's LLM calls use when they "
                              "name none (one the kernel serves); default: the first the kernel serves")
    manifest: dict[str, Any] | None = Field(None, description="its permission manifest (models, tools, "
                                            "storage_read, storage_write, spawn, max_concurrent_syscalls, "
                                            "priority_ceiling, budget.run)")


class SignalIn(BaseModel):
    signal: Literal["suspend", "resume", "terminate", "kill"]


class ConfirmIn(BaseModel):
    approve: bool = Field(description="true: the held call is queued; false: it fails as denied")


class StopIn(BaseModel):
    drain: bool = Field(True, description="finish the calls in flight (else cancel them)")


class GcIn(BaseModel):
    older_than_s: float | None = Field(None, ge=0, description="remove history older than this many seconds "
                                       "(default: the kernel's retention_days)")
    dry_run: bool = Field(False, description="count what would go, remove nothing")


# ---- the other answers (the routes build them; schemathesis checks them against these)

class StopOut(BaseModel):
    model_config = _EXACT
    stopping: Literal[True]
    drain: bool


class GcOut(BaseModel):
    model_config = _EXACT
    cutoff: float = Field(description="history that ended before this time (Unix seconds) went")
    dry_run: bool
    num_syscalls: int
    num_processes: int = Field(description="exited processes whose records went (those with files or memory stay)")
    num_logs: int
    log_bytes: int
    remaining: dict[str, int] = Field(description="the calls and processes still recorded")


class HealthOut(BaseModel):
    model_config = _EXACT
    status: Literal["ok", "stopping"]
    models: list[str]
    num_in_flight: int


class ModelOut(BaseModel):
    model_config = _EXACT
    id: str
    object: Literal["model"]
    created: int
    owned_by: str = Field(description="the backend that serves it")


class ModelList(BaseModel):
    model_config = _EXACT
    object: Literal["list"]
    data: list[ModelOut]


class ToolOut(BaseModel):
    """A tool as ToolSpec.to_json writes it, with the concurrency it gets."""
    model_config = _EXACT
    name: str
    description: str
    parameters: dict[str, Any] = Field(description="the JSON schema of its arguments")
    timeout_s: float | None
    irreversible: bool
    needs_network: bool
    cost_usd: float
    max_concurrency: int
    source: str


class ToolList(BaseModel):
    model_config = _EXACT
    tools: list[ToolOut]


# a Python tool added to the running kernel (aios.tools.entries): the body that adds one and
# the answer that removes one, both made from its dataclass
_ADDED_LIMITS: dict[str, dict[str, Any]] = {
    "name": {"pattern": TOOL_NAME.pattern, "description": "the name agents call it by"},
    "entry": {"min_length": 1, "max_length": 1000, "description": f"{ENTRY_FORM} (a file by its absolute path)"},
    "timeout_s": {"gt": 0}, "cost_usd": {"ge": 0}, "max_concurrency": {"gt": 0},
    "irreversible": {"description": "each call waits for a principal's confirmation"}}
PythonToolIn = create_model("PythonToolIn", __config__=_EXACT, **{
    f.name: (typing.get_type_hints(PythonTool)[f.name],
             Field(... if f.default is dataclasses.MISSING else f.default, **_ADDED_LIMITS.get(f.name, {})))
    for f in dataclasses.fields(PythonTool)})
PythonToolOut = _record("PythonToolOut", PythonTool)


ResourceOut = create_model("ResourceOut", __config__=_EXACT,
                           **{name: (hint, ...) for name, hint in typing.get_type_hints(ResourceStats).items()})


class StatsOut(BaseModel):
    model_config = _EXACT
    now: float
    policy: str
    num_in_flight: int
    tokens_in: int
    tokens_out: int
    resources: list[ResourceOut]   # type: ignore[valid-type]
    processes: list[ProcessOut]   # type: ignore[valid-type]


def chat_body(passed: Iterable[str], ignored: Iterable[str]) -> dict[str, Any]:
    """The documented body of POST /v1/chat/completions: the fields it passes to the LLM
    syscall (typed as the syscall types them), the ones it reads itself, and the ones
    it accepts and ignores (any value); it refuses others."""
    limits = {name: spec for (kind, name), spec in _LIMITS.items() if kind is Kind.LLM}
    shape: dict[str, Any] = {name: (Any, None) for name in ignored}
    shape |= {name: (_type(Kind.LLM, name), Field(... if name in ("model", "messages") else None,
                                                  **limits.get(name, {}))) for name in passed}
    shape |= {"max_tokens": (int | None, Field(None, **limits["max_tokens"])),
              "max_completion_tokens": (int | None, Field(None, **limits["max_tokens"])),
              "stop": (str | list[str] | None, None), "stream": (bool, False),
              "stream_options": (dict[str, Any] | None, Field(None, description="include_usage: a last chunk "
                                                               "with the usage")),
              "n": (Literal[1], 1)}
    schema = create_model("ChatIn", __config__=_EXACT, **shape).model_json_schema(ref_template=_REF)
    schema.pop("$defs", None)   # the models it names are among the components (_BY_REFERENCE)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class ChatMessageOut(BaseModel):
    model_config = _EXACT
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoiceOut(BaseModel):
    model_config = _EXACT
    index: int
    message: ChatMessageOut
    finish_reason: str
    logprobs: None


class ChatUsageOut(BaseModel):
    model_config = _EXACT
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionOut(BaseModel):
    model_config = _EXACT
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoiceOut]
    usage: ChatUsageOut


class ChatDeltaOut(BaseModel):
    """What a chunk adds: the role (first chunk only), text, or the tool calls; the last, nothing."""
    model_config = _EXACT
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatChunkChoiceOut(BaseModel):
    model_config = _EXACT
    index: int
    delta: ChatDeltaOut
    finish_reason: str | None
    logprobs: None


class ChatChunkOut(BaseModel):
    """One event of a streamed chat completion; the last, when asked, has no choices and the usage."""
    model_config = _EXACT
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoiceOut]
    usage: ChatUsageOut | None = None


# ---- server-sent events, each an object of `event` and `data` (as OpenAPI 3.2 reads a
# stream, and schemathesis with it): `data` is JSON of one of the shapes named

class StateChangeOut(BaseModel):
    """A call's move to a state that is not its last (its last comes as the whole record)."""
    model_config = _EXACT
    id: str
    state: CallState
    at: float


class TokenOut(BaseModel):
    model_config = _EXACT
    text: str


class LaggedOut(BaseModel):
    """This reader was too slow: the number of events it missed so far."""
    model_config = _EXACT
    num_dropped: int


def _json_data(*models: type[BaseModel]) -> dict[str, Any]:
    return {"type": "string", "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [{"$ref": f"#/components/schemas/{m.__name__}"} for m in models]}}


def _event(name: str, *models: type[BaseModel]) -> dict[str, Any]:
    return {"type": "object", "required": ["event", "data"],
            "properties": {"event": {"const": name}, "data": _json_data(*models)}}


CALL_EVENTS = {"oneOf": [_event("state", SyscallOut, StateChangeOut), _event("token", TokenOut),
                         _event("lagged", LaggedOut)]}
PROCESS_EVENTS = {"oneOf": [_event("step", StepOut), _event("state", StateChangeOut), _event("lagged", LaggedOut),
                           _event("process", ProcessOut)]}
CHAT_EVENTS = {"type": "object", "required": ["data"], "properties": {"data": {"anyOf": [
    {"const": "[DONE]"}, _json_data(ChatChunkOut, ErrorBody)]}}}
SyscallPage = create_model("SyscallPage", __config__=_EXACT, data=(list[SyscallOut], ...),
                           next=(str | None, Field(..., description="`before` for the next, older page; null "
                                                   "at the last")))

_BY_REFERENCE = (*SYSCALL_MODELS, MessageIn, ErrorBody, StateChangeOut, TokenOut, LaggedOut, ChatChunkOut)
