"""Priority with aging: a waiting call's effective priority grows by `aging_per_s` levels
per second since it was created, so no call starves. A more urgent arrival preempts the
least urgent running generation when no slot is free (if the policy is preemptive).

Because every call ages at the same rate, the order of two calls never changes with time:
effective(now) = priority + aging * (now - created), so sorting by priority - aging *
created is the order at any instant, and a heap keeps it."""
from __future__ import annotations

import heapq
from collections.abc import Iterable

from aios.scheduler.policy import Policy
from aios.scheduler.ticket import Ticket


class PriorityPolicy(Policy):
    name = "priority"

    def __init__(self, aging_per_s: float, is_preemptive: bool = True):
        self.aging_per_s = aging_per_s
        self.is_preemptive = is_preemptive
        self._heap: list[tuple[float, int, Ticket]] = []
        self._removed: set[Ticket] = set()   # lazy deletion from the heap

    def effective(self, ticket: Ticket, now: float) -> float:
        return ticket.call.priority + self.aging_per_s * (now - ticket.call.created)

    def _key(self, ticket: Ticket) -> float:
        return -(ticket.call.priority - self.aging_per_s * ticket.call.created)

    def push(self, ticket: Ticket, now: float) -> None:
        self._removed.discard(ticket)
        heapq.heappush(self._heap, (self._key(ticket), ticket.seq, ticket))

    def pop(self, now: float) -> Ticket | None:
        while self._heap:
            _, _, ticket = heapq.heappop(self._heap)
            if ticket in self._removed:
                self._removed.discard(ticket)
                continue
            return ticket
        return None

    def remove(self, ticket: Ticket) -> bool:
        if any(t is ticket for _, _, t in self._heap) and ticket not in self._removed:
            self._removed.add(ticket)
            return True
        return False

    def drain(self) -> list[Ticket]:
        tickets = sorted((t for _, _, t in self._heap if t not in self._removed), key=lambda t: t.seq)
        self._heap.clear()
        self._removed.clear()
        return tickets

    def __len__(self) -> int:
        return len(self._heap) - len(self._removed)

    def victim(self, arrival: Ticket, running: Iterable[Ticket], now: float) -> Ticket | None:
        if not self.is_preemptive:
            return None
        candidates = [t for t in running if t.is_preemptible and not t.is_preempt_requested]
        if not candidates:
            return None
        weakest = min(candidates, key=lambda t: (self.effective(t, now), -t.seq))
        return weakest if self.effective(arrival, now) > self.effective(weakest, now) else None
