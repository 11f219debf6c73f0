"""The planner's output language and its incremental parser.

A plan is numbered actions, one per line, with optional thoughts between them:

    Thought: both singers' birth years are needed.
    1. search("Luciano Pavarotti")
    2. search(query="Andrea Bocelli")
    3. calculator("$1 - $2")
    4. join()
    <END_OF_PLAN>

Arguments are Python literals (strings, numbers, lists, dicts, True/False/None), given by
position (in the tool's parameter order) or by keyword. `$k` or `${k}` stands for the
result of action k: as a whole argument it is that result; inside a string it is its text.
An action depends on every `$k` it cites; `join()` ends the plan and depends on all.

`PlanParser.feed` takes the model's text in pieces of any size and returns each line as
soon as its newline arrives, so the first task can start while the rest of the plan is
still being generated. `finish` takes the last line and checks the whole graph (networkx):
a reference to a line that never came, or a cycle through forward references, fails the
lines involved, each error naming its line. Reading stops at `join()`, at `<END_OF_PLAN>`,
or at a line over MAX_LINE_CHARS (prose, not a plan), so the agent can stop the model. A line that cannot be read fails only itself
(and, at dispatch, what depends on it).
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

END_OF_PLAN = "<END_OF_PLAN>"
MAX_LINE_CHARS = 1000   # a line of a plan is one call; longer is prose, and reading stops
JOIN = "join"
_ACTION = re.compile(r"^\s*(\d+)\s*[.:)]\s*(.*?)\s*$")
_CALL = re.compile(r"^([A-Za-z_][\w.\-]*)\s*\((.*)\)\s*;?$", re.S)
_REF = re.compile(r"\$\{?(\d+)\}?")
_THOUGHT = re.compile(r"^\s*Thought\s*:\s*(.*)$", re.I)
_PLACEHOLDER = "__aios_ref_{}__"
_PLACEHOLDER_RE = re.compile(r"__aios_ref_(\d+)__")


@dataclass(frozen=True, slots=True)
class Ref:
    """`$k`: the result of action k."""
    idx: int


@dataclass(slots=True)
class Task:
    """One action of a plan. `error` is set for a line that cannot run as written."""
    idx: int
    tool: str
    args: dict[str, Any]
    deps: tuple[int, ...]
    line: str
    line_no: int
    thought: str | None = None
    error: str | None = None

    @property
    def is_join(self) -> bool:
        return self.tool == JOIN


@dataclass(slots=True)
class Parsed:
    """What the parser has read so far."""
    tasks: list[Task] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)      # lines that are not actions
    has_join: bool = False
    is_ended: bool = False


class PlanError(Exception):
    """A line of a plan that cannot be read; the message names the line."""


def parse_call(text: str, params: Mapping[str, Sequence[str]] | None = None) -> tuple[str, dict[str, Any], tuple[int, ...]]:
    """`tool(args)` -> (tool, keyword arguments, the `$k` it cites). `params` gives each
    known tool's parameter names in order (for positional arguments); with it, an unknown
    tool is an error. Raises PlanError saying what is wrong."""
    m = _CALL.match(text.strip())
    if m is None:
        raise PlanError(f"not a tool call: {text.strip()[:80]!r} (write tool(arguments))")
    tool, inner = m.group(1), m.group(2)
    deps = tuple(sorted({int(k) for k in _REF.findall(inner)}))
    if tool == JOIN:
        if inner.strip():
            raise PlanError("join() takes no arguments")
        return tool, {}, deps
    if params is not None and tool not in params:
        raise PlanError(f"unknown tool {tool!r} (tools: {', '.join(sorted(params)) or 'none'})")
    source = _REF.sub(lambda r: _PLACEHOLDER.format(r.group(1)), inner)
    try:
        node = ast.parse(f"f({source})", mode="eval").body
    except SyntaxError as e:
        raise PlanError(f"the arguments of {tool} are not valid: {e.msg}") from None
    assert isinstance(node, ast.Call)
    names = list(params[tool]) if params is not None else []
    if len(node.args) > len(names) and params is not None:
        raise PlanError(f"{tool} takes {len(names)} argument(s) ({', '.join(names) or 'none'}), "
                        f"got {len(node.args)} by position")
    if params is None and node.args:
        raise PlanError(f"{tool}: positional arguments need the tool's parameter list")
    args: dict[str, Any] = {}
    for name, value in zip(names, node.args, strict=False):
        args[name] = _literal(value, tool)
    for kw in node.keywords:
        if kw.arg is None:
            raise PlanError(f"{tool}: **arguments are not allowed")
        if kw.arg in args:
            raise PlanError(f"{tool}: argument {kw.arg!r} given twice")
        args[kw.arg] = _literal(kw.value, tool)
    return tool, args, deps


def _literal(node: ast.AST, tool: str) -> Any:
    match node:
        case ast.Constant(value=value):
            if isinstance(value, str):
                return _template(value)
            return value
        case ast.Name(id=name) if (ref := _PLACEHOLDER_RE.fullmatch(name)):
            return Ref(int(ref.group(1)))
        case ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=v)) if isinstance(v, (int, float)):
            return -v
        case ast.List(elts=elts) | ast.Tuple(elts=elts):
            return [_literal(e, tool) for e in elts]
        case ast.Dict(keys=keys, values=values):
            out = {}
            for k, v in zip(keys, values, strict=True):
                key = _literal(k, tool) if k is not None else None
                if not isinstance(key, str):
                    raise PlanError(f"{tool}: dictionary keys must be strings")
                out[key] = _literal(v, tool)
            return out
    shown = ast.unparse(node) if hasattr(ast, "unparse") else type(node).__name__
    shown = _PLACEHOLDER_RE.sub(lambda r: "$" + r.group(1), shown)
    raise PlanError(f"{tool}: argument {shown!r} is not a literal or a $reference")


@dataclass(frozen=True, slots=True)
class Template:
    """A string argument with `$k` inside: filled with the results' text at dispatch."""
    text: str


def _template(value: str) -> str | Template:
    if _PLACEHOLDER_RE.search(value):
        return Template(value)
    return value


def substitute(value: Any, results: Mapping[int, Any], render: Any = None) -> Any:
    """The argument with every reference replaced: a whole `$k` by the result itself, a
    `$k` inside a string by its text (`render(result)`, default str or JSON)."""
    render = render or _render
    match value:
        case Ref(idx=idx):
            return results[idx]
        case Template(text=text):
            return _PLACEHOLDER_RE.sub(lambda r: render(results[int(r.group(1))]), text)
        case list():
            return [substitute(v, results, render) for v in value]
        case dict():
            return {k: substitute(v, results, render) for k, v in value.items()}
    return value


def _render(result: Any) -> str:
    import json
    return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)


def show(value: Any) -> str:
    """An argument as the plan wrote it (for prompts and traces)."""
    match value:
        case Ref(idx=idx):
            return f"${idx}"
        case Template(text=text):
            return repr(_PLACEHOLDER_RE.sub(lambda r: "$" + r.group(1), text))
        case list():
            return "[" + ", ".join(show(v) for v in value) + "]"
        case dict():
            return "{" + ", ".join(f"{k!r}: {show(v)}" for k, v in value.items()) + "}"
    return repr(value)


class PlanParser:
    """Reads a streamed plan line by line. `params` maps each tool the agent may use to
    its parameter names; `known` are the indices of earlier plans' actions (a replan may
    cite them, and must not reuse them)."""

    def __init__(self, params: Mapping[str, Sequence[str]], known: Iterable[int] = ()):
        self.params = params
        self.known = set(known)
        self.parsed = Parsed()
        self._buffer = ""
        self._line_no = 0
        self._thought: str | None = None
        self._last_idx = max(self.known, default=0)

    def feed(self, text: str) -> list[Task]:
        """The tasks whose lines ended in `text` (in order)."""
        if self.parsed.is_ended:
            return []
        self._buffer += text
        out: list[Task] = []
        while "\n" in self._buffer and not self.parsed.is_ended:
            line, self._buffer = self._buffer.split("\n", 1)
            out.extend(self._line(line))
        if END_OF_PLAN in self._buffer and not self.parsed.is_ended:
            line, self._buffer = self._buffer.split(END_OF_PLAN, 1)
            out.extend(self._line(line + END_OF_PLAN))
        if len(self._buffer) > MAX_LINE_CHARS and not self.parsed.is_ended:
            self._line_no += 1
            self.parsed.errors.append(f"line {self._line_no}: over {MAX_LINE_CHARS} characters with no end: "
                                      f"not an action: {self._buffer[:80]!r}")
            self.parsed.is_ended = True   # no plan writes such lines: stop reading
        return out

    def finish(self) -> list[Task]:
        """The last line's task, if any; then the graph is checked: dangling references
        and cycles fail the tasks involved (their `error` is set; they were not started,
        since a task runs only once its dependencies are done)."""
        out = [] if self.parsed.is_ended else self._line(self._buffer)
        self._buffer = ""
        self.parsed.is_ended = True
        self.check_graph()
        return out

    def _line(self, raw: str) -> list[Task]:
        self._line_no += 1
        line = raw.strip()
        ends = END_OF_PLAN in line
        line = line.replace(END_OF_PLAN, "").strip()
        if ends:
            self.parsed.is_ended = True
        if not line:
            return []
        thought = _THOUGHT.match(line)
        if thought:
            self._thought = thought.group(1).strip()
            self.parsed.thoughts.append(self._thought)
            return []
        action = _ACTION.match(line)
        if action is None:
            if line.startswith(("```", "Plan:", "Here")):   # fences and chatter around a plan
                return []
            self.parsed.errors.append(f"line {self._line_no}: not an action: {line[:80]!r}")
            return []
        idx, body = int(action.group(1)), action.group(2)
        task = Task(idx, "", {}, (), line, self._line_no, self._thought)
        self._thought = None
        if idx in self.known or any(t.idx == idx for t in self.parsed.tasks):
            task.error = f"line {self._line_no}: action {idx} is numbered like an earlier action"
        elif idx <= self._last_idx:
            task.error = (f"line {self._line_no}: action {idx} comes after action {self._last_idx}; "
                          "numbers must increase")
        try:
            task.tool, task.args, task.deps = parse_call(body, self.params)
        except PlanError as e:
            task.tool = body.split("(", 1)[0].strip() or "?"
            task.error = task.error or f"line {self._line_no}: {e}"
            task.deps = tuple(sorted({int(k) for k in _REF.findall(body)}))
        if task.is_join and task.error is None:
            earlier = {t.idx for t in self.parsed.tasks if not t.is_join}
            task.deps = tuple(sorted(earlier))
            self.parsed.has_join = True
        if task.error is None or idx > self._last_idx:
            self._last_idx = max(self._last_idx, idx)
        self.parsed.tasks.append(task)
        if task.is_join and task.error is None:
            self.parsed.is_ended = True   # the paper's planner stops at join(); so do we
        return [task]

    def graph(self) -> nx.DiGraph:
        """Edges dep -> task over this plan's actions (earlier plans' actions are done)."""
        g = nx.DiGraph()
        for t in self.parsed.tasks:
            g.add_node(t.idx)
            for d in t.deps:
                if d not in self.known:
                    g.add_edge(d, t.idx)
        return g

    def check_graph(self) -> None:
        by_idx = {t.idx: t for t in self.parsed.tasks}
        for t in self.parsed.tasks:
            if t.error is not None:
                continue
            missing = [d for d in t.deps if d not in by_idx and d not in self.known]
            if missing:
                t.error = (f"line {t.line_no}: refers to " + ", ".join(f"${d}" for d in missing) +
                           ", which no action of the plan defines")
        g = self.graph()
        for cycle in nx.simple_cycles(g):
            members = sorted(cycle)
            lines = ", ".join(f"line {by_idx[i].line_no} (action {i})" for i in members if i in by_idx)
            for i in members:
                if i in by_idx and by_idx[i].error is None:
                    by_idx[i].error = f"line {by_idx[i].line_no}: part of a cycle of references: {lines}"
