"""What the SDK hands back: frozen dataclasses read from the kernel's JSON shapes (the
bodies of the REST API, which the in-process transport produces too).

Invariant: every result is built here, from the wire shape, whichever transport fetched it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aios.errors import AiosError, BackendError
from aios.syscall import CallState, Kind, Process, Usage


@dataclass(frozen=True, slots=True)
class SyscallInfo:
    """One syscall as the kernel records it. A failed or cancelled call has `error` set;
    `raise_for_error` raises it."""
    id: str
    kind: Kind
    pid: int
    principal: str
    state: CallState
    priority: int
    deadline: float | None
    created: float
    started: float | None
    finished: float | None
    num_preemptions: int
    usage: Usage
    payload: dict[str, Any]
    result: Any
    error: AiosError | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SyscallInfo:
        error = data.get("error")
        return cls(data["id"], Kind(data["kind"]), data["pid"], data["principal"], CallState(data["state"]),
                   data["priority"], data["deadline"], data["created"], data["started"], data["finished"],
                   data["num_preemptions"], Usage.from_json(data["usage"]), data["payload"], data.get("result"),
                   AiosError.from_dict(error) if error is not None else None)

    @property
    def is_terminal(self) -> bool:
        return self.state in (CallState.DONE, CallState.FAILED, CallState.CANCELLED)

    def raise_for_error(self) -> SyscallInfo:
        """Raises the call's error (the AiosError subclass its code names); else returns self."""
        if self.error is not None:
            raise self.error
        return self


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model asked for (OpenAI shape). `arguments` is the model's JSON text."""
    id: str
    name: str
    arguments: str

    def parse_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; BackendError if the model wrote something else."""
        try:
            args = json.loads(self.arguments)
        except json.JSONDecodeError as e:
            raise BackendError(f"the model's arguments for {self.name!r} are not JSON: {e.msg}",
                               field="arguments") from None
        if not isinstance(args, dict):
            raise BackendError(f"the model's arguments for {self.name!r} are not a JSON object",
                               field="arguments")
        return args

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToolCall:
        fn = data.get("function", {})
        args = fn.get("arguments", "{}")
        return cls(data.get("id", ""), fn.get("name", ""), args if isinstance(args, str) else json.dumps(args))


@dataclass(frozen=True, slots=True)
class ChatResult:
    """An LLM call's reply; `usage` is the call's (tokens, cost, and time it held a slot)."""
    text: str
    tool_calls: list[ToolCall]
    finish_reason: str
    usage: Usage
    model: str
    call_id: str

    @classmethod
    def from_call(cls, call: SyscallInfo) -> ChatResult:
        result = call.raise_for_error().result
        message = result["message"]
        return cls(message.get("content") or "", [ToolCall.from_json(tc) for tc in message.get("tool_calls") or []],
                   result["finish_reason"], call.usage, result["model"], call.id)


# A process as the SDK returns it: the kernel's own record (one shape, aios.syscall.Process),
# read back from the REST API's JSON by Process.from_json.
ProcessInfo = Process


@dataclass(frozen=True, slots=True)
class MemoryEntry:
    key: str
    content: str
    score: float | None = None   # search results: cosine similarity to the query (BM25's score
                                 # where no embedding model loads)


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """A tool the kernel offers: `parameters` is the JSON schema of its arguments."""
    name: str
    description: str
    parameters: dict[str, Any]
    max_concurrency: int
    timeout_s: float | None
    irreversible: bool
    needs_network: bool
    cost_usd: float
    source: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToolInfo:
        return cls(data["name"], data["description"], data["parameters"], data["max_concurrency"],
                   data["timeout_s"], data["irreversible"], data["needs_network"], data["cost_usd"],
                   data["source"])

    def openai_schema(self) -> dict[str, Any]:
        """The tool as an OpenAI `tools=[...]` entry, for function calling."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}
