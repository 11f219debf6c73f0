"""The LLMCompiler agent (Kim et al., "An LLM Compiler for Parallel Function Calling"):
a planner streams a plan of tool calls with `$k` dependencies; a task fetching unit starts
each call as soon as its line is read and its dependencies are done; an executor runs the
ready calls concurrently as tool syscalls; a joiner answers or asks for a new plan, with
every result so far in the replanning prompt.

    aios run compiler "How much older is Pavarotti than Bocelli?"

The failure of one call reaches only the calls that depend on it; the joiner sees every
error. A run is bounded: replans (`max_replans`), actions (`max_tasks`), LLM tokens and cost
(`Budget`), and each tool call's time (`task_timeout_s`).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio

from aios.agents.compiler.plan import PlanParser, Task, show, substitute
from aios.agents.compiler.prompts import (JOINER_SYSTEM, joiner_user, observation, parse_decision, planner_system,
                                          planner_user)
from aios.agents.toolbox import Agent, AgentConfig, Toolbox
from aios.agents.trace import Outcome, Span
from aios.errors import AiosError
from aios.sdk import AsyncClient


@dataclass(frozen=True, slots=True)
class CompilerConfig(AgentConfig):
    max_replans: int = 2
    max_tasks: int = 32
    planner_max_tokens: int = 1024
    joiner_max_tokens: int = 512


@dataclass(slots=True)
class Action:
    """One action of a run, with its state."""
    task: Task
    round: int
    span: Span | None = None
    result: Any = None
    error: str | None = None
    finished: anyio.Event = field(default_factory=anyio.Event)

    def line(self) -> str:
        t = self.task
        args = ", ".join(f"{k}={show(v)}" for k, v in t.args.items())
        return f"{t.idx}. {t.tool}({args})"


class LLMCompiler(Agent):
    config_type = CompilerConfig

    def __init__(self, os: AsyncClient, config: CompilerConfig | None = None,
                 now: Callable[[], float] = time.monotonic):
        super().__init__(os, config, now)
        self.actions: dict[int, Action] = {}
        self._seen: dict[int, anyio.Event] = {}   # set when action k's line has been read

    async def run(self, question: str) -> Outcome:
        cfg = self.config
        box = await self.toolbox()
        system = planner_system(box.tools)
        user = planner_user(question)
        for round in range(cfg.max_replans + 1):
            can_replan = round < cfg.max_replans
            try:
                parser = await self._plan_and_execute(box, system, user, round)
            except AiosError as e:   # the planner's LLM call failed, or the budget is spent
                return self._fail(f"round {round + 1}: the planner failed: {e.message}", round)
            ran = [t for t in parser.parsed.tasks if not t.is_join]
            if not ran:
                why = "; ".join(parser.parsed.errors[:3]) or "the reply had no numbered actions"
                self.trace.note(f"round {round + 1}: the model returned no plan ({why})")
                if not can_replan:
                    return self._fail(f"the model returned no plan ({why})", round)
                user = planner_user(question, self._history(), f"your reply had no plan: {why}",
                                    self._next_idx())
                continue
            try:
                decision = await self._join(box, question, round, can_replan)
            except AiosError as e:
                return self._fail(f"round {round + 1}: the joiner failed: {e.message}", round)
            if decision is None:
                self.trace.note(f"round {round + 1}: the joiner's reply had no Finish(...) or Replan(...)")
                if not can_replan:
                    return self._fail("the joiner's reply could not be read", round)
                user = planner_user(question, self._history(), "the joiner's reply could not be read",
                                    self._next_idx())
                continue
            if decision.thought:
                self.say("thought", decision.thought)
            self.say("decision", f"{decision.action.capitalize()}({decision.text})", round=round + 1)
            self.trace.notes.append(f"round {round + 1}: joiner: {decision.action}({decision.text}); "
                                    f"{decision.thought}")
            if decision.action == "finish":
                return Outcome(decision.text, None, self.trace, round + 1, self._extra())
            if not can_replan:
                return self._fail(f"the joiner asked for a new plan after {cfg.max_replans} replan(s), "
                                  f"the limit: {decision.text}", round)
            user = planner_user(question, self._history(), decision.thought or decision.text, self._next_idx())
        raise AssertionError("unreachable")

    # ---- planner, task fetching unit, executor

    async def _plan_and_execute(self, box: Toolbox, system: str, user: str, round: int) -> PlanParser:
        parser = PlanParser(box.params, known=self.actions)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        waiting: dict[int, anyio.CancelScope] = {}
        async with anyio.create_task_group() as tg:
            def launch(tasks: list[Task]) -> None:
                for task in tasks:
                    if task.is_join and task.error is None:
                        continue
                    action = Action(task, round)
                    if task.idx not in self.actions:   # a renumbered duplicate keeps the first
                        self.actions[task.idx] = action
                        self._seen.setdefault(task.idx, anyio.Event()).set()
                        if task.error is None and len(self.actions) > self.config.max_tasks:
                            task.error = (f"line {task.line_no}: over the limit of "
                                          f"{self.config.max_tasks} actions per run")
                    if task.thought:
                        self.say("thought", task.thought, idx=task.idx)
                    self.say("plan", action.line() if task.tool else task.line, idx=task.idx,
                             deps=list(task.deps), round=round + 1)
                    tg.start_soon(self._execute, box, action, waiting)
            async with aclosing(box.stream("planner", messages, self.config.planner_max_tokens, round)) as pieces:
                async for piece in pieces:
                    launch(parser.feed(piece))
                    if parser.parsed.is_ended and not parser.parsed.tasks:   # prose, not a plan: stop it
                        break
            launch(parser.finish())
            # lines the graph check failed (a dangling $k, a cycle) stop waiting now
            for idx, scope in list(waiting.items()):
                if self.actions[idx].task.error is not None:
                    scope.cancel()
        return parser

    async def _execute(self, box: Toolbox, action: Action, waiting: dict[int, anyio.CancelScope]) -> None:
        task = action.task
        released = box.trace.now()
        try:
            if self.actions.get(task.idx) is not action:
                action.error = task.error   # the parser marked the reused number
                return
            if task.error is None:
                with anyio.CancelScope() as scope:
                    waiting[task.idx] = scope
                    for dep in task.deps:   # a forward reference waits for its line first
                        await self._seen.setdefault(dep, anyio.Event()).wait()
                        await self.actions[dep].finished.wait()
                waiting.pop(task.idx, None)
            if task.error is not None:
                action.error = task.error
                return
            failed = [d for d in task.deps if self.actions[d].error is not None]
            if failed:
                action.error = ("not run: it needs " + ", ".join(f"${d}" for d in failed) +
                                f", which failed ({self.actions[failed[0]].error})")
                return
            results = {d: self.actions[d].result for d in task.deps}
            args = {k: substitute(v, results) for k, v in task.args.items()}
            action.span = box.trace.open("tool", task.tool, round=action.round, idx=task.idx,
                                         released=released, deps=task.deps)
            self.say("action", f"{task.idx}. {task.tool}({', '.join(f'{k}={show(v)}' for k, v in args.items())})",
                     idx=task.idx)
            action.result, action.error = await box.call(task.tool, args, action.span)
            if action.error is None:
                self.say("observation", f"{task.idx}. {observation(action.result)}", idx=task.idx)
        finally:
            if action.error is not None:
                self.trace.note(f"action {task.idx} ({task.tool}) failed: {action.error}")
            action.finished.set()

    # ---- joiner

    async def _join(self, box: Toolbox, question: str, round: int, can_replan: bool) -> Any:
        messages = [{"role": "system", "content": JOINER_SYSTEM},
                    {"role": "user", "content": joiner_user(question, self._history(), can_replan)}]
        text = "".join([p async for p in box.stream("joiner", messages, self.config.joiner_max_tokens, round)])
        return parse_decision(text)

    def _history(self) -> str:
        lines = []
        for a in sorted(self.actions.values(), key=lambda a: a.task.idx):
            if a.task.thought:
                lines.append(f"Thought: {a.task.thought}")
            lines.append(a.line() if a.task.tool else a.task.line)
            lines.append(f"Observation: {'error: ' + a.error if a.error is not None else observation(a.result)}")
        return "\n".join(lines)

    def _next_idx(self) -> int:
        return max(self.actions, default=0) + 1

    def _fail(self, error: str, round: int) -> Outcome:
        return self.fail(error, round + 1, **self._extra())

    def _extra(self) -> dict[str, Any]:
        return {"actions": [{"idx": a.task.idx, "line": a.line(), "deps": list(a.task.deps), "round": a.round,
                             "error": a.error} for a in sorted(self.actions.values(), key=lambda a: a.task.idx)]}


main = LLMCompiler.main
