"""What the LLMCompiler, ReAct and parallel function calling agents share: the tools the
kernel offers them, tool calls as tool syscalls (so the kernel schedules, meters and
authorizes each), LLM calls with a span in the trace, and the run's token budget."""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from aios.agents.trace import AgentFailed, Outcome, Span, Trace
from aios.errors import AiosError, NotFound, QuotaExceeded
from aios.llm import count_tokens
from aios.sdk import AsyncClient, ToolInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits of one run. Tokens are the LLM's, prompt plus output, of this run's calls."""
    max_tokens: int | None = 200_000
    max_cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """What every tool-using agent is configured with."""
    model: str | None = None                 # None: the first model the kernel serves
    budget: Budget = field(default_factory=Budget)
    task_timeout_s: float = 60.0             # each tool call's deadline
    tools: Sequence[str] | None = None       # the tools it may use; None: all the kernel offers


class Agent:
    """The skeleton of the LLMCompiler, ReAct and parallel function calling agents: a
    client bound to a process, a config, a trace in the given clock, and the steps it
    says it takes (`say`), which a run as a kernel process reports as they happen."""
    config_type: type[AgentConfig] = AgentConfig

    def __init__(self, os: AsyncClient, config: AgentConfig | None = None,
                 now: Callable[[], float] = time.monotonic):
        self.os = os
        self.config: Any = config or self.config_type()
        self.trace = Trace(now, on_note=lambda text: self.say("note", text))
        self.steps: list[tuple[str, str]] = []   # (kind, text) of each step said, in order
        self._steps_out: MemoryObjectSendStream[tuple[str, str, dict[str, Any]]] | None = None

    def say(self, kind: str, text: str, **data: Any) -> None:
        """A step of the run (plan, thought, action, observation, decision, answer, note):
        kept, and, while `reporting`, sent to the kernel in order without waiting for it."""
        self.steps.append((kind, text))
        if self._steps_out is not None:
            self._steps_out.send_nowait((kind, text, data))

    @asynccontextmanager
    async def reporting(self) -> AsyncIterator[None]:
        """While inside, the steps said are reported (Client.step) by a task of their own,
        in order; on the way out the rest are sent before it returns. A client with no
        process (not a kernel process) reports nothing; a report that fails stops the
        reports, never the run."""
        if self.os.pid is None:
            yield
            return
        send, receive = anyio.create_memory_object_stream[tuple[str, str, dict[str, Any]]](math.inf)

        async def post() -> None:
            failed = False
            async with receive:
                async for kind, text, data in receive:
                    if failed:
                        continue
                    try:
                        await self.os.step(kind, text, **data)
                    except AiosError as e:
                        failed = True
                        log.warning("the kernel took no more steps of this run: %s", e)

        async with anyio.create_task_group() as tg:
            tg.start_soon(post)
            self._steps_out = send
            try:
                yield
            finally:
                self._steps_out = None
                send.close()

    async def run(self, question: str) -> Outcome:
        raise NotImplementedError

    async def toolbox(self) -> Toolbox:
        cfg = self.config
        return await Toolbox.load(self.os, self.trace, cfg.budget, only=cfg.tools, model=cfg.model,
                                  task_timeout_s=cfg.task_timeout_s)

    def fail(self, error: str, num_rounds: int, **extra: Any) -> Outcome:
        self.trace.notes.append(error)   # said once, as the run's error, not as a note too
        return Outcome(None, error, self.trace, num_rounds, extra)

    @classmethod
    async def main(cls, task: str, os: AsyncClient) -> str:
        """The agent program's `main`: its steps reported as it goes, then the answer, or
        AgentFailed (exit code 1) saying why. An empty answer is no answer."""
        agent = cls(os)
        async with agent.reporting():
            outcome = await agent.run(task)
            if outcome.ok and not (outcome.answer or "").strip():
                outcome = agent.fail("the model's answer was empty", outcome.num_rounds)
            if outcome.ok:
                agent.say("answer", outcome.answer or "")
        if not outcome.ok:
            raise AgentFailed(outcome)
        assert outcome.answer is not None
        return outcome.answer


class Toolbox:
    def __init__(self, os: AsyncClient, tools: Sequence[ToolInfo], trace: Trace, budget: Budget,
                 model: str | None = None, task_timeout_s: float = 60.0):
        self.os = os
        self.tools = list(tools)
        self.by_name = {t.name: t for t in self.tools}
        self.params = {t.name: list(t.parameters.get("properties", {})) for t in self.tools}
        self.trace = trace
        self.budget = budget
        self.model = model
        self.task_timeout_s = task_timeout_s
        self.tokens_used = 0
        self.cost_used = 0.0

    @classmethod
    async def load(cls, os: AsyncClient, trace: Trace, budget: Budget, *, only: Sequence[str] | None = None,
                   model: str | None = None, task_timeout_s: float = 60.0) -> Toolbox:
        tools = await os.tools.list()
        if only is not None:
            missing = sorted(set(only) - {t.name for t in tools})
            if missing:
                raise NotFound(f"the kernel has no tool(s) {', '.join(missing)}", field="tools",
                               hint=f"tools: {', '.join(t.name for t in tools)}")
            tools = [t for t in tools if t.name in only]
        return cls(os, tools, trace, budget, model, task_timeout_s)

    def check_budget(self) -> None:
        b = self.budget
        if b.max_tokens is not None and self.tokens_used >= b.max_tokens:
            raise QuotaExceeded(f"the run's LLM token budget ({b.max_tokens}) is spent ({self.tokens_used} used)",
                                hint="raise max_tokens, or ask a smaller question")
        if b.max_cost_usd is not None and self.cost_used >= b.max_cost_usd:
            raise QuotaExceeded(f"the run's cost budget (${b.max_cost_usd:g}) is spent (${self.cost_used:.4f})",
                                hint="raise max_cost_usd")

    async def stream(self, name: str, messages: list[dict[str, Any]], max_tokens: int,
                     round: int = 0) -> AsyncIterator[str]:
        """The LLM's reply in pieces, with a span; the budget is checked first and charged
        after (with the kernel's count when the call's usage is known, else an estimate)."""
        self.check_budget()
        span = self.trace.open("llm", name, round=round)
        text: list[str] = []
        error = None
        try:
            stream = self.os.llm.stream(messages, model=self.model, max_tokens=max_tokens, cancel_on_exit=True)
            async with aclosing(stream) as pieces:   # a reader that stops early cancels the generation
                async for piece in pieces:
                    text.append(piece)
                    yield piece
        except AiosError as e:
            error = e.message
            raise
        finally:
            self.trace.close(span, error)
            self.tokens_used += count_tokens(messages) + (len("".join(text)) + 3) // 4

    async def chat(self, name: str, messages: list[dict[str, Any]], max_tokens: int, round: int = 0,
                   tools: list[dict[str, Any]] | None = None) -> Any:
        """One LLM call (with `tools` for function calling); -> ChatResult."""
        self.check_budget()
        span = self.trace.open("llm", name, round=round)
        try:
            reply = await self.os.llm.chat(messages, model=self.model, max_tokens=max_tokens, tools=tools)
        except AiosError as e:
            self.trace.close(span, e.message)
            raise
        span.call_id = reply.call_id
        self.trace.close(span)
        self.tokens_used += reply.usage.tokens_in + reply.usage.tokens_out
        self.cost_used += reply.usage.cost_usd
        return reply

    async def call(self, tool: str, arguments: dict[str, Any], span: Span) -> tuple[Any, str | None]:
        """Runs a tool as a tool syscall; -> (result, None) or (None, the error's text)."""
        info = self.by_name.get(tool)
        if info is not None:
            arguments = as_schema_types(arguments, info.parameters)
        try:
            call = await self.os.syscall({"kind": "tool", "tool": tool, "arguments": arguments,
                                          "timeout_s": self.task_timeout_s})
        except AiosError as e:   # refused at submit: unknown tool, bad arguments
            self.trace.close(span, _error_text(e))
            return None, _error_text(e)
        span.call_id = call.id
        if call.started is not None and call.finished is not None:
            span.run_s = call.finished - call.started
        self.cost_used += call.usage.cost_usd
        if call.error is not None:
            self.trace.close(span, _error_text(call.error))
            return None, _error_text(call.error)
        self.trace.close(span)
        return call.result, None


def as_schema_types(arguments: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A result passed on to a string parameter is passed as its text (JSON for
    structured results), since tools' earlier results are often lists or numbers."""
    props = schema.get("properties", {})
    out = {}
    for name, value in arguments.items():
        if props.get(name, {}).get("type") == "string" and not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False)
        out[name] = value
    return out


def _error_text(e: AiosError) -> str:
    return f"{e.code}: {e.message}" + (f" ({e.hint})" if e.hint else "")
