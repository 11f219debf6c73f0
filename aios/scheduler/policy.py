"""The policy interface and the simplest policy, FIFO.

A policy owns the order of one resource's queue; the Resource owns the slots. A policy
may also name a running call to preempt (`victim`) or ask a running generation to yield
its slot at a token boundary (`should_yield`)."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from aios.scheduler.ticket import Ticket


class Policy:
    name = "base"

    def push(self, ticket: Ticket, now: float) -> None:
        raise NotImplementedError

    def pop(self, now: float) -> Ticket | None:
        raise NotImplementedError

    def remove(self, ticket: Ticket) -> bool:
        raise NotImplementedError

    def drain(self) -> list[Ticket]:
        """Empties the queue, returning its tickets in arrival order (for a policy switch)."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def victim(self, arrival: Ticket, running: Iterable[Ticket], now: float) -> Ticket | None:
        """A running call to preempt in favour of `arrival`, when no slot is free."""
        return None

    def should_yield(self, ticket: Ticket, now: float) -> bool:
        """Asked after each generated token of a running, preemptible call."""
        return False

    def on_tokens(self, ticket: Ticket, num_in: int, num_out: int) -> None:
        """Service accounting: prompt tokens when a call starts, output tokens as they come."""

    def finished(self, ticket: Ticket) -> None:
        """The call left the resource for good (terminal)."""


class FifoPolicy(Policy):
    """First come, first served; never preempts."""
    name = "fifo"

    def __init__(self) -> None:
        self._queue: deque[Ticket] = deque()

    def push(self, ticket: Ticket, now: float) -> None:
        if self._queue and ticket.seq < self._queue[-1].seq:
            # a call coming back (a policy switch, a resumed process) keeps its place
            idx = next(i for i, t in enumerate(self._queue) if t.seq > ticket.seq)
            self._queue.insert(idx, ticket)
        else:
            self._queue.append(ticket)

    def pop(self, now: float) -> Ticket | None:
        return self._queue.popleft() if self._queue else None

    def remove(self, ticket: Ticket) -> bool:
        try:
            self._queue.remove(ticket)
        except ValueError:
            return False
        return True

    def drain(self) -> list[Ticket]:
        tickets = list(self._queue)
        self._queue.clear()
        return tickets

    def __len__(self) -> int:
        return len(self._queue)
