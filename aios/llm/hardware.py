"""The hardware-model backend's fixed-rate engine, and the responders of every
hardware-model backend. The engine here is a SIMULATED serving engine, not a model: it
decides when each token appears (a fixed number of batch slots, a prefill time that grows
with the prompt, a per-token decode time, a swap or recompute charge on resume); a
responder decides what the tokens are (deterministic scripted text, canned replies from a
file, replies computed by a function, or a real model through litellm). The discrete-event
engine of aios.hardware, driven live, is in aios.llm.simulated.

Invariant: the reply to a request is a pure function of the request (a real model's reply
excepted), so a generation resumed at token i continues with exactly the tokens an
uninterrupted run would give."""
from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from aios.clock import Clock
from aios.config import HardwareBackendSettings
from aios.errors import BackendBusy, ConfigError
from aios.llm import Chunk, Request, Response, Resume, collect
from aios.llm.provider import import_litellm, map_error
from aios.syscall import Usage

_WORDS = ("the kernel schedules agent calls onto shared model slots while each process waits "
          "for its tokens and the journal records every state so nothing accepted is lost "
          "after a crash fair share keeps heavy agents from starving light ones").split()
_TOKEN = re.compile(r"\s*\S+|\s+")


@dataclass(frozen=True, slots=True)
class Reply:
    tokens: tuple[str, ...]
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str = "stop"   # "length" when cut at max_tokens, "tool_calls" with tool calls

    def within(self, max_tokens: int | None) -> Reply:
        """The reply as a server sends it under `max_tokens`: cut there, and then said to
        have ended for "length", as a reply that used every token it was allowed did."""
        if self.tool_calls:
            return replace(self, finish_reason="tool_calls")
        if max_tokens is not None and len(self.tokens) >= max_tokens:
            return replace(self, tokens=self.tokens[:max_tokens], finish_reason="length")
        return self


@dataclass(frozen=True, slots=True)
class SavedKV:
    """Where a preempted call's KV cache went: swapped to host memory, or dropped."""
    num_tokens: int
    mode: str   # "swap" | "recompute"


class Responder(Protocol):
    """Decides what a simulated call says; the engine decides when each token arrives.
    A responder that waits on real work (a real model) returns an awaitable."""

    def reply(self, request: Request) -> Reply | Awaitable[Reply]: ...


async def ask(responder: Responder, request: Request, clock: Clock) -> Reply:
    """The responder's reply. An awaitable one runs with the clock held busy, so virtual
    time stands still while a real model answers (on a wall clock its latency is real)."""
    reply = responder.reply(request)
    if inspect.isawaitable(reply):
        with clock.busy():
            reply = await reply
    return reply.within(request.max_tokens)


def make_responder(settings: HardwareBackendSettings) -> Responder:
    if settings.responder_model is not None:
        extra = {"api_base": settings.responder_api_base} if settings.responder_api_base else {}
        return LiteLLMResponder(settings.responder_model, timeout=settings.timeout_s, **extra)
    return ScriptedResponder(settings.default_output_tokens, settings.replies_file)


class ScriptedResponder:
    """Scripted text of the requested length (max_tokens, else a default), or a canned
    reply when the last user message contains an entry's `match` string.

    Replies file: one JSON object per line, {"match": str, "reply": str, "tool_calls": [...]}."""

    def __init__(self, default_tokens: int, replies_file: Path | None = None):
        self.default_tokens = default_tokens
        self.canned: list[dict[str, Any]] = []
        if replies_file is not None:
            self.canned = _read_replies(replies_file)

    def reply(self, request: Request) -> Reply:
        last_user = next((m.get("content") for m in reversed(request.messages) if m.get("role") == "user"), "")
        for entry in self.canned:
            if isinstance(last_user, str) and entry["match"] in last_user:
                return Reply(tuple(_TOKEN.findall(entry.get("reply", ""))), entry.get("tool_calls"))
        num_tokens = request.max_tokens or self.default_tokens
        seed = hashlib.blake2b(json.dumps([request.model, request.messages], sort_keys=True,
                                          default=str).encode(), digest_size=8).digest()
        base = int.from_bytes(seed, "little")
        words = [_WORDS[_mix(base + i) % len(_WORDS)] for i in range(num_tokens)]
        return Reply(tuple(w if i == 0 else " " + w for i, w in enumerate(words)))


class FunctionResponder:
    """Replies computed from the request by `fn`: the reply's text, or (text, tool_calls).
    Tests script a model with it; the compiler benchmark's replay model is one."""

    def __init__(self, fn: Callable[[Request], str | tuple[str, list[dict[str, Any]] | None]]):
        self.fn = fn

    def reply(self, request: Request) -> Reply:
        out = self.fn(request)
        text, tool_calls = out if isinstance(out, tuple) else (out, None)
        return Reply(tuple(_TOKEN.findall(text)), tool_calls)


class LiteLLMResponder:
    """A real model writes the reply, through litellm (any provider, one non-streamed call);
    the engine then paces its tokens, split as the other responders split text.
    `completion_kwargs` go to litellm.acompletion as given (api_base, timeout,
    mock_response, ...). The request's own model name is the simulated one; `model` names
    the real model that answers."""

    def __init__(self, model: str, **completion_kwargs: Any):
        self.model = model
        self.completion_kwargs = completion_kwargs

    async def reply(self, request: Request) -> Reply:
        kwargs: dict[str, Any] = {"model": self.model, "messages": request.messages, **self.completion_kwargs}
        for name in ("tools", "max_tokens", "temperature", "stop"):
            value = getattr(request, name)
            if value is not None:
                kwargs[name] = value
        try:
            response = await import_litellm().acompletion(**kwargs)
        except Exception as e:
            raise map_error(e, self.model)[0] from None
        choice = response.choices[0]
        tool_calls = [tc.model_dump() for tc in choice.message.tool_calls] if choice.message.tool_calls else None
        return Reply(tuple(_TOKEN.findall(choice.message.content or "")), tool_calls, choice.finish_reason or "stop")


def _mix(x: int) -> int:
    """splitmix64's finaliser: consecutive inputs give unrelated outputs."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _read_replies(path: Path) -> list[dict[str, Any]]:
    entries = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read replies file {path}: {e.strerror}", field="replies_file") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{n} is not JSON: {e.msg}", field="replies_file") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("match"), str):
            raise ConfigError(f"{path}:{n} needs a string 'match'", field="replies_file")
        entries.append(entry)
    return entries


class HardwareBase:
    """What both engines of the hardware-model backend share: the settings, the clock and
    the responder (the engine decides when the tokens come, the responder what they say)."""
    is_continuable = True

    def __init__(self, settings: HardwareBackendSettings, clock: Clock, responder: Responder | None = None):
        self.settings = settings
        self.name = settings.name
        self.models: Sequence[str] = settings.models
        self.num_slots = settings.num_slots
        self.timeout_s = settings.timeout_s
        self.clock = clock
        self.responder: Responder = responder or make_responder(settings)


class HardwareBackend(HardwareBase):
    """The fixed-rate engine: up to `num_slots` calls decode together, each at its own
    fixed pace; time from the clock."""

    def __init__(self, settings: HardwareBackendSettings, clock: Clock,
                 responder: Responder | None = None):
        super().__init__(settings, clock, responder)
        self.num_running = 0
        self.num_swapped_kv_tokens = 0   # KV held in host memory for preempted calls

    def prefill_s(self, num_tokens: int) -> float:
        return self.settings.ttft_base_s + num_tokens / self.settings.prefill_tokens_per_s

    def restore_s(self, saved: SavedKV) -> float:
        """Swap: the KV goes out at preemption and back at resume, both over the host link
        (charged together at resume). Recompute: a prefill over prompt and generated tokens."""
        if saved.mode == "swap":
            return 2 * saved.num_tokens * self.settings.kv_bytes_per_token / self.settings.swap_bytes_per_s
        return self.prefill_s(saved.num_tokens)

    def service_s(self, num_prompt_tokens: int, num_output_tokens: int) -> float:
        """The uninterrupted time of one call: prefill with the first token, then decode."""
        return self.prefill_s(num_prompt_tokens) + max(0, num_output_tokens - 1) * self.settings.decode_s_per_token

    async def stream(self, request: Request, resume: Resume | None = None) -> AsyncIterator[Chunk]:
        if self.num_running >= self.num_slots:
            raise BackendBusy(f"backend {self.name} has all {self.num_slots} slots busy",
                              hint="retry later, or submit through the kernel, which queues")
        self.num_running += 1
        try:
            reply = await ask(self.responder, request, self.clock)
            num_prompt = request.num_prompt_tokens
            start = 0
            # each token is due at a time fixed from the start, so a sleep that overshoots
            # (timer granularity on a sped-up wall clock) does not slow the whole stream
            due = self.clock.now()
            if resume is None:
                due += self.prefill_s(num_prompt)
            else:
                start = resume.num_tokens
                saved = resume.state if isinstance(resume.state, SavedKV) else SavedKV(num_prompt + start, "recompute")
                self.discard_saved(saved)
                due += self.restore_s(saved)
            await self.clock.sleep(due - self.clock.now())
            for i in range(start, len(reply.tokens)):
                if i > start or resume is not None:
                    due += self.settings.decode_s_per_token
                    await self.clock.sleep(due - self.clock.now())
                yield Chunk(reply.tokens[i], 1)
            yield Chunk(tool_calls=reply.tool_calls, finish_reason=reply.finish_reason,
                        usage=Usage(num_prompt, len(reply.tokens)))
        finally:
            self.num_running -= 1

    async def complete(self, request: Request) -> Response:
        return await collect(self.stream(request), request.model)

    def save(self, request: Request, resume: Resume) -> SavedKV:
        saved = SavedKV(request.num_prompt_tokens + resume.num_tokens, self.settings.preemption_mode)
        if saved.mode == "swap":
            self.num_swapped_kv_tokens += saved.num_tokens
        return saved

    def discard_saved(self, saved: SavedKV) -> None:
        if saved.mode == "swap":
            self.num_swapped_kv_tokens -= saved.num_tokens

    def discard(self, resume: Resume) -> None:
        if isinstance(resume.state, SavedKV):
            self.discard_saved(resume.state)

    async def aclose(self) -> None:
        return None
