"""The kernel's gate (aios.access): each process's enforced manifest, decided at spawn and
checked on every syscall it submits; every denial is written to the audit log.

`Guard.admit` is the one permission check of a call, made once when it is submitted,
and made the same way for a call a tool makes on its caller's behalf (the tool gate)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import Engine, func, insert, select

from aios import access
from aios.access.manifest import Manifest, check_call, excess, intersect, rights_of
from aios.clock import Clock
from aios.config import Settings
from aios.errors import AiosError, ConfigError, NotFound, PermissionDenied
from aios.storage import Database
from aios.storage.models import ManifestRow, ProcessRow, SyscallRow
from aios.syscall import CallState, MemoryOp, MemorySyscall, StorageOp, StorageSyscall, Syscall, ToolSyscall

log = logging.getLogger(__name__)


def check_shared(call: MemorySyscall, procs: Mapping[int, Any], manifests: Mapping[int, Manifest]) -> None:
    """Reading another agent's memory (`owner`): only what it shares, within one principal.
    `procs`: the live process table's processes, by pid."""
    owner = procs.get(call.owner)   # type: ignore[arg-type]
    if owner is None or owner.principal != call.principal:
        raise NotFound(f"no process {call.owner}", field="owner")
    if call.op not in (MemoryOp.GET, MemoryOp.LIST, MemoryOp.SEARCH):
        raise PermissionDenied(f"another agent's memory is read-only: {call.op.value} is refused", field="op")
    manifest = manifests.get(owner.pid)
    if manifest is None or not manifest.memory_share:
        raise PermissionDenied(f"process {owner.pid} does not share its memory: missing permission memory_share "
                               "in its manifest", field="owner", hint="its manifest sets memory_share = true")


def is_irreversible(call: Syscall, is_confirming: bool, tool: Any | None) -> bool:
    """Whether the call waits for its principal's confirmation while `access.confirm` is
    on: an agent process's call of an irreversible tool (`tool`, its spec), or its storage
    delete. The principal's own calls (pid 0) are its own decision."""
    if not is_confirming or not call.pid:
        return False
    if isinstance(call, ToolSyscall):
        return tool is not None and tool.irreversible
    return isinstance(call, StorageSyscall) and call.op is StorageOp.DELETE


class Guard:
    def __init__(self, db: Database, settings: Settings, clock: Clock):
        self.db, self.clock = db, clock
        self.groups = {name: Manifest.parse(m, f"access.groups.{name}") for name, m in settings.access.groups.items()}
        self.manifests: dict[int, Manifest] = {}   # pid -> the manifest enforced on it
        self.is_confirming = settings.access.confirm
        # runs an audit write in the background (the kernel's task group, set at boot)
        self.start_soon: Callable[..., None] | None = None

    async def admit(self, call: Syscall, proc: Any, procs: Mapping[int, Any], in_flight: Iterable[Syscall],
                    tool: Any | None, *, detail: dict[str, Any], in_tool: ToolSyscall | None = None) -> Syscall:
        """The one permission check of a call (made as the process `proc`, if any): its
        manifest (check_call: what it may use, its budget, its syscalls in flight), another
        agent's memory only where shared, and an irreversible action held for a confirmation
        (`in_tool`, the tool call making it on its caller's behalf, cannot wait for one: it
        is refused). Every refusal is audited, and so is an allowed call of a process with a
        manifest (`detail`). Returns the call as it may run (its state waiting for a
        confirmation, an LLM call's max_tokens cut to its budget)."""
        action, target = f"{call.kind.value}.submit", str(call.pid)
        manifest = self.manifests.get(call.pid) if call.pid else None
        if manifest is not None:
            call = await self.check(call, in_flight, proc.usage.tokens_in + proc.usage.tokens_out,
                                    proc.usage.cost_usd, tool.cost_usd if tool is not None else 0.0,
                                    tool is not None and tool.needs_network, proc.name)
        try:
            if isinstance(call, MemorySyscall) and call.owner not in (None, call.pid):
                check_shared(call, procs, self.manifests)
            if is_irreversible(call, self.is_confirming, tool):
                if in_tool is not None:
                    raise PermissionDenied(f"a tool may not {call.op.value} {call.path!r} on process "   # type: ignore[attr-defined]
                                           f"{call.pid}'s behalf: it needs a confirmation, and a tool call cannot "
                                           "wait for one", field="op",
                                           hint="make the storage syscall directly; its principal confirms it")
                call = replace(call, state=CallState.WAITING_CONFIRMATION)
        except AiosError as e:
            await self.deny(call.principal, action, target, e.message, {**detail, "code": e.code})
            raise
        if manifest is not None:
            self.audit_soon(call.principal, action, target, "allow", detail)
        return call

    def audit_soon(self, principal: str, action: str, target: str, decision: str, detail: dict[str, Any]) -> None:
        """Writes an audit record in the background (in order with the kernel's other work)."""
        now = self.clock.now()
        assert self.start_soon is not None, "the kernel sets Guard.start_soon when it boots"
        self.start_soon(self.db.run, lambda e: access.audit(e, now, principal, action, target, decision, detail))

    async def rights(self, principal: str) -> Manifest:
        if principal == access.LOCAL:
            return Manifest()
        try:
            p = await self.db.run(lambda e: access.get_principal(e, principal))
        except NotFound:
            return Manifest()   # a principal of the settings' tokens: no groups, no limits here
        return rights_of(p.groups, p.admin, self.groups)

    async def decide(self, principal: str, declared: Manifest | None, parent_pid: int | None, name: str) -> Manifest | None:
        """The manifest to enforce on a new process: its own, within its principal's rights
        and its parent's manifest. PermissionDenied names what it asked beyond them."""
        parent = self.manifests.get(parent_pid) if parent_pid is not None else None
        if parent is not None and parent.spawn is False:
            await self.deny(principal, "process.spawn", name, "spawn", {"parent_pid": parent_pid})
            raise PermissionDenied(f"process {parent_pid} may not start processes: missing permission spawn",
                                   field="parent_pid", hint="set spawn = true in its manifest")
        rights = await self.rights(principal)
        if declared is not None:
            over = excess(declared, rights) + (excess(declared, parent) if parent is not None else [])
            if over:
                await self.deny(principal, "process.spawn", name, "; ".join(over), {"manifest": declared.to_dict()})
                raise PermissionDenied(f"the manifest of {name!r} asks for more than {principal!r} may grant: "
                                       f"{'; '.join(over)}", field="manifest",
                                       hint="ask an admin to add the rights to one of its groups ([access.groups])")
        layers = [m for m in (declared, rights, parent) if m is not None]
        effective = layers[0]
        for m in layers[1:]:
            effective = intersect(effective, m)
        return None if effective == Manifest() and declared is None else effective

    async def load(self) -> None:
        """At boot: the manifests of earlier boots' processes (a read made as an exited
        process, and what it shared, still obey them)."""
        def read(engine: Engine) -> list[Any]:
            with engine.connect() as conn:
                return list(conn.execute(select(ManifestRow.pid, ManifestRow.effective)))
        for pid, effective in await self.db.run(read):
            try:
                self.manifests[pid] = Manifest.parse(effective, f"the manifest of process {pid}")
            except ConfigError as e:   # written by another version: that process's reads go unchecked
                log.warning("%s", e.message)

    def forget(self, pids: Iterable[int]) -> None:
        for pid in pids:
            self.manifests.pop(pid, None)

    async def attach(self, pid: int, declared: Manifest | None, effective: Manifest | None) -> None:
        if effective is None:
            return
        self.manifests[pid] = effective

        def write(engine: Engine) -> None:
            with engine.begin() as conn:
                conn.execute(insert(ManifestRow).values(pid=pid, declared=(declared or Manifest()).to_dict(),
                                                        effective=effective.to_dict()))
        await self.db.run(write)

    async def check(self, call: Any, in_flight: Iterable[Any], used_tokens: int, used_cost: float,
                    tool_cost: float = 0.0, needs_network: bool = False, name: str = "") -> Any:
        """The manifest's part of `admit` (check_call); audits a denial."""
        manifest = self.manifests.get(call.pid)
        if manifest is None:
            return call
        mine = [c for c in in_flight if c.pid == call.pid and not c.is_terminal]
        today = None
        if manifest.budget.day.tokens is not None or manifest.budget.day.cost_usd is not None:
            today = await self.used_today(call.principal, name)
        try:
            return check_call(call, manifest, mine, used_tokens, used_cost, tool_cost, needs_network, today)
        except AiosError as e:
            await self.deny(call.principal, f"{call.kind.value}.submit", str(call.pid), e.message,
                            {"field": e.field, "code": e.code})
            raise

    async def used_today(self, principal: str, name: str) -> tuple[int, float]:
        """Tokens and dollars the principal's runs of the agent `name` used since UTC midnight
        (finished calls; those in flight are counted by the caller)."""
        now = self.clock.now()
        midnight = now - now % 86400

        def read(engine: Engine) -> tuple[int, float]:
            query = (select(func.coalesce(func.sum(SyscallRow.tokens_in + SyscallRow.tokens_out), 0),
                            func.coalesce(func.sum(SyscallRow.cost_usd), 0.0))
                     .join(ProcessRow, ProcessRow.pid == SyscallRow.pid)
                     .where(ProcessRow.name == name, ProcessRow.principal == principal,
                            SyscallRow.finished >= midnight))
            with engine.connect() as conn:
                tokens, cost = conn.execute(query).one()
            return int(tokens), float(cost)
        return await self.db.run(read)

    async def deny(self, principal: str, action: str, target: str, missing: str, detail: dict[str, Any]) -> None:
        now = self.clock.now()
        await self.db.run(lambda e: access.audit(e, now, principal, action, target, "deny",
                                                 {"missing": missing, **detail}))
