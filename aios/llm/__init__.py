"""LLM backends: the one interface (`complete` and `stream`, OpenAI-shaped messages, tool
calls and usage) and the router from model names to backends.

Invariant: a backend never runs more than `num_slots` calls at once; one that is full
raises BackendBusy. The kernel never asks it to, so only callers outside the kernel see it."""
from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aios.errors import NotFound
from aios.syscall import LLMSyscall, Usage


@dataclass(frozen=True, slots=True)
class Request:
    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    stop: list[str] | None = None
    call_id: str | None = None
    num_prompt_tokens: int | None = None   # counted from the messages when not given

    def __post_init__(self) -> None:
        if self.num_prompt_tokens is None:
            object.__setattr__(self, "num_prompt_tokens", count_tokens(self.messages))

    @classmethod
    def of(cls, call: LLMSyscall) -> Request:
        return cls(call.model, call.messages, call.tools, call.max_tokens, call.temperature,
                   call.stop, call.id)


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a streamed reply. The last chunk carries finish_reason and usage."""
    text: str = ""
    num_tokens: int = 0
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Response:
    text: str
    finish_reason: str
    usage: Usage
    tool_calls: list[dict[str, Any]] | None = None
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return {"message": message, "finish_reason": self.finish_reason, "model": self.model,
                "usage": {"prompt_tokens": self.usage.tokens_in, "completion_tokens": self.usage.tokens_out,
                          "cost_usd": self.usage.cost_usd}}


@dataclass(frozen=True, slots=True)
class Resume:
    """Where an interrupted generation stands: the text and tokens produced so far, and the
    backend's own saved state (for the hardware model, where its KV cache went)."""
    text: str
    num_tokens: int
    tool_calls: list[dict[str, Any]] | None = None
    state: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    models: Sequence[str]
    num_slots: int
    timeout_s: float
    is_continuable: bool   # stream(resume=...) continues exactly where the snapshot stopped

    def stream(self, request: Request, resume: Resume | None = None) -> AsyncIterator[Chunk]: ...

    async def complete(self, request: Request) -> Response: ...

    def save(self, request: Request, resume: Resume) -> Any:
        """Called at preemption; returns the backend state to keep in the snapshot."""
        ...

    def discard(self, resume: Resume) -> None:
        """Frees what the backend kept for a snapshot that will never be resumed."""
        ...

    async def aclose(self) -> None: ...


async def collect(chunks: AsyncIterator[Chunk], model: str, prefix: str = "") -> Response:
    """Folds a stream into one Response."""
    parts = [prefix]
    tool_calls: list[dict[str, Any]] | None = None
    finish, usage = "stop", Usage()
    async for chunk in chunks:
        parts.append(chunk.text)
        if chunk.tool_calls:
            tool_calls = (tool_calls or []) + chunk.tool_calls
        if chunk.finish_reason:
            finish = chunk.finish_reason
        if chunk.usage:
            usage = chunk.usage
    return Response("".join(parts), finish, usage, tool_calls, model)


def count_tokens(messages: list[dict[str, Any]]) -> int:
    """An estimate used where a backend reports no count: 4 characters a token, plus 4
    tokens of framing per message (OpenAI's rule of thumb)."""
    num_chars = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            num_chars += len(content)
        elif isinstance(content, list):
            num_chars += sum(len(str(p.get("text", ""))) for p in content if isinstance(p, dict))
        for tc in m.get("tool_calls") or ():   # an assistant's function calls are prompt too
            fn = tc.get("function", {}) if isinstance(tc, dict) else {}
            num_chars += len(str(fn.get("name", ""))) + len(str(fn.get("arguments", "")))
    return 4 * len(messages) + math.ceil(num_chars / 4)


class Router:
    """Finds the backend that serves a model; the first one listed wins."""

    def __init__(self, backends: Sequence[Backend]):
        self.backends = list(backends)
        self._by_model: dict[str, Backend] = {}
        for b in self.backends:
            for m in b.models:
                self._by_model.setdefault(m, b)

    def route(self, model: str) -> Backend:
        try:
            return self._by_model[model]
        except KeyError:
            raise NotFound(f"unknown model {model!r}", field="model",
                           hint=f"models served: {', '.join(sorted(self._by_model)) or 'none'}") from None

    @property
    def models(self) -> list[str]:
        return sorted(self._by_model)
