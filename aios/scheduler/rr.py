"""Round-robin: FIFO order, and a running generation yields its slot after a time slice
of `slice_tokens` generated tokens whenever another call is waiting. It goes to the tail."""
from __future__ import annotations

from collections import deque

from aios.scheduler.policy import Policy
from aios.scheduler.ticket import Ticket


class RoundRobinPolicy(Policy):
    name = "rr"

    def __init__(self, slice_tokens: int):
        self.slice_tokens = slice_tokens
        self._queue: deque[Ticket] = deque()

    def push(self, ticket: Ticket, now: float) -> None:
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
        tickets = sorted(self._queue, key=lambda t: t.seq)
        self._queue.clear()
        return tickets

    def __len__(self) -> int:
        return len(self._queue)

    def should_yield(self, ticket: Ticket, now: float) -> bool:
        return ticket.num_slice_tokens >= self.slice_tokens and bool(self._queue)
