"""Confirmation of irreversible actions (`access.confirm`): an agent's call that
`Guard.admit` marks irreversible is held here, journaled as waiting_confirmation, until
its principal (or an admin) approves it, denies it, or `access.confirm_timeout_s` passes.

The kernel owns the call's states: it hands a held ticket to `hold`, and gets it back
through `approve` (queue it, once its record is durable) or `refuse` (end it failed).
Every decision is audited.

Invariant: a held ticket leaves `awaiting` exactly once, by whichever comes first of a
decision, the timeout and `release` (a cancel, a kill, shutdown)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

import anyio
import anyio.abc

from aios import access
from aios.access.guard import Guard
from aios.errors import AiosError, NotFound, PermissionDenied
from aios.scheduler import Ticket
from aios.syscall import Syscall, is_id_prefix, one_by_prefix


class Confirmations:
    def __init__(self, guard: Guard, timeout_s: float, *, approve: Callable[[Ticket], Awaitable[None]],
                 refuse: Callable[[Ticket, AiosError], None]):
        self.guard, self.timeout_s = guard, timeout_s
        self._approve, self._refuse = approve, refuse
        self.awaiting: dict[str, Ticket] = {}   # held calls, by id, oldest first

    def hold(self, ticket: Ticket, tg: anyio.abc.TaskGroup) -> None:
        self.awaiting[ticket.id] = ticket
        tg.start_soon(self._expire, ticket)
        call = ticket.call
        self.guard.audit_soon(call.principal, "confirmation.request", ticket.id, "info",
                              {"pid": call.pid, "kind": call.kind.value, "payload": call.payload()})

    def release(self, ticket: Ticket) -> bool:
        """Takes a held call out without a decision (its caller ends it); whether it was held."""
        return self.awaiting.pop(ticket.id, None) is not None

    def pending(self, principal: str | None = None) -> list[Syscall]:
        """Calls held for a yes or no, oldest first (`principal`: only its own)."""
        return [t.call for t in self.awaiting.values() if principal is None or t.call.principal == principal]

    async def confirm(self, call_id: str, *, approve: bool, by: str, is_admin: bool = False) -> Syscall:
        """Approves (the call is queued) or denies (it fails with PermissionDenied) a held
        call, named by its id or any unique prefix of it. The call's own principal or an
        admin may; anyone else gets NotFound."""
        mine = {i: t for i, t in self.awaiting.items() if t.call.principal == by or is_admin}
        if call_id not in mine and is_id_prefix(call_id):   # any unique prefix, as git takes ids
            call_id = one_by_prefix(call_id, mine, "held syscall") or call_id
        ticket = mine.get(call_id)
        if ticket is None:
            raise NotFound(f"no syscall {call_id!r} waiting for confirmation", field="id",
                           hint="aios confirmations lists them")
        del self.awaiting[call_id]
        now = self.guard.clock.now()
        pid = ticket.call.pid
        await self.guard.db.run(lambda e: access.audit(e, now, by, "confirmation.approve" if approve else
                                                       "confirmation.deny", call_id, "allow" if approve else "deny",
                                                       {"pid": pid}))
        if approve:
            await self._approve(ticket)
            return ticket.call
        self._refuse(ticket, PermissionDenied(f"denied by {by}", field="id", hint="the action was not confirmed"))
        return await ticket.wait()

    async def _expire(self, ticket: Ticket) -> None:
        with anyio.move_on_after(self.timeout_s):
            await ticket.done.wait()
            return
        if self.awaiting.pop(ticket.id, None) is None:
            return   # decided meanwhile
        self.guard.audit_soon(ticket.call.principal, "confirmation.timeout", ticket.id, "deny",
                              {"timeout_s": self.timeout_s})
        self._refuse(ticket, PermissionDenied(f"not confirmed within {self.timeout_s:g} s", field="id",
                                              hint="aios approve ID confirms it in time; access.confirm_timeout_s"))

    def __iter__(self) -> Iterator[Ticket]:
        """The held calls, as they are now: a caller may release them while it goes through."""
        return iter(list(self.awaiting.values()))
