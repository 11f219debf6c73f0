"""The tool registry: a tool is a typed Python function (sync or async) or a class with a
typed `__call__`; its JSON schema comes from the type hints and the docstring, through a
pydantic model that also validates every call's arguments before the tool runs.

    @tool(timeout_s=10, needs_network=True)
    async def fetch(url: str, max_bytes: int = 65536) -> str:
        '''Fetches a web page.

        Args:
            url: the page's address, http or https
            max_bytes: the most bytes to read
        '''

A parameter annotated `ToolContext` is not part of the schema: the kernel passes the
call's context there. A tool gets its caller's pid and principal, the call's id, the
kernel's clock, an idempotency key and `syscall`, a way to make syscalls on the caller's
behalf. It never gets the kernel. `await ctx.syscall({"kind": "storage", "op": "read",
"path": "notes/a"})` is checked as the caller's own syscall would be (its manifest, the
path rules, the memory-sharing rule; refusals are audited) and runs inside the tool call
(aios.kernel.gate). So whatever a tool reaches, its caller's manifest bounds. Only storage
and memory syscalls go through it, and only while the tool call runs. A sync tool reaches
it from its worker thread with `anyio.from_thread.run(ctx.syscall, call)`.

`ctx.idempotency_key` is the tool syscall's `idempotency_key` when its caller gave one,
else the call's id. A client that resubmits a call that failed as `interrupted` (the
kernel stopped while it ran, so its effect may or may not have happened) gives the same
key again, and a tool that acts outside the kernel passes it on (e.g. as an
`Idempotency-Key` header) so that the effect happens once.

Tools run only through tool syscalls, so the kernel schedules them (`max_concurrency`
slots each), meters them (`cost_usd` per call) and authorizes them (the manifest's
`tools` and `network`; `irreversible` waits for a confirmation).

`timeout_s` is kernel time, like syscall deadlines: on a virtual clock (simulations) a tool
that simulates latency sleeps on `ctx.clock`; real I/O belongs on the wall clock."""
from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PydanticUserError, ValidationError, create_model

from aios.errors import Conflict, InvalidSyscall

if TYPE_CHECKING:
    from aios.clock import Clock
    from aios.syscall import Syscall

TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
SCHEMA_TYPES = ("annotate each parameter with a type JSON can carry: str, int, float, bool, None, lists and dicts "
                "of them, Literal, a pydantic model or a dataclass")


@dataclass(frozen=True, slots=True)
class ToolContext:
    """What a tool gets of its call, and nothing more (never the kernel)."""
    pid: int                 # the calling process; 0 for the principal's own call
    principal: str
    call_id: str             # the tool syscall's id
    clock: Clock             # kernel time (virtual in simulations)
    idempotency_key: str     # the call's idempotency_key if given, else call_id
    syscall: Callable[[Syscall | Mapping[str, Any]], Awaitable[Any]]   # a syscall on the caller's behalf


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One registered tool. `fn` takes the validated arguments as keywords (and the
    context under `context_param`, if it has one)."""
    name: str
    description: str
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    is_async: bool
    timeout_s: float | None = None
    irreversible: bool = False
    needs_network: bool = False
    cost_usd: float = 0.0
    max_concurrency: int | None = None
    source: str = "python"
    context_param: str | None = None
    schema: dict[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments (an object schema)."""
        return self.schema

    def bind(self, arguments: Mapping[str, Any]) -> dict[str, Any]:
        """The arguments, validated and converted; InvalidSyscall names the bad one."""
        if not isinstance(arguments, Mapping):
            raise InvalidSyscall(f"the arguments of tool {self.name!r} must be an object", field="arguments")
        try:
            model = self.args_model.model_validate(dict(arguments))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "arguments"
            msg = "unexpected argument" if err["type"] == "extra_forbidden" else err["msg"].lower()
            raise InvalidSyscall(f"bad arguments for tool {self.name!r}: {where}: {msg}",
                                 field=f"arguments.{where}",
                                 hint=f"{self.name}{self.signature()}") from None
        return {name: getattr(model, name) for name in type(model).model_fields}

    def signature(self) -> str:
        """`(query: string, k: integer = 5)`: the parameters as the planner prompt shows them."""
        return f"({describe_arguments(self.schema)})"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.schema,
                "timeout_s": self.timeout_s, "irreversible": self.irreversible,
                "needs_network": self.needs_network, "cost_usd": self.cost_usd,
                "max_concurrency": self.max_concurrency, "source": self.source}

    def openai_schema(self) -> dict[str, Any]:
        """The tool as an OpenAI `tools=[...]` entry (function calling)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.schema}}


def describe_arguments(schema: Mapping[str, Any]) -> str:
    """`query: string, k: integer = 5` from a JSON object schema."""
    required = set(schema.get("required", []))
    parts = []
    for name, prop in schema.get("properties", {}).items():
        kind = _kind(prop)
        parts.append(f"{name}: {kind}" + ("" if name in required else f" = {prop.get('default')!r}"))
    return ", ".join(parts)


def _kind(prop: Mapping[str, Any]) -> str:
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " | ".join(_kind(p) for p in prop["anyOf"])
    if isinstance(prop.get("type"), list):   # JSON schema's ["integer", "null"]
        return " | ".join(str(t) for t in prop["type"])
    if prop.get("type") == "array" and "items" in prop:
        return f"list[{_kind(prop['items'])}]"
    return str(prop.get("type", "any"))


def tool(fn: Any = None, /, *, name: str | None = None, description: str | None = None,
         timeout_s: float | None = None, irreversible: bool = False, needs_network: bool = False,
         cost_usd: float = 0.0, max_concurrency: int | None = None) -> Any:
    """Makes a ToolSpec of a function, a class or an instance with `__call__`; usable bare
    (`@tool`) or with metadata (`@tool(timeout_s=5)`)."""
    def make(target: Any) -> ToolSpec:
        return spec_of(target, name=name, description=description, timeout_s=timeout_s,
                       irreversible=irreversible, needs_network=needs_network, cost_usd=cost_usd,
                       max_concurrency=max_concurrency)
    return make if fn is None else make(fn)


def spec_of(target: Any, *, name: str | None = None, description: str | None = None,
            timeout_s: float | None = None, irreversible: bool = False, needs_network: bool = False,
            cost_usd: float = 0.0, max_concurrency: int | None = None, source: str = "python") -> ToolSpec:
    """The ToolSpec of a callable; a ToolSpec is returned as it is (renamed if asked)."""
    if isinstance(target, ToolSpec):
        return target if name is None else replace(target, name=name)
    doc_owner = target
    if inspect.isclass(target):
        try:
            target = target()
        except TypeError as e:
            raise InvalidSyscall(f"tool class {doc_owner.__name__} cannot be made without arguments: {e}",
                                 hint="register an instance instead") from None
    if inspect.isfunction(target) or inspect.ismethod(target) or inspect.isbuiltin(target):
        fn = target
    elif callable(target):
        fn = target.__call__
        doc_owner = type(target) if doc_owner is target else doc_owner
    else:
        raise InvalidSyscall(f"a tool must be callable, not {type(target).__name__}")
    tool_name = name or getattr(doc_owner, "__name__", None) or type(target).__name__
    if tool_name == "<lambda>":
        raise InvalidSyscall("a lambda tool needs a name", field="name")
    if not TOOL_NAME.match(tool_name):
        raise InvalidSyscall(f"bad tool name {tool_name!r}: letters, digits, _ . - (64 at most), "
                             "starting with a letter or _", field="name")
    summary, param_docs = parse_docstring(inspect.getdoc(doc_owner) or inspect.getdoc(fn) or "")
    try:
        model, context_param = _args_model(tool_name, fn, param_docs)
        schema = model.model_json_schema()
    except (PydanticUserError, NameError, TypeError, ValueError) as e:   # a signature no schema describes
        raise _unschemable(tool_name, fn, e) from None
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    if timeout_s is not None and timeout_s <= 0:
        raise InvalidSyscall("a tool's timeout_s must be positive", field="timeout_s")
    if max_concurrency is not None and max_concurrency <= 0:
        raise InvalidSyscall("a tool's max_concurrency must be positive", field="max_concurrency")
    return ToolSpec(tool_name, description or summary, fn, model, inspect.iscoroutinefunction(fn),
                    timeout_s, irreversible, needs_network, cost_usd, max_concurrency, source,
                    context_param, schema)


def _args_model(tool_name: str, fn: Callable[..., Any], docs: Mapping[str, str]) -> tuple[type[BaseModel], str | None]:
    sig = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:   # unresolvable forward references: the raw annotations, as written
        hints = {}
    fields: dict[str, Any] = {}
    context_param = None
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = hints.get(p.name, p.annotation)
        if annotation is ToolContext or annotation == "ToolContext":
            context_param = p.name
            continue
        if annotation is inspect.Parameter.empty:
            annotation = Any
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (annotation, Field(default, description=docs.get(p.name)))
    model = create_model(f"{tool_name.replace('.', '_').replace('-', '_')}_args", __base__=_Args, **fields)
    return model, context_param


def _unschemable(tool_name: str, fn: Callable[..., Any], error: Exception) -> InvalidSyscall:
    """The refusal of a signature that no JSON schema describes, naming the parameter at
    fault when one alone is (each is tried on its own)."""
    why = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return InvalidSyscall(f"tool {tool_name!r} has no signature to read: {why}",
                              hint="register a Python function or a class with a typed __call__")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:   # as _args_model reads them
        hints = {}
    for p in params:
        alone = _only(p.replace(annotation=hints.get(p.name, p.annotation)))
        try:
            _args_model(tool_name, alone, {})[0].model_json_schema()
        except (PydanticUserError, NameError, TypeError, ValueError):
            return InvalidSyscall(f"tool {tool_name!r}: parameter {p.name!r} has no JSON schema: {why}",
                                  hint=SCHEMA_TYPES)
    return InvalidSyscall(f"tool {tool_name!r}: its parameters have no JSON schema: {why}", hint=SCHEMA_TYPES)


def _only(p: inspect.Parameter) -> Callable[..., Any]:
    """A function whose one parameter is `p`."""
    def one(**kwargs: Any) -> None: ...
    one.__signature__ = inspect.Signature([p.replace(kind=p.KEYWORD_ONLY)])   # type: ignore[attr-defined]
    return one


_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?|Notes?):\s*$")
_SPHINX = re.compile(r"^:param\s+(?:\S+\s+)?(\w+):\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary (the first paragraph) and the per-parameter descriptions of a Google
    style (`Args:` then `name: text`) or Sphinx style (`:param name: text`) docstring."""
    lines = doc.strip().splitlines()
    summary: list[str] = []
    for line in lines:
        if not line.strip() or _SECTION.match(line.strip()) or line.strip().startswith(":"):
            break
        summary.append(line.strip())
    params: dict[str, str] = {}
    section = current = None
    entry_indent: int | None = None   # the indentation of `name: text` lines in the section
    for line in lines:
        text = line.strip()
        indent = len(line) - len(line.lstrip())
        head = _SECTION.match(text)
        if head:
            section, current, entry_indent = head.group(1), None, None
            continue
        sphinx = _SPHINX.match(text)
        if sphinx:
            current = sphinx.group(1)
            params[current] = sphinx.group(2)
        elif section in ("Args", "Arguments", "Parameters") and text:
            entry = re.match(r"^(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", text)
            if entry and (entry_indent is None or indent <= entry_indent):
                entry_indent = indent
                current = entry.group(1)
                params[current] = entry.group(2)
            elif current is not None:
                params[current] = f"{params[current]} {text}"
    return " ".join(summary), params


class ToolRegistry(Mapping[str, ToolSpec]):
    """The kernel's tools by name. Adding a name twice is a Conflict unless `replace`."""

    def __init__(self) -> None:
        self._tools: dict[str, ToolSpec] = {}

    def add(self, target: Any, *, replace: bool = False, **meta: Any) -> ToolSpec:
        spec = spec_of(target, **meta)
        if spec.name in self._tools and not replace:
            raise Conflict(f"a tool named {spec.name!r} is already registered",
                           field="name", hint="pick another name, or pass replace=True")
        self._tools[spec.name] = spec
        return spec

    def remove(self, name: str) -> None:
        self._tools.pop(name, None)

    def __getitem__(self, name: str) -> ToolSpec:
        return self._tools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)
