"""What the planner and the joiner are asked, and how their answers read. Each system
prompt starts with a fixed header line (`PLANNER_HEADER`, `JOINER_HEADER`), so a replay
model can tell the roles apart; the question is always on a line `Question: ...`."""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aios.agents.compiler.plan import END_OF_PLAN
from aios.tools.registry import describe_arguments

PLANNER_HEADER = "You are the planner of an LLM compiler: you write a plan of tool calls that run in parallel."
JOINER_HEADER = "You are the joiner of an LLM compiler: you read the results of a plan and answer, or ask for a new plan."
MAX_OBSERVATION_CHARS = 600


def tool_lines(tools: Sequence[Any]) -> str:
    """`n. name(args): description` for each tool (ToolInfo or ToolSpec)."""
    return "\n".join(f"{n}. {t.name}({describe_arguments(t.parameters)}): {t.description or 'no description'}"
                     for n, t in enumerate(tools, 1))


def planner_system(tools: Sequence[Any]) -> str:
    return f"""{PLANNER_HEADER}
Given a question, write the actions that answer it, one per line, numbered 1, 2, 3, ...
Each action is one of these tools:
{tool_lines(tools)}
{len(tools) + 1}. join(): ends the plan; always the last action.

Rules:
- Write each action as `N. tool(arguments)`, with arguments as Python literals, by position or by name.
- `$N` stands for the result of action N; use it as an argument or inside a string. An action may
  only use results of actions before it.
- Make the plan as parallel as possible: actions that do not need each other's results must not
  refer to each other.
- You may put a line `Thought: ...` before an action. Write nothing else: no comments, no new tools.
- End with `N. join()` and then `{END_OF_PLAN}`."""


def planner_user(question: str, history: str | None = None, thought: str | None = None,
                 next_idx: int = 1) -> str:
    if history is None:
        return f"Question: {question}"
    return f"""Question: {question}
Previous plan and results:
{history}
The joiner's thought: {thought or '(none)'}
Write a new plan that finishes the task. Start with a `Thought:` line. Do not repeat actions whose
results are above; you may use them as $N. Number new actions from {next_idx}."""


JOINER_SYSTEM = f"""{JOINER_HEADER}
You see a question, the plan that was run and the result of each action (an error if it failed).
Reply with one `Thought:` line, then one of:
Action: Finish(the answer)        when the results answer the question
Action: Replan(what is missing)    when a new plan is needed (after failed or insufficient actions)
Write nothing after the Action line."""


def joiner_user(question: str, history: str, can_replan: bool) -> str:
    tail = "" if can_replan else "\nNo more plans can be made: answer with Finish from what you have."
    return f"Question: {question}\n{history}{tail}"


def observation(result: Any) -> str:
    text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
    return text if len(text) <= MAX_OBSERVATION_CHARS else text[:MAX_OBSERVATION_CHARS] + "..."


@dataclass(frozen=True, slots=True)
class Decision:
    """What the joiner said: finish with `answer`, or replan because of `reason`."""
    thought: str
    action: str          # "finish" | "replan"
    text: str


_DECISION = re.compile(r"Action\s*:\s*(Finish|Replan)\s*\((.*)\)\s*$", re.I | re.S)
_JOINER_THOUGHT = re.compile(r"Thought\s*:\s*(.*?)\s*(?=\n\s*Action\s*:|$)", re.I | re.S)


def parse_decision(text: str) -> Decision | None:
    """The joiner's reply, or None if it has no `Action: Finish(...)` / `Replan(...)`."""
    m = _DECISION.search(text.strip())
    if m is None:
        return None
    thought = _JOINER_THOUGHT.search(text)
    return Decision(thought.group(1).strip() if thought else "", m.group(1).lower(), m.group(2).strip())
