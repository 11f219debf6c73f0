"""The tool gate: the syscalls a tool makes on its caller's behalf (`ToolContext.syscall`).

A tool gets its caller's identity and this gate, never the kernel, so whatever a tool
reaches, the caller's manifest bounds. A call through the gate is checked by the same
code as `Kernel.submit` checks it: decoded (`new_call`), the process live, and
`Guard.admit` (the manifest, another agent's memory only where it shares, the audit of
each refusal and of an allowed call). It is then run inline by the store that runs its
kind (FileStore, MemoryManager), in the tool call's own task.

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

from aios.errors import InvalidSyscall
from aios.syscall import Kind, StorageSyscall, Syscall, ToolSyscall, new_call
from aios.tools.registry import ToolContext

if TYPE_CHECKING:
    from aios.access.guard import Guard
    from aios.clock import Clock
    from aios.memory import MemoryManager
    from aios.process.table import ProcessTable
    from aios.storage import FileStore

KINDS = (Kind.STORAGE, Kind.MEMORY)   # what a tool may do on its caller's behalf


class ToolGate:
    """The gate of one tool call (`parent`): open while the call runs, closed by the
    kernel's tool handler when it ends, on every path."""

    def __init__(self, parent: ToolSyscall, processes: ProcessTable, guard: Guard, files: FileStore,
                 memory: MemoryManager, clock: Clock):
        self.parent = parent
        self.processes, self.guard, self.files, self.memory, self.clock = processes, guard, files, memory, clock
        self.is_open = True

    def context(self) -> ToolContext:
        p = self.parent
        return ToolContext(p.pid, p.principal, p.id, self.clock, p.idempotency_key or p.id, self.syscall)

    def close(self) -> None:
        self.is_open = False

    async def syscall(self, call: Syscall | Mapping[str, Any]) -> Any:
        """Checks the call on the caller's behalf, as submit does (decoded, the process
        live, Guard.admit), and runs it: its result, or the AiosError that refused or failed
        it (nothing is stored then)."""
        p = self.parent
        if not self.is_open:
            raise InvalidSyscall(f"tool call {p.id} is over: its context makes no more syscalls",
                                 hint="a tool makes its syscalls while it runs, and keeps no context for later")
        call = new_call(call, pid=p.pid, principal=p.principal, created=self.clock.now())   # the caller's own
        if call.kind not in KINDS:
            raise InvalidSyscall(f"a tool makes only storage and memory syscalls on its caller's behalf, "
                                 f"not {call.kind}", field="kind",
                                 hint=f"allowed: {', '.join(KINDS)}; the agent makes other syscalls itself")
        proc = self.processes.check_live(call.pid) if call.pid else None
        detail = {"tool_call": p.id, "tool": p.tool, "op": call.op.value}   # type: ignore[attr-defined]
        # no calls in flight: it counts as its tool call, which holds the slot
        await self.guard.admit(call, proc, self.processes.procs, (), None, detail=detail, in_tool=p)
        if isinstance(call, StorageSyscall):
            return await self.files.execute(call, self.clock.now())
        return await self.memory.execute(call, self.clock.now())   # type: ignore[arg-type]
