"""Syscalls: what an agent asks the kernel for, one frozen dataclass per resource kind, and
the state machine every syscall follows; and the record of an agent process, which the
process syscalls and the REST API return.

Invariant: a syscall changes state only through `advance`, which refuses moves not in MOVES.
    [waiting_confirmation ->] queued -> running -> (preempted -> queued)* -> done | failed | cancelled
"""
from __future__ import annotations

import json
import os
import random
import time
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from enum import StrEnum
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import orjson

from aios.errors import Conflict, InvalidSyscall, InvalidTransition
from aios.param import MAX_IDEMPOTENCY_KEY_CHARS, MAX_MESSAGES, MAX_PRIORITY, MAX_TOKENS


class Kind(StrEnum):
    LLM = "llm"
    TOOL = "tool"
    MEMORY = "memory"
    STORAGE = "storage"
    PROCESS = "process"


class CallState(StrEnum):
    WAITING_CONFIRMATION = "waiting_confirmation"   # an irreversible action held for a principal's yes or no
    QUEUED = "queued"        # waiting in its resource's queue
    RUNNING = "running"      # holds a slot of its resource
    PREEMPTED = "preempted"  # lost its slot mid-generation; its context is snapshotted
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


MOVES: dict[CallState, frozenset[CallState]] = {
    CallState.WAITING_CONFIRMATION: frozenset({CallState.QUEUED, CallState.FAILED, CallState.CANCELLED}),
    CallState.QUEUED: frozenset({CallState.RUNNING, CallState.FAILED, CallState.CANCELLED}),
    CallState.RUNNING: frozenset({CallState.PREEMPTED, CallState.DONE, CallState.FAILED,
                                  CallState.CANCELLED}),
    CallState.PREEMPTED: frozenset({CallState.QUEUED, CallState.FAILED, CallState.CANCELLED}),
    CallState.DONE: frozenset(),
    CallState.FAILED: frozenset(),
    CallState.CANCELLED: frozenset(),
}
TERMINAL = frozenset({CallState.DONE, CallState.FAILED, CallState.CANCELLED})


class MemoryOp(StrEnum):
    ADD = "add"
    GET = "get"
    SEARCH = "search"
    LIST = "list"
    DELETE = "delete"
    STATS = "stats"          # the agent's working memory: budget, what is in it, hits and faults


class StorageOp(StrEnum):
    READ = "read"
    WRITE = "write"
    LIST = "list"
    DELETE = "delete"
    VERSIONS = "versions"    # the file's versions, oldest first
    DIFF = "diff"            # a unified diff between two versions (default: the last two)
    ROLLBACK = "rollback"    # a new version with the content of `version`, or of the version current `at` a time
    MOVE = "move"            # `path` to `to`: a new version there, and a deletion (a version) here


# The ops that change what is stored. The kernel commits their effect and the call's
# terminal record in one transaction (exactly once); the other ops only read.
MEMORY_WRITES = frozenset({MemoryOp.ADD, MemoryOp.DELETE})
STORAGE_WRITES = frozenset({StorageOp.WRITE, StorageOp.DELETE, StorageOp.ROLLBACK, StorageOp.MOVE})


class ProcessOp(StrEnum):
    STATUS = "status"
    LIST = "list"
    SUSPEND = "suspend"
    RESUME = "resume"
    KILL = "kill"


def new_id() -> str:
    """A 128-bit id in hex: 64 bits of nanosecond time, then 64 random bits, so ids sort
    by creation and the journal's index takes them in order (random ids scatter its
    pages). Ids name calls, they are not secrets: a fast generator is enough."""
    return f"{time.time_ns():016x}{_ids.getrandbits(64):016x}"


_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)   # a forked child must not repeat the parent's ids

MIN_ID_PREFIX = 4   # the shortest abbreviation of an id that is taken, as git takes commit ids
_HEX = frozenset("0123456789abcdef")


def is_id_prefix(text: str) -> bool:
    """Whether `text` can abbreviate an id (a call's, a token's): 4 or more hex digits."""
    return len(text) >= MIN_ID_PREFIX and _HEX.issuperset(text)


def one_by_prefix(prefix: str, ids: Iterable[str], what: str, field: str = "id") -> str | None:
    """The one id of `ids` that starts with `prefix`; None if none does; Conflict naming
    them if several do (give more of the id)."""
    found = sorted({i for i in ids if i.startswith(prefix)})
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise Conflict(f"{prefix!r} is the start of {len(found)} {what} ids: {shown}", field=field,
                       hint="give more of the id")
    return found[0] if found else None


def shortest_prefixes(ids: Iterable[str], at_least: int = 8) -> dict[str, str]:
    """Each id's shortest prefix (of at least `at_least` characters) that no other of
    `ids` starts with: what a table shows, and what a command takes back."""
    ordered = sorted(set(ids))
    out = {}
    for i, this in enumerate(ordered):
        neighbours = ordered[max(i - 1, 0):i] + ordered[i + 1:i + 2]   # they share its longest prefixes
        common = max((len(os.path.commonprefix([this, other])) for other in neighbours), default=0)
        out[this] = this[:max(at_least, common + 1)]
    return out


@dataclass(frozen=True, slots=True)
class Usage:
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    service_s: float = 0.0   # time the call held a slot, summed over its runs

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        """Usage again from its JSON ({tokens_in, tokens_out, cost_usd, service_s})."""
        return cls(data["tokens_in"], data["tokens_out"], data["cost_usd"], data["service_s"])

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.tokens_in + other.tokens_in, self.tokens_out + other.tokens_out,
                     self.cost_usd + other.cost_usd, self.service_s + other.service_s)


# ---- the process record (aios.process keeps the table; the SDK and the REST API read it)

class ProcState(StrEnum):
    RUNNING = "running"
    SUSPENDED = "suspended"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    name: str
    principal: str
    parent_pid: int | None
    priority: int
    state: ProcState
    created: float
    exited: float | None = None
    exit_reason: str | None = None
    usage: Usage = Usage()
    program: str | None = None     # what it runs (a file, a module, a registered name); None: a bare account
    runner: str | None = None      # "inproc" | "subprocess"
    exit_code: int | None = None
    cpu_s: float = 0.0             # CPU time of its OS process (subprocess runner)
    max_rss_kib: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Process:
        """The record again from `process_json`'s JSON (what the SDK reads)."""
        return cls(data["pid"], data["name"], data["principal"], data["parent_pid"], data["priority"],
                   ProcState(data["state"]), data["created"], data["exited"], data["exit_reason"],
                   Usage.from_json(data["usage"]), data["program"],
                   data["runner"], data["exit_code"], data["cpu_s"], data["max_rss_kib"])


def process_json(p: Process) -> dict[str, Any]:
    """A process as the REST API shows it (GET /v1/processes/{pid}), and the SDK reads it."""
    u = p.usage
    return {"pid": p.pid, "name": p.name, "principal": p.principal, "parent_pid": p.parent_pid,
            "priority": p.priority, "state": p.state.value, "created": p.created, "exited": p.exited,
            "exit_reason": p.exit_reason, "exit_code": p.exit_code, "program": p.program, "runner": p.runner,
            "cpu_s": p.cpu_s, "max_rss_kib": p.max_rss_kib,
            "usage": {"tokens_in": u.tokens_in, "tokens_out": u.tokens_out, "cost_usd": u.cost_usd,
                      "service_s": u.service_s}}


@dataclass(frozen=True, slots=True)
class Step:
    """What an agent process said it was doing, numbered in its process (aios.process.steps
    keeps them; the SDK reads them back with from_json)."""
    seq: int
    at: float
    kind: str                 # plan | thought | action | observation | decision | answer | error | note | ...
    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "kind": self.kind, "text": self.text, "data": self.data}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Step:
        return cls(d["seq"], d["at"], d["kind"], d["text"], d.get("data") or {})


@dataclass(frozen=True, slots=True, kw_only=True)
class Syscall:
    """Fields common to every kind; a subclass per kind adds its payload fields."""
    kind: ClassVar[Kind]
    id: str = field(default_factory=new_id)
    pid: int = 0
    principal: str = "local"
    priority: int = 0
    deadline: float | None = None     # absolute kernel-clock time; None means no deadline
    state: CallState = CallState.QUEUED
    created: float = 0.0
    started: float | None = None      # first time it got a slot
    finished: float | None = None
    usage: Usage = Usage()
    num_preemptions: int = 0
    result: Any = None
    error: dict[str, Any] | None = None   # AiosError.to_dict() of a failed or cancelled call
    # The payload's JSON text, encoded once when the call is decoded (new_call), for the
    # journal. Not an init field: dataclasses.replace, which may change the payload,
    # drops it (the journal then encodes the payload itself); evolve, which only moves
    # state, keeps it.
    payload_text: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def resource(self) -> str:
        """The name of the queue this call waits in (one queue per resource)."""
        return self.kind.value

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def is_store_write(self) -> bool:
        """Changes what the kernel's own database stores (a memory or storage write)."""
        return False

    @property
    def is_effect_free(self) -> bool:
        """Running it twice, or running it and forgetting it, changes nothing anybody can
        see: a generation, or a memory or storage read."""
        return self.kind is Kind.LLM or (self.kind in (Kind.MEMORY, Kind.STORAGE) and not self.is_store_write)

    def payload(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _PAYLOAD_FIELDS[self.kind][1]}


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMSyscall(Syscall):
    kind: ClassVar[Kind] = Kind.LLM
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    stream: bool = False

    @property
    def resource(self) -> str:
        return f"llm:{self.model}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolSyscall(Syscall):
    kind: ClassVar[Kind] = Kind.TOOL
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)
    # the client's own, the same when it resubmits a call that failed as interrupted;
    # the tool gets it (else the call's id) as ToolContext.idempotency_key
    idempotency_key: str | None = None

    @property
    def resource(self) -> str:
        return f"tool:{self.tool}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MemorySyscall(Syscall):
    kind: ClassVar[Kind] = Kind.MEMORY
    op: MemoryOp
    key: str | None = None
    content: str | None = None
    query: str | None = None
    k: int = 5
    owner: int | None = None   # get, list, search: another agent's memory that it shares (its pid)

    @property
    def is_store_write(self) -> bool:
        return self.op in MEMORY_WRITES


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageSyscall(Syscall):
    kind: ClassVar[Kind] = Kind.STORAGE
    op: StorageOp
    path: str = ""
    data: str | None = None
    version: int | None = None   # read, diff (from), rollback (to)
    other: int | None = None     # diff: the version to compare with (default: the current one)
    at: float | None = None      # rollback: to the version current at this time
    to: str | None = None        # move: the new path

    @property
    def is_store_write(self) -> bool:
        return self.op in STORAGE_WRITES


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSyscall(Syscall):
    kind: ClassVar[Kind] = Kind.PROCESS
    op: ProcessOp
    target_pid: int | None = None


SYSCALL_TYPES: dict[Kind, type[Syscall]] = {
    cls.kind: cls for cls in (LLMSyscall, ToolSyscall, MemorySyscall, StorageSyscall, ProcessSyscall)
}
COMMON_FIELDS = frozenset(f.name for f in fields(Syscall))   # payload_text among them: not payload
# Per kind: the type hints and dataclass fields of its payload, read once.
_PAYLOAD_FIELDS = {
    kind: (typing.get_type_hints(cls), {f.name: f for f in fields(cls) if f.name not in COMMON_FIELDS})
    for kind, cls in SYSCALL_TYPES.items()
}

def _field_checkers(kind: Kind) -> tuple[dict[str, Callable[[Any], Any]], frozenset[str]]:
    hints, payload_fields = _PAYLOAD_FIELDS[kind]
    required = frozenset(n for n, f in payload_fields.items()
                         if f.default is MISSING and f.default_factory is MISSING)
    return {n: _checker(hints[n], n) for n in payload_fields}, required


# What a caller may set when submitting; the rest is the kernel's to fill in.
CALLER_FIELDS = frozenset({"priority", "timeout_s"})
_NOT_PAYLOAD = CALLER_FIELDS | {"kind"}


def advance(call: Syscall, to: CallState, **changes: Any) -> Syscall:
    """The one way a syscall changes state; refuses moves the table does not allow.
    Returns a copy with the changes."""
    if to not in MOVES[call.state]:
        raise InvalidTransition(call.id, call.state, to)
    changes["state"] = to
    return evolve(call, **changes)


_COPIERS: dict[type, Callable[[Any], Any]] = {}


def _copier(cls: type) -> Callable[[Any], Any]:
    """A function that copies a frozen slotted dataclass field by field in straight-line
    code, built once per class (as dataclasses builds __init__)."""
    lines = ["def copy(record):", "    new = new_of(cls)"]
    lines += [f"    set_(new, {f.name!r}, record.{f.name})" for f in fields(cls)]
    lines.append("    return new")
    scope = {"cls": cls, "new_of": object.__new__, "set_": object.__setattr__}
    exec("\n".join(lines), scope)   # noqa: S102 (code built from the class's own field names)
    return scope["copy"]


def evolve(record: Any, **changes: Any) -> Any:
    """A copy of a frozen dataclass `record` with `changes`, without validation: for the
    records the kernel changes on every syscall (a call, a process), where
    dataclasses.replace, which re-runs __init__ with every field, costs several times more.
    A name that is not a field raises AttributeError."""
    cls = type(record)
    copy = _COPIERS.get(cls)
    if copy is None:
        copy = _COPIERS[cls] = _copier(cls)
    new = copy(record)
    for name, value in changes.items():
        object.__setattr__(new, name, value)
    return new


def check_priority(value: Any, field_name: str = "priority") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSyscall(f"{field_name} must be an integer, got {value!r}", field=field_name,
                             hint=f"use a whole number from 0 to {MAX_PRIORITY}")
    if not 0 <= value <= MAX_PRIORITY:
        raise InvalidSyscall(f"{field_name} must be between 0 and {MAX_PRIORITY}, got {value}",
                             field=field_name, hint="higher numbers are more urgent")
    return value


def decode(data: Any, *, pid: int, principal: str, created: float) -> Syscall:
    """Builds a syscall from an untrusted JSON-shaped dict; every error names its field.

    The dict has `kind`, the kind's payload fields, and optionally `priority` and
    `timeout_s` (seconds from now; becomes the absolute `deadline`)."""
    if not isinstance(data, dict):
        raise InvalidSyscall(f"a syscall must be a JSON object, got {type(data).__name__}")
    raw_kind = data.get("kind")
    try:
        kind = Kind(raw_kind)
    except ValueError:
        raise InvalidSyscall(f"unknown syscall kind {raw_kind!r}", field="kind",
                             hint=f"one of: {', '.join(k.value for k in Kind)}") from None
    cls = SYSCALL_TYPES[kind]
    checkers, required = _CHECKERS[kind]
    values: dict[str, Any] = {}
    for name, value in data.items():   # the fields given, not every field the kind has
        check = checkers.get(name)
        if check is not None:
            values[name] = check(value)
        elif name not in _NOT_PAYLOAD:
            unknown = sorted(data.keys() - checkers.keys() - _NOT_PAYLOAD)[0]
            raise InvalidSyscall(f"unknown field {unknown!r} for a {kind} syscall", field=unknown,
                                 hint=f"{kind} syscalls take: {', '.join(sorted(checkers))}")
    if not required <= values.keys():
        name = next(n for n in checkers if n in required and n not in values)
        raise InvalidSyscall(f"a {kind} syscall needs the field {name!r}", field=name)
    priority = check_priority(data.get("priority", 0))
    deadline = None
    if data.get("timeout_s") is not None:
        timeout_s = data["timeout_s"]
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise InvalidSyscall(f"timeout_s must be a positive number of seconds, got {timeout_s!r}",
                                 field="timeout_s")
        deadline = created + float(timeout_s)
    return checked(cls(pid=pid, principal=principal, priority=priority, deadline=deadline,
                       created=created, **values))


def new_call(call: Syscall | Mapping[str, Any], *, pid: int, principal: str, created: float) -> Syscall:
    """A new call of this caller (`pid`, `principal`) made at `created`, with a fresh id:
    decoded from a JSON-shaped dict, or a Syscall built in code, checked as a dict is (a
    Syscall may be submitted twice, and ids are never reused). The one decode of a call:
    its payload checked (JSON, as the journal stores it) and its paths normalised, so
    that nothing after it checks them again."""
    if not isinstance(call, Syscall):
        call = decode(dict(call) if isinstance(call, Mapping) else call, pid=pid, principal=principal,
                      created=created)
    else:
        check_priority(call.priority)
        call = checked(evolve(call, id=new_id(), pid=pid, principal=principal, state=CallState.QUEUED,
                              created=created))
    _check_json(call)
    return call


def checked(call: Syscall) -> Syscall:
    """The call with its paths normalised (check_path), once its payload is checked."""
    if isinstance(call, StorageSyscall):
        path = check_path(call.path) if call.path else call.path
        to = check_path(call.to, "to") if call.to else call.to
        if path != call.path or to != call.to:
            call = evolve(call, path=path, to=to)
    check_payload(call)
    return call


def _check_json(call: Syscall) -> None:
    """The payload as the journal will store it: JSON values only (a set, an object
    refused here, not when its batch is written), encoded once (`payload_text`)."""
    try:
        text = json_text(call.payload())
    except (TypeError, ValueError) as e:
        raise InvalidSyscall(f"the {call.kind} syscall's payload is not JSON: {e}",
                             hint="the journal stores payloads as JSON: strings, numbers, lists and dicts") from None
    object.__setattr__(call, "payload_text", text)


def json_text(value: Any) -> str:
    """A value as JSON text: by orjson, several times faster than json on the syscall
    path; by json where orjson refuses a value json takes (an integer beyond 64 bits).
    TypeError for a value that is not JSON."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


def check_path(path: str, field: str = "path") -> str:
    """A relative path with no `..`, no NUL and no empty parts; returned normalised."""
    if "\x00" in path:
        raise InvalidSyscall(f"{field} must not contain NUL bytes", field=field)
    if path.startswith("/"):
        raise InvalidSyscall(f"{field} {path!r} is absolute", field=field,
                             hint="paths are relative to the agent's own file space")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidSyscall(f"{field} {path!r} climbs out with '..'", field=field)
    return "/".join(parts)


def check_payload(call: Syscall) -> None:
    match call:
        case LLMSyscall():
            if not call.model:
                raise InvalidSyscall("model must not be empty", field="model")
            if not call.messages:
                raise InvalidSyscall("messages must hold at least one message", field="messages")
            if len(call.messages) > MAX_MESSAGES:
                raise InvalidSyscall(f"at most {MAX_MESSAGES} messages per call", field="messages")
            for i, m in enumerate(call.messages):
                if "role" not in m or not isinstance(m["role"], str):
                    raise InvalidSyscall(f"messages[{i}] has no string 'role'", field=f"messages[{i}].role",
                                         hint="OpenAI-shaped messages: {'role': 'user', 'content': '...'}")
                content = m.get("content")
                if content is not None and not isinstance(content, (str, list)):
                    raise InvalidSyscall(f"messages[{i}].content must be a string or a list of parts",
                                         field=f"messages[{i}].content")
            if call.max_tokens is not None and not 0 < call.max_tokens <= MAX_TOKENS:
                raise InvalidSyscall(f"max_tokens must be between 1 and {MAX_TOKENS}", field="max_tokens")
        case ToolSyscall():
            if not call.tool:
                raise InvalidSyscall("tool must not be empty", field="tool")
            if call.idempotency_key is not None and not 0 < len(call.idempotency_key) <= MAX_IDEMPOTENCY_KEY_CHARS:
                raise InvalidSyscall(f"idempotency_key must have 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters",
                                     field="idempotency_key", hint="leave it out to use the call's id")
        case MemorySyscall(op=MemoryOp.ADD) if call.content is None:
            raise InvalidSyscall("memory add needs 'content'", field="content")
        case MemorySyscall(op=MemoryOp.SEARCH) if not call.query:
            raise InvalidSyscall("memory search needs 'query'", field="query")
        case MemorySyscall(op=MemoryOp.GET | MemoryOp.DELETE) if not call.key:
            raise InvalidSyscall(f"memory {call.op} needs 'key'", field="key")
        case StorageSyscall(op=StorageOp.WRITE) if call.data is None:
            raise InvalidSyscall("storage write needs 'data'", field="data")
        case StorageSyscall(op=StorageOp.ROLLBACK) if (call.version is None) == (call.at is None):
            raise InvalidSyscall("storage rollback needs exactly one of 'version' and 'at'", field="version")
        case StorageSyscall(op=StorageOp.READ | StorageOp.WRITE | StorageOp.DELETE | StorageOp.VERSIONS
                            | StorageOp.DIFF | StorageOp.ROLLBACK | StorageOp.MOVE) if not call.path:
            raise InvalidSyscall(f"storage {call.op} needs 'path'", field="path")
        case StorageSyscall(op=StorageOp.MOVE) if not call.to:
            raise InvalidSyscall("storage move needs 'to', the new path", field="to")
        case StorageSyscall(op=StorageOp.MOVE) if call.to == call.path:
            raise InvalidSyscall(f"cannot move {call.path!r} onto itself", field="to")
        case ProcessSyscall(op=op) if op not in (ProcessOp.LIST,) and call.target_pid is None:
            raise InvalidSyscall(f"process {op} needs 'target_pid'", field="target_pid")



def _checker(hint: Any, name: str) -> Callable[[Any], Any]:
    """Builds, once per field, the check of a JSON value against the field's type hint
    (the few shapes syscalls use); the check returns the value, converted if need be."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = _checker(next(a for a in typing.get_args(hint) if a is not type(None)), name)
        return lambda value: None if value is None else inner(value)
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        def enum(value: Any) -> Any:
            try:
                return hint(value)
            except ValueError:
                raise InvalidSyscall(f"{name} must be one of {', '.join(v.value for v in hint)}, "
                                     f"got {value!r}", field=name) from None
        return enum
    expected = origin or hint
    item = typing.get_args(hint)[0] if origin is list else None
    item_type = (typing.get_origin(item) or item) if item is not None else None

    def check(value: Any) -> Any:
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if expected is int and isinstance(value, bool) or not isinstance(value, expected):
            raise InvalidSyscall(f"{name} must be {_type_name(hint)}, got {type(value).__name__}", field=name)
        if item_type is not None:
            for i, v in enumerate(value):
                if not isinstance(v, item_type):
                    raise InvalidSyscall(f"{name}[{i}] must be {_type_name(item)}, got {type(v).__name__}",
                                         field=f"{name}[{i}]")
        return value
    return check


def _type_name(hint: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             dict: "an object", list: "a list"}
    return names.get(typing.get_origin(hint) or hint, str(hint))


def syscall_json(call: Syscall) -> dict[str, Any]:
    """A syscall as the REST API shows it (GET /v1/syscalls/{id}), and the SDK reads it."""
    u = call.usage
    return {"id": call.id, "kind": call.kind.value, "pid": call.pid, "principal": call.principal,
            "state": call.state.value, "priority": call.priority, "deadline": call.deadline,
            "created": call.created, "started": call.started, "finished": call.finished,
            "num_preemptions": call.num_preemptions,
            "usage": {"tokens_in": u.tokens_in, "tokens_out": u.tokens_out, "cost_usd": u.cost_usd,
                      "service_s": u.service_s},
            "payload": call.payload(), "result": call.result, "error": call.error}


def encode(call: Syscall) -> dict[str, Any]:
    """The JSON-shaped form of a syscall's payload, as `decode` takes it."""
    return {"kind": call.kind.value, **call.payload(), "priority": call.priority}


_CHECKERS = {kind: _field_checkers(kind) for kind in Kind}
