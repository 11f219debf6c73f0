"""Fair share by a virtual token counter per agent (VTC, the idea FastSwitch builds on).

Each agent (pid) has a counter of the service it received, in weighted tokens: prompt
tokens when a call starts, generated tokens as they are produced. The next call served
belongs to the waiting agent with the smallest counter, FIFO within an agent. An agent
that becomes active again is lifted to the smallest counter among the active agents, so
idle time is not banked as credit to burst with later."""
from __future__ import annotations

from collections import defaultdict, deque

from aios.scheduler.policy import Policy
from aios.scheduler.ticket import Ticket


class FairSharePolicy(Policy):
    name = "fair"

    def __init__(self, input_weight: float = 1.0, output_weight: float = 2.0):
        self.input_weight = input_weight
        self.output_weight = output_weight
        self.counters: defaultdict[int, float] = defaultdict(float)
        self._queues: dict[int, deque[Ticket]] = {}      # pid -> its waiting calls
        self._live: set[Ticket] = set()                   # queued or running, not finished
        self._num_live: defaultdict[int, int] = defaultdict(int)

    def push(self, ticket: Ticket, now: float) -> None:
        pid = ticket.pid
        if ticket not in self._live:
            if self._num_live[pid] == 0:
                active = [self.counters[p] for p, n in self._num_live.items() if n > 0]
                if active:
                    self.counters[pid] = max(self.counters[pid], min(active))
            self._live.add(ticket)
            self._num_live[pid] += 1
        queue = self._queues.setdefault(pid, deque())
        if queue and ticket.seq < queue[-1].seq:
            idx = next(i for i, t in enumerate(queue) if t.seq > ticket.seq)
            queue.insert(idx, ticket)
        else:
            queue.append(ticket)

    def pop(self, now: float) -> Ticket | None:
        if not self._queues:
            return None
        pid = min(self._queues, key=lambda p: (self.counters[p], self._queues[p][0].seq))
        queue = self._queues[pid]
        ticket = queue.popleft()
        if not queue:
            del self._queues[pid]
        return ticket

    def remove(self, ticket: Ticket) -> bool:
        queue = self._queues.get(ticket.pid)
        if queue is None or ticket not in queue:
            return False
        queue.remove(ticket)
        if not queue:
            del self._queues[ticket.pid]
        self.finished(ticket)
        return True

    def drain(self) -> list[Ticket]:
        tickets = sorted((t for q in self._queues.values() for t in q), key=lambda t: t.seq)
        self._queues.clear()
        return tickets

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def on_tokens(self, ticket: Ticket, num_in: int, num_out: int) -> None:
        self.counters[ticket.pid] += self.input_weight * num_in + self.output_weight * num_out

    def finished(self, ticket: Ticket) -> None:
        if ticket in self._live:
            self._live.discard(ticket)
            self._num_live[ticket.pid] -= 1
