"""What an agent run did and when, for its result, the benchmark and the Gantt chart: one
span per LLM call and per tool call, in the clock the agent was given (the kernel's own
clock when the agent runs in the kernel's process, so spans line up with the journal)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Span:
    kind: str                    # "llm" | "tool"
    name: str                    # "planner", "joiner", "react", or the tool's name
    start: float
    end: float | None = None
    round: int = 0
    idx: int | None = None       # the plan action, for tools of a plan
    call_id: str | None = None
    released: float | None = None   # when the action's line was read (it could start from then on)
    deps: tuple[int, ...] = ()
    error: str | None = None
    run_s: float | None = None      # a tool call's time in the kernel, from start to finish of its run

    @property
    def duration(self) -> float:
        return (self.end if self.end is not None else self.start) - self.start


@dataclass(slots=True)
class Trace:
    now: Callable[[], float] = time.monotonic
    spans: list[Span] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)    # errors and decisions, in order
    on_note: Callable[[str], None] | None = None      # told of each note as it is made

    def open(self, kind: str, name: str, **fields: Any) -> Span:
        span = Span(kind, name, self.now(), **fields)
        self.spans.append(span)
        return span

    def close(self, span: Span, error: str | None = None) -> None:
        span.end = self.now()
        span.error = error

    def note(self, text: str) -> None:
        self.notes.append(text)
        if self.on_note is not None:
            self.on_note(text)


@dataclass(slots=True)
class Outcome:
    """How a run ended: an answer, or an error saying why not; and what it did."""
    answer: str | None
    error: str | None
    trace: Trace
    num_rounds: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


class AgentFailed(Exception):
    """An agent's run ended without an answer; the message says why (also as `reason`,
    the one line the runners report), and `outcome` holds the trace."""

    def __init__(self, outcome: Outcome):
        super().__init__(outcome.error)
        self.outcome = outcome
        self.reason = outcome.error
