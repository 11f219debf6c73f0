"""Round-robin: FIFO order, and a running generation yields its slot after a time slice
of `slice_tokens` generated tokens whenever another call is waiting. It goes to the tail."""
from __future__ import annotations

from aios.scheduler.policy import FifoPolicy
from aios.scheduler.ticket import Ticket


class RoundRobinPolicy(FifoPolicy):
    name = "rr"

    def __init__(self, slice_tokens: int):
        super().__init__()
        self.slice_tokens = slice_tokens

    def push(self, ticket: Ticket, now: float) -> None:
        self._queue.append(ticket)   # a call back from preemption waits behind everyone

    def drain(self) -> list[Ticket]:
        return sorted(super().drain(), key=lambda t: t.seq)

    def should_yield(self, ticket: Ticket, now: float) -> bool:
        return ticket.num_slice_tokens >= self.slice_tokens and bool(self._queue)
