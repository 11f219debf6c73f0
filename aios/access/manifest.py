"""Permission manifests: what an agent process may do, declared beside its program (a TOML
file `NAME.toml` next to `NAME.py`, or given at spawn or registration), checked by the
kernel on every syscall before any work is done.

A manifest lists, each optional (left out: no limit of its own):

    models = ["sim-llama-3-8b"]          # LLM models it may call
    tools = ["calculator", "python"]     # tools it may call
    storage_read = ["notes/*"]           # storage paths (globs) it may read or list
    storage_write = ["notes/*"]          # ... write or delete
    network = ["example.com"]            # hosts network tools may reach ("*.x.org", "*" any; [] none)
    spawn = false                        # whether it may start processes or signal others
    sandbox = true                       # its program runs under bubblewrap (subprocess runner)
    memory_share = true                  # the principal's other agents may read its memory
    max_concurrent_syscalls = 4
    priority_ceiling = 50
    [budget.run]                         # per run of the process
    tokens = 20000
    cost_usd = 0.5
    [budget.day]                         # per UTC day, over all runs of the agent (its name)
    tokens = 200000

What a process may do is its manifest intersected with its principal's rights (the
principal's groups' manifests in the settings, `[access.groups.NAME]`; an admin, and the
loopback `local` principal, have every right). A manifest asking for more than its
principal has is refused at spawn, naming what it asked for.

A denial is a PermissionDenied (HTTP 403) that names the missing permission; a budget
that a call could exceed is a QuotaExceeded (HTTP 429) that says how much is left. Both
are written to the audit log."""
from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aios.errors import ConfigError, InvalidSyscall, PermissionDenied, QuotaExceeded
from aios.llm import count_tokens
from aios.syscall import (
    LLMSyscall,
    ProcessOp,
    ProcessSyscall,
    StorageOp,
    StorageSyscall,
    ToolSyscall,
    check_path,
)


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tokens: int | None = Field(None, ge=0, description="tokens in and out")
    cost_usd: float | None = Field(None, ge=0)


class Budgets(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    run: Budget = Budget()
    day: Budget = Budget()   # per UTC day, over every run of the same agent (name) of the principal


class Manifest(BaseModel):
    """What an agent may do; a field left out (None) sets no limit of its own."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    models: tuple[str, ...] | None = None
    tools: tuple[str, ...] | None = None
    storage_read: tuple[str, ...] | None = None
    storage_write: tuple[str, ...] | None = None
    spawn: bool | None = None
    network: tuple[str, ...] | None = None   # hosts its network tools may reach ("*" any); () none
    sandbox: bool | None = None   # run its program (subprocess runner) under the sandbox
    memory_share: bool | None = None   # the principal's other agents may read its memory
    max_concurrent_syscalls: int | None = Field(None, ge=1)
    priority_ceiling: int | None = Field(None, ge=0, le=99)
    budget: Budgets = Budgets()

    @field_validator("storage_read", "storage_write")
    @classmethod
    def _globs_that_can_match(cls, globs: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """A glob no path can match would deny in silence: paths are relative, normalised
        (no `.`, `..`, `//` or trailing `/`), so a glob that is not is refused here."""
        for glob in globs or ():
            try:
                normal = check_path(glob, field="glob")
            except InvalidSyscall as e:
                raise ValueError(f"the glob {glob!r} can match no path: {e.message}") from None
            if not normal:
                raise ValueError(f"the glob {glob!r} can match no path: it is empty (\"*\" matches every path)")
            if normal != glob:
                raise ValueError(f"the glob {glob!r} can match no path, as paths are written "
                                 f"{'relative and ' if glob.startswith('/') else ''}without '.', '//' or a trailing "
                                 f"'/': write {normal + ('/*' if glob.endswith('/') else '')!r}")
        return globs

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: str = "manifest") -> Manifest:
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or where
            hint = ("globs match paths relative to the agent's own file space, e.g. \"notes/*\""
                    if err["loc"][:1] in (("storage_read",), ("storage_write",)) else
                    "fields: models, tools, storage_read, storage_write, network, spawn, "
                    "max_concurrent_syscalls, priority_ceiling, [budget.run] tokens / cost_usd")
            raise ConfigError(f"{where}: {loc}: {err['msg'].removeprefix('Value error, ')}", field=f"manifest.{loc}",
                              hint=hint) from None

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = tomllib.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read the manifest {path}: {e.strerror}", field="manifest") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"the manifest {path} is not valid TOML: {e}", field="manifest") from None
        return cls.parse(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def beside(program: str | None) -> Path | None:
    """The manifest file next to an agent program file (`agent.py` -> `agent.toml`)."""
    if program is None:
        return None
    path = Path(program)
    if path.suffix == ".py" and path.is_file():
        toml = path.with_suffix(".toml")
        return toml if toml.is_file() else None
    return None


def excess(asked: Manifest, allowed: Manifest) -> list[str]:
    """What `asked` claims beyond `allowed` (the principal's rights), in words; empty if
    nothing. A limit the principal has that the manifest leaves out is not an excess: the
    principal's limit applies anyway."""
    out: list[str] = []
    for name in ("models", "tools", "network"):
        a, b = getattr(asked, name), getattr(allowed, name)
        if a is not None and b is not None and "*" not in b and (extra := sorted(set(a) - set(b))):
            out.append(f"{name}: {', '.join(extra)}")
    for name in ("storage_read", "storage_write"):
        a, b = getattr(asked, name), getattr(allowed, name)
        if a is not None and b is not None:
            extra = [g for g in a if not any(fnmatch.fnmatchcase(g, h) for h in b)]
            if extra:
                out.append(f"{name}: {', '.join(extra)}")
    if asked.spawn and allowed.spawn is False:
        out.append("spawn")
    for name in ("max_concurrent_syscalls", "priority_ceiling"):
        a, b = getattr(asked, name), getattr(allowed, name)
        if a is not None and b is not None and a > b:
            out.append(f"{name}: {a} (at most {b})")
    for period in ("run", "day"):
        for name in ("tokens", "cost_usd"):
            a, b = getattr(getattr(asked.budget, period), name), getattr(getattr(allowed.budget, period), name)
            if a is not None and b is not None and a > b:
                out.append(f"budget.{period}.{name}: {a} (at most {b})")
    return out


def intersect(a: Manifest, b: Manifest) -> Manifest:
    """The rights both allow."""
    def lists(x: tuple[str, ...] | None, y: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if x is None:
            return y
        if y is None:
            return x
        return tuple(v for v in x if v in y)

    def globs(x: tuple[str, ...] | None, y: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if x is None:
            return y
        if y is None:
            return x
        return tuple(g for g in x if any(fnmatch.fnmatchcase(g, h) for h in y))

    def low(x: Any, y: Any) -> Any:
        return y if x is None else x if y is None else min(x, y)

    spawn = None if a.spawn is None and b.spawn is None else bool(a.spawn is not False and b.spawn is not False)
    sandbox = True if a.sandbox or b.sandbox else (None if a.sandbox is None and b.sandbox is None else False)
    share = a.memory_share if a.memory_share is not None else b.memory_share
    return Manifest(sandbox=sandbox, memory_share=share, models=lists(a.models, b.models), tools=lists(a.tools, b.tools),
                    network=_hosts(a.network, b.network),
                    storage_read=globs(a.storage_read, b.storage_read),
                    storage_write=globs(a.storage_write, b.storage_write), spawn=spawn,
                    max_concurrent_syscalls=low(a.max_concurrent_syscalls, b.max_concurrent_syscalls),
                    priority_ceiling=low(a.priority_ceiling, b.priority_ceiling),
                    budget=Budgets(**{p: Budget(tokens=low(getattr(a.budget, p).tokens, getattr(b.budget, p).tokens),
                                                cost_usd=low(getattr(a.budget, p).cost_usd,
                                                             getattr(b.budget, p).cost_usd))
                                      for p in ("run", "day")}))


def rights_of(groups: Iterable[str], admin: bool, group_manifests: Mapping[str, Manifest]) -> Manifest:
    """A principal's rights: everything for an admin; else the union of its groups'
    manifests (a group not configured grants nothing beyond the defaults); a principal in
    no configured group has every right (set groups to restrict it)."""
    configured = [group_manifests[g] for g in groups if g in group_manifests]
    if admin or not configured:
        return Manifest()
    return _union(configured)


def _union(ms: list[Manifest]) -> Manifest:
    def lists(name: str) -> tuple[str, ...] | None:
        values = [getattr(m, name) for m in ms]
        if any(v is None for v in values):
            return None
        return tuple(dict.fromkeys(x for v in values for x in v))

    def high(values: list[Any]) -> Any:
        return None if any(v is None for v in values) else max(values)

    spawn_values = [m.spawn for m in ms]
    return Manifest(models=lists("models"), tools=lists("tools"), network=lists("network"),
                    storage_read=lists("storage_read"),
                    storage_write=lists("storage_write"),
                    spawn=None if any(v is None for v in spawn_values) else any(spawn_values),
                    max_concurrent_syscalls=high([m.max_concurrent_syscalls for m in ms]),
                    priority_ceiling=high([m.priority_ceiling for m in ms]),
                    budget=Budgets(**{p: Budget(tokens=high([getattr(m.budget, p).tokens for m in ms]),
                                                cost_usd=high([getattr(m.budget, p).cost_usd for m in ms]))
                                      for p in ("run", "day")}))


def _host_of(url: Any) -> str | None:
    from urllib.parse import urlsplit
    try:
        return urlsplit(str(url)).hostname if url else None
    except ValueError:
        return None


def _hosts(x: tuple[str, ...] | None, y: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """Hosts both allow: None is no limit, "*" any host."""
    if x is None or "*" in x:
        return y if y is not None else x
    if y is None or "*" in y:
        return x
    return tuple(h for h in x if h in y)


def path_allowed(path: str, globs: tuple[str, ...] | None) -> bool:
    return globs is None or any(fnmatch.fnmatchcase(path, g) for g in globs)


# ---- the check at submit

def check_call(call: Any, manifest: Manifest, in_flight: Iterable[Any], used_tokens: int, used_cost: float,
               tool_cost: float = 0.0, needs_network: bool = False,
               used_today: tuple[int, float] | None = None) -> Any:
    """The call as it may run (an LLM call's max_tokens cut to the run's token budget), or
    PermissionDenied naming the missing permission, or QuotaExceeded saying what is left.
    `in_flight`: the process's calls not finished yet, whose worst case counts against the
    budget; `used_*`: what its finished calls used."""
    who = f"process {call.pid}"
    if manifest.priority_ceiling is not None and call.priority > manifest.priority_ceiling:
        raise PermissionDenied(f"{who} may not use priority {call.priority}: its ceiling is "
                               f"{manifest.priority_ceiling}", field="priority",
                               hint="permission priority_ceiling in the agent's manifest")
    live = list(in_flight)
    if manifest.max_concurrent_syscalls is not None and len(live) >= manifest.max_concurrent_syscalls:
        raise QuotaExceeded(f"{who} has {len(live)} syscalls in flight, its limit "
                            f"(max_concurrent_syscalls) is {manifest.max_concurrent_syscalls}",
                            field="max_concurrent_syscalls", hint="wait for one to finish")
    match call:
        case LLMSyscall():
            if manifest.models is not None and call.model not in manifest.models:
                raise PermissionDenied(f"{who} may not call model {call.model!r}: missing permission "
                                       f"models: {call.model}", field="model",
                                       hint=f"its manifest allows: {', '.join(manifest.models) or 'no model'}")
            reserved = sum(count_tokens(c.messages) + (c.max_tokens or 0) for c in live if isinstance(c, LLMSyscall))
            prompt = count_tokens(call.messages)
            for period, budget, used in (("run", manifest.budget.run.tokens, used_tokens),
                                         ("day", manifest.budget.day.tokens, (used_today or (0, 0.0))[0])):
                if budget is None:
                    continue
                left = budget - used - reserved
                if prompt + 1 > left:
                    raise QuotaExceeded(f"{who} would exceed its token budget: {max(left, 0)} of {budget} tokens per "
                                        f"{period} left, and this call's prompt alone is about {prompt}",
                                        field=f"budget.{period}.tokens", hint="the budget is in the agent's manifest")
                if call.max_tokens is None or prompt + call.max_tokens > left:
                    call = replace(call, max_tokens=left - prompt)   # it stops at the budget
        case ToolSyscall():
            if manifest.tools is not None and call.tool not in manifest.tools:
                raise PermissionDenied(f"{who} may not call tool {call.tool!r}: missing permission tools: {call.tool}",
                                       field="tool", hint=f"its manifest allows: {', '.join(manifest.tools) or 'no tool'}")
            if needs_network and manifest.network is not None and "*" not in manifest.network:
                host = _host_of(call.arguments.get("url")) if call.tool == "http_fetch" else None
                from aios.tools.http import is_allowed
                if host is None or not is_allowed(host, list(manifest.network)):
                    raise PermissionDenied(f"{who} may not reach {host or 'the network'} with {call.tool!r}: "
                                           f"missing permission network: {host or '*'}", field="arguments.url",
                                           hint=f"its manifest allows: {', '.join(manifest.network) or 'no host'}")
        case StorageSyscall():
            writing = call.is_store_write
            globs = manifest.storage_write if writing else manifest.storage_read
            name = "storage_write" if writing else "storage_read"
            # a move writes both ends: it deletes its path and writes its target
            for field, path in [("path", call.path)] + ([("to", call.to)] if call.op is StorageOp.MOVE else []):
                if not path_allowed(path or "", globs):   # normalised at decode
                    raise PermissionDenied(f"{who} may not {call.op.value} {'to ' if field == 'to' else ''}{path!r}: "
                                           f"missing permission {name}: {path}", field=field,
                                           hint=f"its manifest allows {name}: {', '.join(globs or ()) or 'nothing'}")
        case ProcessSyscall() if call.op in (ProcessOp.SUSPEND, ProcessOp.RESUME, ProcessOp.KILL):
            if call.target_pid not in (None, call.pid) and manifest.spawn is False:
                raise PermissionDenied(f"{who} may not {call.op.value} process {call.target_pid}: missing permission "
                                       "spawn", field="target_pid", hint="set spawn = true in its manifest")
    for period, cost_budget, spent in (("run", manifest.budget.run.cost_usd, used_cost),
                                       ("day", manifest.budget.day.cost_usd, (used_today or (0, 0.0))[1])):
        if cost_budget is not None and spent >= cost_budget or cost_budget is not None and tool_cost \
                and spent + tool_cost > cost_budget:
            raise QuotaExceeded(f"{who} would exceed its cost budget: ${max(cost_budget - spent, 0):.4f} of "
                                f"${cost_budget:g} per {period} left" + (f", and this call costs ${tool_cost:g}"
                                                                         if tool_cost else ""),
                                field=f"budget.{period}.cost_usd", hint="the budget is in the agent's manifest")
    return call
