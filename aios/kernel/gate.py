"""The tool gate: the syscalls a tool makes on its caller's behalf (`ToolContext.syscall`).

A tool gets its caller's identity and this gate, never the kernel, so whatever a tool
reaches, the caller's manifest bounds. A call through the gate is checked as
`Kernel.submit` checks it: the process is live, its manifest allows the call
(`Guard.check`, which audits a denial), another agent's memory is read only where it
shares (`check_shared`), and the payload is well formed. It is audited as submit audits
it, then run inline by the store that runs its kind (FileStore, MemoryManager), in the
tool call's own task.

Invariant: a call through the gate never outlives its tool call. It is neither queued
nor journaled on its own. The tool call is journaled with its arguments and holds the
slot, and the nested call runs inside it, under its cancel scope and timeout. The gate
closes when the tool call ends, so a context kept past its call can make no syscall. A
queued nested call could be held while its process is suspended, or re-run after a crash
that failed the tool call as interrupted, and so act after the agent was told it failed.

The gate refuses what it cannot run inside a tool call:
- kinds other than storage and memory (InvalidSyscall, naming those two);
- a call that would wait for a confirmation (an agent's storage delete under
  `access.confirm`): PermissionDenied, because nobody can confirm a call while its
  tool call waits. The agent makes that syscall itself.

A nested call counts as its tool call against `max_concurrent_syscalls`, because it holds
no slot of its own. `priority` and `timeout_s` mean nothing to it: it runs at once, within
its tool call's timeout."""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aios import access
from aios.errors import AiosError, InvalidSyscall, NotFound, PermissionDenied
from aios.syscall import (Kind, MemoryOp, MemorySyscall, StorageOp, StorageSyscall, Syscall, ToolSyscall,
                          new_call)
from aios.tools.registry import ToolContext, ToolSpec

if TYPE_CHECKING:
    from aios.access.guard import Guard
    from aios.access.manifest import Manifest
    from aios.clock import Clock
    from aios.memory import MemoryManager
    from aios.process.table import ProcessTable
    from aios.storage import Database, FileStore

KINDS = (Kind.STORAGE, Kind.MEMORY)   # what a tool may do on its caller's behalf


def check_shared(call: MemorySyscall, processes: ProcessTable, manifests: Mapping[int, Manifest]) -> None:
    """Reading another agent's memory (`owner`): only what it shares, within one principal."""
    owner = processes.procs.get(call.owner)   # type: ignore[arg-type]
    if owner is None or owner.principal != call.principal:
        raise NotFound(f"no process {call.owner}", field="owner")
    if call.op not in (MemoryOp.GET, MemoryOp.LIST, MemoryOp.SEARCH):
        raise PermissionDenied(f"another agent's memory is read-only: {call.op.value} is refused", field="op")
    manifest = manifests.get(owner.pid)
    if manifest is None or not manifest.memory_share:
        raise PermissionDenied(f"process {owner.pid} does not share its memory: missing permission memory_share "
                               "in its manifest", field="owner", hint="its manifest sets memory_share = true")


def is_irreversible(call: Syscall, is_confirming: bool, tool: ToolSpec | None) -> bool:
    """Whether the call waits for its principal's confirmation while `access.confirm` is
    on: an agent process's call of an irreversible tool (`tool`, its spec), or its storage
    delete. The principal's own calls (pid 0) are its own decision."""
    if not is_confirming or not call.pid:
        return False
    if isinstance(call, ToolSyscall):
        return tool is not None and tool.irreversible
    return isinstance(call, StorageSyscall) and call.op is StorageOp.DELETE


class ToolGate:
    """The gate of one tool call (`parent`): open while the call runs, closed by the
    kernel's tool handler when it ends, on every path."""

    def __init__(self, parent: ToolSyscall, processes: ProcessTable, guard: Guard, files: FileStore,
                 memory: MemoryManager, db: Database, clock: Clock, *, is_confirming: bool):
        self.parent = parent
        self.processes, self.guard, self.files, self.memory = processes, guard, files, memory
        self.db, self.clock = db, clock
        self.is_confirming = is_confirming
        self.is_open = True

    def context(self) -> ToolContext:
        p = self.parent
        return ToolContext(p.pid, p.principal, p.id, self.clock, p.idempotency_key or p.id, self.syscall)

    def close(self) -> None:
        self.is_open = False

    async def syscall(self, call: Syscall | Mapping[str, Any]) -> Any:
        """Checks the call on the caller's behalf, as submit would, and runs it: its result,
        or the AiosError that refused or failed it (nothing is stored then)."""
        call = self._decode(call)
        await self._check(call)
        if isinstance(call, StorageSyscall):
            return await self.files.execute(call, self.clock.now())
        return await self.memory.execute(call, self.clock.now())   # type: ignore[arg-type]

    def _decode(self, call: Syscall | Mapping[str, Any]) -> Syscall:
        """The call as the caller's own: its pid and principal, whatever the call says."""
        p = self.parent
        if not self.is_open:
            raise InvalidSyscall(f"tool call {p.id} is over: its context makes no more syscalls",
                                 hint="a tool makes its syscalls while it runs, and keeps no context for later")
        call = new_call(call, pid=p.pid, principal=p.principal, created=self.clock.now())
        if call.kind not in KINDS:
            raise InvalidSyscall(f"a tool makes only storage and memory syscalls on its caller's behalf, "
                                 f"not {call.kind}", field="kind",
                                 hint=f"allowed: {', '.join(KINDS)}; the agent makes other syscalls itself")
        return call

    async def _check(self, call: Syscall) -> None:
        """Submit's checks, in submit's order; every refusal is audited (Guard.check audits
        its own), and so is an allowed call of a process that has a manifest."""
        if call.pid:
            proc = self.processes.check_live(call.pid)
            if call.pid in self.guard.manifests:
                await self.guard.check(call, (), proc.usage.tokens_in + proc.usage.tokens_out, proc.usage.cost_usd,
                                       name=proc.name)
        action, target = f"{call.kind.value}.submit", str(call.pid)
        detail = {"tool_call": self.parent.id, "tool": self.parent.tool, "op": call.op.value}   # type: ignore[attr-defined]
        try:
            if isinstance(call, MemorySyscall) and call.owner not in (None, call.pid):
                check_shared(call, self.processes, self.guard.manifests)
            if is_irreversible(call, self.is_confirming, None):
                raise PermissionDenied(f"a tool may not {call.op.value} {call.path!r} on process {call.pid}'s "   # type: ignore[attr-defined]
                                       "behalf: it needs a confirmation, and a tool call cannot wait for one",
                                       field="op", hint="make the storage syscall directly; its principal confirms it")
        except AiosError as e:
            await self.guard.deny(call.principal, action, target, e.message, {**detail, "code": e.code})
            raise
        if call.pid in self.guard.manifests:
            now = self.clock.now()
            await self.db.run(lambda e: access.audit(e, now, call.principal, action, target, "allow", detail))
