"""Python tools named by an entry: `package.module:function`, a module the kernel's own
Python imports, or `/path/to/file.py:function`. Two places name them: `[tools.python]`
in the settings, and `aios tools add` (POST /v1/tools), whose tools the database keeps
(python_tools) so that every boot registers them again. Each is registered through
Kernel.register_tool, so with the schema checks of every tool. A function made with
`@tool` keeps its metadata, and what the entry gives overrides it.

Invariant: an entry never stops a kernel from booting. One that does not import (its
module missing or raising, its attribute missing or not callable), whose signature no
JSON schema describes, or whose name is taken, is logged, naming the entry, the module
and the error, and the kernel boots without it.

The functions here work on the kernel they are given (an aios.kernel.Kernel, which
imports this module: so it is not named here)."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
from sqlalchemy import Engine, delete, insert, select

from aios.config import ENTRY_FORM, PYTHON_ENTRY
from aios.errors import AiosError, Conflict, InvalidSyscall, NotFound
from aios.storage.models import PythonToolRow
from aios.tools.registry import ToolSpec, spec_of

log = logging.getLogger(__name__)

CONFIG = "python:config"   # the source of a tool of [tools.python]
ADDED = "python:added"     # the source of a tool added with aios tools add: the only ones removed
IMPORTABLE = ("the kernel imports it with its own Python: a module installed there or on its PYTHONPATH, "
              "or a file (/path/to/file.py:function)")


@dataclass(frozen=True, slots=True)
class PythonTool:
    """A Python tool by its entry, with the metadata Kernel.register_tool takes; a field
    left None is the function's own (its @tool's), else the default."""
    name: str
    entry: str
    description: str | None = None
    timeout_s: float | None = None
    irreversible: bool | None = None
    needs_network: bool | None = None
    cost_usd: float | None = None
    max_concurrency: int | None = None

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata given."""
        return {name: getattr(self, name) for name in META if getattr(self, name) is not None}


META = tuple(f.name for f in fields(PythonTool))[2:]


def parse(entry: str) -> tuple[str, str]:
    """The module (or file) and the attribute an entry names; InvalidSyscall shows the form."""
    found = PYTHON_ENTRY.match(entry)
    if found is None:
        raise InvalidSyscall(f"bad tool entry {entry!r}", field="entry", hint=f"the form is {ENTRY_FORM}")
    return found["file"] or found["module"], found["attr"]


def load(entry: str) -> Any:
    """What an entry names, imported: a file again when it has changed since, a module once
    per process (as Python imports). Blocking. InvalidSyscall names the module and the error."""
    where, attr = parse(entry)
    is_file = where.endswith(".py")
    what = f"{'file' if is_file else 'module'} {where!r}"
    try:
        module = _import_file(Path(where).expanduser()) if is_file else importlib.import_module(where)
    except (Exception, SystemExit) as e:   # whatever its code raises at import
        raise InvalidSyscall(f"cannot import {what}: {_describe(e)}", field="entry", hint=IMPORTABLE) from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise InvalidSyscall(f"{what} has no attribute {attr!r}", field="entry",
                                 hint=f"the form is {ENTRY_FORM}") from None
        except Exception as e:   # a property that raises
            raise InvalidSyscall(f"cannot read {attr!r} of {what}: {_describe(e)}", field="entry") from None
    return target


def _import_file(path: Path) -> ModuleType:
    """The module of a .py file, named for its path, run again only when the file changed."""
    path = path.resolve()
    stat = path.stat()   # FileNotFoundError names the file
    stamp = (stat.st_mtime_ns, stat.st_size)
    name = f"aios_tool_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    known = sys.modules.get(name)
    if known is not None and getattr(known, "__aios_stamp__", None) == stamp:
        return known
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    module.__aios_stamp__ = stamp   # type: ignore[attr-defined]
    sys.modules[name] = module   # while it runs, as an import does (dataclasses look it up there)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _registrable(target: Any, tool: PythonTool) -> tuple[Any, dict[str, Any]]:
    """What to register and with what metadata: a ToolSpec (made with @tool) is made again
    from its function, with its own metadata under the entry's."""
    if isinstance(target, ToolSpec):
        return target.fn, {**{name: getattr(target, name) for name in META}, **tool.meta}
    return target, tool.meta


def register(kernel: Any, tool: PythonTool, target: Any, source: str) -> ToolSpec:
    """Registers `target`, what tool.entry names, through Kernel.register_tool. Conflict if
    the name is taken; InvalidSyscall (field entry, unless another is at fault) as
    register_tool refuses it."""
    check_free(kernel, tool.name)
    fn, meta = _registrable(target, tool)
    with _refused():
        return kernel.register_tool(tool.name, fn, source=source, **meta)


@contextmanager
def _refused() -> Iterator[None]:
    """register_tool's refusal, with the entry at fault unless another field is; and what
    the tool's own code raises as it is made (a class's __init__), as a refusal too."""
    try:
        yield
    except InvalidSyscall as e:
        raise InvalidSyscall(e.message, hint=e.hint, field=e.field or "entry") from None
    except AiosError:
        raise
    except Exception as e:
        raise InvalidSyscall(f"cannot make a tool of it: {_describe(e)}", field="entry") from None


def check_free(kernel: Any, name: str, saved: Mapping[str, PythonTool] | None = None) -> None:
    """Conflict if a tool of that name is registered, or saved (added before, but it did
    not load at this boot)."""
    taken = kernel.tools.get(name)
    if taken is not None:
        raise Conflict(f"a tool named {name!r} is already registered ({origin(taken.source)})", field="name",
                       hint=f"pick another name{', or aios tools remove it first' if taken.source == ADDED else ''}")
    if saved is not None and name in saved:
        raise Conflict(f"a tool named {name!r} was added before ({saved[name].entry!r}), and did not load at this "
                       "boot", field="name", hint=f"aios tools remove {name} forgets it; the kernel's log says why")


def origin(source: str) -> str:
    if source.startswith("mcp:"):
        return f"imported from the MCP server {source[4:]!r}"
    return {CONFIG: "from [tools.python] in the kernel's settings", ADDED: "added with aios tools add"}.get(
        source, "built in")


def left_out(tool: PythonTool, source: str, error: AiosError) -> str:
    """The one line that says a tool is left out, and why."""
    if source == CONFIG:
        return f"tools.python.{tool.name} = {tool.entry!r} is left out: {error.message}"
    return (f"tool {tool.name} = {tool.entry!r} (added with aios tools add) is left out: {error.message}; "
            f"aios tools remove {tool.name} forgets it")


def problems(entries: Mapping[str, str]) -> list[str]:
    """What a booting kernel will log of the [tools.python] `entries` it leaves out because
    they do not import or no schema describes them, checked as register_tool checks
    (spec_of): one line each, for `aios kernel start` to say before it starts. Blocking."""
    found = []
    for name, entry in entries.items():
        tool = PythonTool(name, entry)
        try:
            fn, meta = _registrable(load(entry), tool)
            with _refused():
                spec_of(fn, name=name, **meta)
        except AiosError as e:
            found.append(left_out(tool, CONFIG, e))
    return found


async def _load(kernel: Any, entry: str) -> Any:
    with kernel.clock.busy():   # real work: virtual time waits for it
        return await anyio.to_thread.run_sync(load, entry)


# ---- the kernel's side: at boot, and for POST and DELETE /v1/tools

async def register_at_boot(kernel: Any) -> None:
    """Registers the settings' [tools.python] entries, then the tools added with `aios
    tools add`; one that cannot be registered is logged and left out (the invariant)."""
    configured = [(PythonTool(name, entry), CONFIG) for name, entry in kernel.settings.tools.python.items()]
    saved = [(tool, ADDED) for tool in (await kernel.db.run(_saved)).values()]
    for tool, source in configured + saved:
        try:
            check_free(kernel, tool.name)
            register(kernel, tool, await _load(kernel, tool.entry), source)
        except AiosError as e:
            log.error("%s", left_out(tool, source, e))


async def add(kernel: Any, tool: PythonTool, principal: str) -> ToolSpec:
    """Imports and registers a tool on the running kernel, and keeps it, so that every boot
    registers it again. InvalidSyscall: a bad entry (its form, a relative file), one that
    does not import (the module and the error), or one register_tool refuses; Conflict:
    the name is taken."""
    where, _ = parse(tool.entry)
    if where.endswith(".py") and not Path(where).expanduser().is_absolute():
        raise InvalidSyscall(f"the file of tool entry {tool.entry!r} is not an absolute path", field="entry",
                             hint="name the file by its absolute path (aios tools add resolves a relative one)")
    check_free(kernel, tool.name, await kernel.db.run(_saved))
    spec = register(kernel, tool, await _load(kernel, tool.entry), ADDED)   # checks the name again: it awaited
    try:
        await kernel.db.run(lambda e: _save(e, tool, principal, kernel.clock.now()))
    except BaseException:
        kernel.tools.remove(tool.name)
        raise
    kernel.guard.audit_soon(principal, "tool.add", tool.name, "info", {"entry": tool.entry, **tool.meta})
    log.info("tool %s = %r added by %s", tool.name, tool.entry, principal)
    return spec


async def remove(kernel: Any, name: str, principal: str) -> PythonTool:
    """Unregisters and forgets a tool added with `add` (one that did not load at boot is
    forgotten too). NotFound for a name no tool has; Conflict for a tool from elsewhere
    (built in, [tools.python], MCP), which stays."""
    removed = await kernel.db.run(lambda e: _forget(e, name))
    registered = kernel.tools.get(name)
    if removed is None:
        if registered is None:
            raise NotFound(f"no tool named {name!r}", field="name", hint="aios tools lists them")
        raise Conflict(f"tool {name!r} is {origin(registered.source)}: only a tool added with aios tools add can "
                       "be removed", field="name", hint=_how_to_remove(registered.source))
    if registered is not None and registered.source == ADDED:
        kernel.tools.remove(name)
    kernel.guard.audit_soon(principal, "tool.remove", name, "info", {"entry": removed.entry})
    log.info("tool %s = %r removed by %s", name, removed.entry, principal)
    return removed


def _how_to_remove(source: str) -> str:
    if source == CONFIG:
        return "take it out of [tools.python] in the kernel's settings file, and restart the kernel"
    if source.startswith("mcp:"):
        return f"take {source[4:]} out of [tools.mcp] in the kernel's settings file, and restart the kernel"
    return "a built-in tool stays; a manifest's `tools` list says which tools an agent may call"


def _saved(engine: Engine) -> dict[str, PythonTool]:
    with engine.connect() as conn:
        rows = conn.execute(select(PythonToolRow.name, PythonToolRow.entry, PythonToolRow.meta)
                            .order_by(PythonToolRow.created)).all()
    return {name: PythonTool(name, entry, **{k: v for k, v in meta.items() if k in META}) for name, entry, meta in rows}


def _save(engine: Engine, tool: PythonTool, principal: str, now: float) -> None:
    with engine.begin() as conn:
        conn.execute(insert(PythonToolRow).values(name=tool.name, entry=tool.entry, meta=tool.meta,
                                                  principal=principal, created=now))


def _forget(engine: Engine, name: str) -> PythonTool | None:
    with engine.begin() as conn:
        row = conn.execute(select(PythonToolRow.entry, PythonToolRow.meta).where(PythonToolRow.name == name)).first()
        if row is None:
            return None
        conn.execute(delete(PythonToolRow).where(PythonToolRow.name == name))
    return PythonTool(name, row.entry, **{k: v for k, v in row.meta.items() if k in META})
