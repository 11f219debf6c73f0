"""What the LLMCompiler, ReAct and parallel function calling agents share: the tools the
kernel offers them, tool calls as tool syscalls (so the kernel schedules, meters and
authorizes each), LLM calls with a span in the trace, and the run's token budget."""
from __future__ import annotations

import json
from contextlib import aclosing
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aios.agents.trace import AgentFailed, Outcome, Span, Trace
from aios.errors import AiosError, NotFound, QuotaExceeded
from aios.llm import count_tokens
from aios.sdk import AsyncClient, ToolInfo


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
    client bound to a process, a config, a trace in the given clock."""
    config_type: type[AgentConfig] = AgentConfig

    def __init__(self, os: AsyncClient, config: AgentConfig | None = None,
                 now: Callable[[], float] = time.monotonic):
        self.os = os
        self.config: Any = config or self.config_type()
        self.trace = Trace(now)

    async def run(self, question: str) -> Outcome:
        raise NotImplementedError

    async def toolbox(self) -> Toolbox:
        cfg = self.config
        return await Toolbox.load(self.os, self.trace, cfg.budget, only=cfg.tools, model=cfg.model,
                                  task_timeout_s=cfg.task_timeout_s)

    def fail(self, error: str, num_rounds: int, **extra: Any) -> Outcome:
        self.trace.note(error)
        return Outcome(None, error, self.trace, num_rounds, extra)

    @classmethod
    async def main(cls, task: str, os: AsyncClient) -> str:
        """The agent program's `main`: the answer, or AgentFailed (exit code 1) saying why."""
        outcome = await cls(os).run(task)
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
