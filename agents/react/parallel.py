"""OpenAI-style parallel function calling: each turn the model may return several tool
calls; they run together (as tool syscalls), their results go back as tool messages, and
the loop goes on until the model answers in text. The second baseline of LLMCompiler.

    aios run parallel-fc "Which of these eight movies is most like the others?"
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anyio

from aios.agents.compiler.prompts import observation
from aios.agents.toolbox import Agent, AgentConfig, Toolbox
from aios.agents.trace import Outcome
from aios.errors import AiosError, BackendError

FC_HEADER = "You answer questions with the help of tools. Call several tools at once when their calls are independent."


@dataclass(frozen=True, slots=True)
class ParallelFCConfig(AgentConfig):
    max_turns: int = 8
    turn_max_tokens: int = 1024


class ParallelFC(Agent):
    config_type = ParallelFCConfig

    async def run(self, question: str) -> Outcome:
        cfg = self.config
        box = await self.toolbox()
        schemas = [t.openai_schema() for t in box.tools]
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": f"{FC_HEADER}\nWhen you know the answer, reply with it alone."},
            {"role": "user", "content": f"Question: {question}"}]
        for turn in range(cfg.max_turns):
            try:
                reply = await box.chat("fc", messages, cfg.turn_max_tokens, turn, tools=schemas)
            except AiosError as e:
                return self._fail(f"turn {turn + 1}: the LLM call failed: {e.message}", turn)
            if not reply.tool_calls:
                if reply.finish_reason == "length":   # cut mid-sentence: not an answer
                    return self._fail(f"turn {turn + 1}: the model's reply was cut at the token limit "
                                      f"({cfg.turn_max_tokens}) without a tool call or an answer "
                                      f"(it began {reply.text.strip()[:60]!r})", turn)
                return Outcome(reply.text.strip(), None, self.trace, turn + 1)
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
                for tc in reply.tool_calls]})
            answers: dict[str, str] = {}
            async with anyio.create_task_group() as tg:   # the turn's calls run together
                for tc in reply.tool_calls:
                    tg.start_soon(self._call, box, tc, turn, answers)
            for tc in reply.tool_calls:
                if answers[tc.id].startswith("error:"):
                    self.trace.note(f"turn {turn + 1}: {tc.name}: {answers[tc.id]}")
                messages.append({"role": "tool", "tool_call_id": tc.id, "name": tc.name,
                                 "content": answers[tc.id]})
        return self._fail(f"no answer within {cfg.max_turns} turns", cfg.max_turns - 1)

    async def _call(self, box: Toolbox, tc: Any, turn: int, answers: dict[str, str]) -> None:
        try:
            args = tc.parse_arguments()
        except BackendError as e:
            answers[tc.id] = f"error: {e.message}"
            return
        self.say("action", f"{tc.name}({', '.join(f'{k}={v!r}' for k, v in args.items())})", turn=turn + 1)
        span = self.trace.open("tool", tc.name, round=turn)
        result, error = await box.call(tc.name, args, span)
        answers[tc.id] = f"error: {error}" if error is not None else observation(result)
        if error is None:
            self.say("observation", f"{tc.name}: {answers[tc.id]}", turn=turn + 1)

    def _fail(self, error: str, turn: int) -> Outcome:
        return self.fail(error, turn + 1)


def tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A tool call in the OpenAI shape, as a (simulated) model returns it."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


main = ParallelFC.main
