"""ReAct (Yao et al.): one thought, one action, one observation at a time, until the
model answers. The LLMCompiler's baseline, on the same tools (tool syscalls) and the same
LLM interface.

    aios run react "How much older is Pavarotti than Bocelli?"

The model writes `Thought: ...` then `Action: tool(arguments)` (the planner's call syntax:
Python literals, by position or name) or `Action: Finish(answer)`. A step that cannot be
read is answered with an observation saying how to write it, and counts as a step.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from aios.agents.compiler.plan import PlanError, parse_call
from aios.agents.compiler.prompts import observation, tool_lines
from aios.agents.toolbox import Agent, AgentConfig
from aios.agents.trace import Outcome
from aios.errors import AiosError

REACT_HEADER = "You answer questions by reasoning step by step and calling tools, one at a time (ReAct)."
_ACTION = re.compile(r"^\s*Action\s*:\s*(.+?)\s*$", re.M | re.S)
_THOUGHT = re.compile(r"Thought\s*:\s*(.*?)\s*(?=\n\s*Action\s*:|$)", re.S)
_FINISH = re.compile(r"^Finish\s*\((.*)\)\s*$", re.S)


def react_system(tools: Sequence[object]) -> str:
    return f"""{REACT_HEADER}
Tools:
{tool_lines(tools)}
Each step, write exactly two lines:
Thought: what you know and what you need next
Action: tool(arguments)      with arguments as Python literals, by position or by name
When you know the answer, write:
Thought: why this is the answer
Action: Finish(the answer)
Write nothing else: the observation of your action comes back to you."""


def react_user(question: str, scratchpad: str) -> str:
    return f"Question: {question}\n{scratchpad}"


@dataclass(frozen=True, slots=True)
class ReactConfig(AgentConfig):
    max_steps: int = 12
    step_max_tokens: int = 512
    max_unreadable: int = 3   # replies in a row with no `Action:` line: the model does not follow the format


class ReAct(Agent):
    config_type = ReactConfig

    async def run(self, question: str) -> Outcome:
        cfg = self.config
        box = await self.toolbox()
        system = react_system(box.tools)
        scratchpad = ""
        unreadable = 0
        for step in range(cfg.max_steps):
            messages = [{"role": "system", "content": system},
                        {"role": "user", "content": react_user(question, scratchpad)}]
            try:
                reply = "".join([p async for p in box.stream("react", messages, cfg.step_max_tokens, step)])
            except AiosError as e:
                return self._fail(f"step {step + 1}: the LLM call failed: {e.message}", step)
            reply = reply.split("Observation:", 1)[0].strip()   # a model that goes on alone is cut
            thought = _THOUGHT.search(reply)
            action = _ACTION.search(reply)
            scratchpad += f"Thought: {thought.group(1).strip() if thought else ''}\n"
            if thought and thought.group(1).strip():
                self.say("thought", thought.group(1).strip(), step=step + 1)
            if action is None:
                unreadable += 1
                obs = "error: no `Action:` line; write `Action: tool(arguments)` or `Action: Finish(answer)`"
                self.trace.note(f"step {step + 1}: {obs}")
                if unreadable >= cfg.max_unreadable:
                    return self._fail(f"the model does not follow the ReAct format: {unreadable} replies in a row "
                                      f"had no `Action:` line (the last began {reply[:60]!r})", step)
                scratchpad += f"Action: (none)\nObservation: {obs}\n"
                continue
            unreadable = 0
            text = action.group(1).strip()
            scratchpad += f"Action: {text}\n"
            self.say("action", text, step=step + 1)
            finish = _FINISH.match(text)
            if finish:
                return Outcome(finish.group(1).strip(), None, self.trace, step + 1)
            try:
                tool, args, _ = parse_call(text, box.params)
            except PlanError as e:
                obs = f"error: {e}"
            else:
                span = self.trace.open("tool", tool, round=step)
                result, error = await box.call(tool, args, span)
                obs = f"error: {error}" if error is not None else observation(result)
            if obs.startswith("error:"):
                self.trace.note(f"step {step + 1}: {obs}")
            else:
                self.say("observation", obs, step=step + 1)
            scratchpad += f"Observation: {obs}\n"
        return self._fail(f"no answer within {cfg.max_steps} steps", cfg.max_steps - 1)

    def _fail(self, error: str, step: int) -> Outcome:
        return self.fail(error, step + 1)


main = ReAct.main
