"""Scheduling: one queue per resource (an LLM model, a tool, memory, storage), each with a
number of slots and a pluggable policy that orders its queue.

Invariants: a resource never runs more calls than it has slots, and never leaves a slot
idle while a runnable call waits (dispatch runs on every arrival and every release).
Calls of a suspended process are held aside and are not runnable until it resumes."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import NamedTuple

from aios.config import SchedulerSettings
from aios.errors import ConfigError
from aios.scheduler.fair import FairSharePolicy
from aios.scheduler.policy import FifoPolicy, Policy
from aios.scheduler.priority import PriorityPolicy
from aios.scheduler.rr import RoundRobinPolicy
from aios.scheduler.ticket import Ticket

__all__ = ["POLICIES", "FairSharePolicy", "FifoPolicy", "Policy", "PriorityPolicy", "Resource",
           "ResourceStats", "RoundRobinPolicy", "Scheduler", "Ticket", "make_policy"]

POLICIES: dict[str, Callable[[SchedulerSettings], Policy]] = {
    "fifo": lambda s: FifoPolicy(),
    "rr": lambda s: RoundRobinPolicy(s.rr_slice_tokens),
    "priority": lambda s: PriorityPolicy(s.aging_per_s, s.is_preemptive),
    "fair": lambda s: FairSharePolicy(s.fair_input_weight, s.fair_output_weight),
}


def make_policy(settings: SchedulerSettings, name: str | None = None) -> Policy:
    name = name or settings.policy
    try:
        return POLICIES[name](settings)
    except KeyError:
        raise ConfigError(f"unknown scheduling policy {name!r}", field="scheduler.policy",
                          hint=f"one of: {', '.join(POLICIES)}") from None


class ResourceStats(NamedTuple):
    name: str
    policy: str
    num_slots: int
    num_running: int
    num_queued: int
    num_held: int


class Resource:
    """One queue and its slots. `start(ticket)` is called with the slot already taken; the
    kernel must call `release` (or `requeue`) for that ticket on every path."""

    def __init__(self, name: str, num_slots: int, policy: Policy, start: Callable[[Ticket], None],
                 is_held: Callable[[int], bool]):
        self.name = name
        self.num_slots = num_slots
        self.policy = policy
        self._start = start
        self._is_held = is_held
        self.running: set[Ticket] = set()
        self.held: defaultdict[int, list[Ticket]] = defaultdict(list)   # pid -> calls of a suspended process

    def submit(self, ticket: Ticket, now: float) -> None:
        if self._is_held(ticket.pid):
            self.held[ticket.pid].append(ticket)
            return
        self.policy.push(ticket, now)
        if len(self.running) < self.num_slots:
            self.dispatch(now)
        else:
            victim = self.policy.victim(ticket, self.running, now)
            if victim is not None:
                victim.is_preempt_requested = True

    def dispatch(self, now: float) -> None:
        while len(self.running) < self.num_slots:
            ticket = self.policy.pop(now)
            if ticket is None:
                return
            self.running.add(ticket)
            ticket.num_slice_tokens = 0
            ticket.is_preempt_requested = False
            self._start(ticket)

    def release(self, ticket: Ticket, now: float) -> None:
        """The call is over: its slot goes to the next runnable call."""
        self.running.discard(ticket)
        self.policy.finished(ticket)
        self.dispatch(now)

    def requeue(self, ticket: Ticket, now: float) -> None:
        """A preempted call gives its slot back and waits again."""
        self.running.discard(ticket)
        self.submit(ticket, now)
        self.dispatch(now)

    def remove(self, ticket: Ticket) -> bool:
        """Takes a waiting call out of the queue (a cancel); False if it is not waiting."""
        held = self.held.get(ticket.pid)
        if held and ticket in held:
            held.remove(ticket)
        elif not self.policy.remove(ticket):
            return False
        self.policy.finished(ticket)   # a held call still counts its agent as active (fair share)
        return True

    def set_policy(self, policy: Policy, now: float) -> None:
        old, self.policy = self.policy, policy
        for ticket in old.drain():
            policy.push(ticket, now)
        self.dispatch(now)

    @property
    def stats(self) -> ResourceStats:
        return ResourceStats(self.name, self.policy.name, self.num_slots, len(self.running),
                             len(self.policy), sum(len(v) for v in self.held.values()))


class Scheduler:
    """All resources of one kernel, the current policy, and which processes are suspended."""

    def __init__(self, settings: SchedulerSettings, start: Callable[[Ticket], None],
                 clock_now: Callable[[], float]):
        self.settings = settings
        self.policy_name = settings.policy
        self._start = start
        self._now = clock_now
        self.resources: dict[str, Resource] = {}
        self.suspended_pids: set[int] = set()

    def resource(self, name: str, num_slots: int) -> Resource:
        res = self.resources.get(name)
        if res is None:
            res = Resource(name, num_slots, make_policy(self.settings, self.policy_name), self._start,
                           self.suspended_pids.__contains__)
            self.resources[name] = res
        return res

    def set_policy(self, name: str) -> None:
        """Switches every queue to a new policy on a running kernel; waiting calls keep
        their arrival order and move over, running calls finish under the new policy."""
        make_policy(self.settings, name)   # refuses an unknown name before anything changes
        self.policy_name = name
        now = self._now()
        for res in self.resources.values():
            res.set_policy(make_policy(self.settings, name), now)

    def suspend(self, pid: int) -> None:
        self.suspended_pids.add(pid)
        now = self._now()
        for res in self.resources.values():
            keep = []
            for ticket in res.policy.drain():
                (res.held[pid].append(ticket) if ticket.pid == pid else keep.append(ticket))
            for ticket in keep:
                res.policy.push(ticket, now)

    def resume(self, pid: int) -> None:
        self.suspended_pids.discard(pid)
        now = self._now()
        for res in self.resources.values():
            for ticket in res.held.pop(pid, []):
                res.policy.push(ticket, now)
            res.dispatch(now)

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.resources.values())
