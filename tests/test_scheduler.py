"""aios.scheduler: each policy's order on a known input (at the policy level and through a
Resource with slots), aging, preemption victims, fair share, the slot invariants checked
continuously in a live kernel, policy switches and suspended processes."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import anyio
import pytest

from aios.config import SchedulerSettings
from aios.errors import Cancelled, ConfigError
from aios.events import EventKind
from aios.kernel import Kernel
from aios.llm import count_tokens
from aios.scheduler import (FairSharePolicy, FifoPolicy, Policy, PriorityPolicy, Resource,
                            RoundRobinPolicy, Scheduler, Ticket, make_policy)
from aios.scheduler.ticket import TimeLimits
from aios.syscall import CallState, LLMSyscall
from tests.conftest import llm


def received(sub: Any) -> list[Any]:
    """The events a bus subscription holds now."""
    events = []
    while True:
        try:
            events.append(sub.receive_nowait())
        except anyio.WouldBlock:
            return events


def hw(num_slots: int) -> dict[str, Any]:
    """Settings overrides for one hardware-model backend with `num_slots` slots."""
    return {"backends": [{"kind": "hardware", "num_slots": num_slots}]}


def ticket(seq: int, pid: int = 1, priority: int = 0, created: float = 0.0) -> Ticket:
    call = LLMSyscall(model="m", messages=[{"role": "user", "content": f"call {seq}"}],
                      pid=pid, priority=priority, created=created)
    return Ticket(call, seq)


def pop_all(policy: Policy, now: float = 0.0) -> list[int]:
    order = []
    while (t := policy.pop(now)) is not None:
        order.append(t.seq)
    return order


def is_conserving(res: Resource) -> bool:
    """Both slot invariants: never over the slots, never a free slot while a call waits."""
    return len(res.running) <= res.num_slots and (len(res.running) == res.num_slots or len(res.policy) == 0)


class Bench:
    """A Resource with a recording start callback, checked after every operation."""

    def __init__(self, policy: Policy, num_slots: int, held_pids: set[int] | None = None):
        self.started: list[int] = []
        self.held_pids = held_pids if held_pids is not None else set()
        self.res = Resource("llm:m", num_slots, policy, self._start, self.held_pids.__contains__)

    def _start(self, t: Ticket) -> None:
        assert t in self.res.running and len(self.res.running) <= self.res.num_slots
        t.is_preemptible = True   # as the kernel does for a generation on a continuable backend
        self.started.append(t.seq)

    def do(self, op: str, *args: Any, now: float = 0.0) -> None:
        getattr(self.res, op)(*args, now)
        assert is_conserving(self.res), (op, self.res.stats)


# ---- FIFO

def test_fifo_order():
    p = FifoPolicy()
    for seq in (0, 1, 2, 3):
        p.push(ticket(seq), 0.0)
    assert len(p) == 4 and pop_all(p) == [0, 1, 2, 3]


def test_fifo_returning_call_keeps_its_place():
    p = FifoPolicy()
    for seq in (0, 2, 3):
        p.push(ticket(seq), 0.0)
    p.push(ticket(1), 0.0)   # back from a suspended process or a policy switch
    assert pop_all(p) == [0, 1, 2, 3]


def test_fifo_remove_and_drain():
    p = FifoPolicy()
    ts = [ticket(i) for i in range(4)]
    for t in ts:
        p.push(t, 0.0)
    assert p.remove(ts[1]) and not p.remove(ts[1])
    assert [t.seq for t in p.drain()] == [0, 2, 3] and len(p) == 0


def test_fifo_through_two_slots():
    b = Bench(FifoPolicy(), num_slots=2)
    ts = [ticket(i) for i in range(5)]
    for t in ts:
        b.do("submit", t)
    assert b.started == [0, 1] and b.res.stats.num_queued == 3
    b.do("release", ts[1])
    assert b.started == [0, 1, 2]
    b.do("release", ts[0])
    b.do("release", ts[2])
    assert b.started == [0, 1, 2, 3, 4] and b.res.stats.num_queued == 0


# ---- round-robin

def test_rr_yields_after_slice_only_when_others_wait():
    p = RoundRobinPolicy(slice_tokens=3)
    a, b = ticket(0), ticket(1)
    a.num_slice_tokens = 10
    assert not p.should_yield(a, 0.0)        # nobody waits: keep going past the slice
    p.push(b, 0.0)
    a.num_slice_tokens = 2
    assert not p.should_yield(a, 0.0)        # slice not used up
    a.num_slice_tokens = 3
    assert p.should_yield(a, 0.0)


def test_rr_through_one_slot_goes_to_the_tail():
    b = Bench(RoundRobinPolicy(slice_tokens=3), num_slots=1)
    a, c, d = ticket(0), ticket(1), ticket(2)
    for t in (a, c, d):
        b.do("submit", t)
    assert b.started == [0]
    a.num_slice_tokens = 3
    assert b.res.policy.should_yield(a, 0.0)
    b.do("requeue", a)                        # a preempted: c runs, a waits behind d
    assert b.started == [0, 1] and c.num_slice_tokens == 0
    c.num_slice_tokens = 3
    b.do("requeue", c)
    assert b.started == [0, 1, 2]
    b.do("release", d)
    assert b.started == [0, 1, 2, 0]          # a came back after d, before c
    assert a.num_slice_tokens == 0            # a fresh slice on every start
    b.do("release", a)
    assert b.started == [0, 1, 2, 0, 1]
    c.num_slice_tokens = 50
    assert not b.res.policy.should_yield(c, 0.0)   # alone: no reason to yield


# ---- priority

def test_priority_highest_first_ties_by_arrival():
    p = PriorityPolicy(aging_per_s=0.0)
    for seq, prio in enumerate([5, 9, 5, 1, 9, 0]):
        p.push(ticket(seq, priority=prio), 0.0)
    assert pop_all(p) == [1, 4, 0, 2, 3, 5]


def test_priority_remove_is_lazy_but_exact():
    p = PriorityPolicy(aging_per_s=0.0)
    ts = [ticket(i, priority=i) for i in range(4)]
    for t in ts:
        p.push(t, 0.0)
    assert p.remove(ts[3]) and not p.remove(ts[3])
    assert len(p) == 3
    assert [t.seq for t in p.drain()] == [0, 1, 2] and len(p) == 0


def test_priority_aging_effective_value():
    p = PriorityPolicy(aging_per_s=0.5)
    t = ticket(0, priority=4, created=10.0)
    assert p.effective(t, 10.0) == 4 and p.effective(t, 16.0) == 7


@pytest.mark.parametrize("aging", [1.0, 0.0])
def test_priority_aging_stops_starvation(aging):
    """A priority-0 call waits while a priority-10 call arrives every second; each pop
    serves one. With aging it is served once it has waited 10 s; without, never."""
    p = PriorityPolicy(aging_per_s=aging)
    low = ticket(0, priority=0, created=0.0)
    p.push(low, 0.0)
    served_at = None
    for t in range(1, 100):
        p.push(ticket(t, priority=10, created=float(t)), float(t))
        if p.pop(float(t)) is low:
            served_at = t
            break
    if aging:
        assert served_at is not None and served_at <= 11
    else:
        assert served_at is None


def test_priority_victim_is_the_least_urgent_preemptible():
    p = PriorityPolicy(aging_per_s=0.0)
    running = [ticket(0, priority=5), ticket(1, priority=2), ticket(2, priority=2), ticket(3, priority=1)]
    for t in running:
        t.is_preemptible = True
    running[3].is_preemptible = False                     # not a resumable generation
    arrival = ticket(9, priority=8)
    assert p.victim(arrival, running, 0.0) is running[2]   # least urgent; of equals, the newest
    running[2].is_preempt_requested = True                  # already asked to go
    assert p.victim(arrival, running, 0.0) is running[1]
    assert p.victim(ticket(10, priority=2), running, 0.0) is None   # not more urgent than any
    assert PriorityPolicy(0.0, is_preemptive=False).victim(arrival, running, 0.0) is None


def test_priority_preempts_through_a_resource():
    b = Bench(PriorityPolicy(aging_per_s=0.0), num_slots=1)
    low, high = ticket(0, priority=1), ticket(1, priority=7)
    b.do("submit", low)
    b.do("submit", high)
    assert low.is_preempt_requested and b.started == [0]
    b.do("requeue", low)                   # the kernel does this at the next token boundary
    assert b.started == [0, 1] and not high.is_preempt_requested
    b.do("release", high)
    assert b.started == [0, 1, 0]


# ---- fair share (virtual token counter)

def test_fair_serves_the_least_served_agent_fifo_within_it():
    p = FairSharePolicy(input_weight=1.0, output_weight=2.0)
    a1, a2, b1, b2 = ticket(0, pid=1), ticket(1, pid=1), ticket(2, pid=2), ticket(3, pid=2)
    for t in (a1, a2, b1, b2):
        p.push(t, 0.0)
    assert p.pop(0.0) is a1                        # tie at 0: earliest arrival
    p.on_tokens(a1, 10, 0)
    p.on_tokens(a1, 0, 5)
    assert p.counters[1] == 20.0                   # 10 prompt + 2 * 5 generated
    assert p.pop(0.0) is b1                        # pid 2 is behind
    p.on_tokens(b1, 30, 0)
    assert p.pop(0.0) is a2 and p.pop(0.0) is b2 and p.pop(0.0) is None


def test_fair_lifts_a_newly_active_agent_to_the_min_active_counter():
    p = FairSharePolicy(1.0, 1.0)
    a, b = ticket(0, pid=1), ticket(1, pid=2)
    p.push(a, 0.0)
    p.push(b, 0.0)
    p.on_tokens(a, 100, 0)
    p.on_tokens(b, 40, 0)
    c = ticket(2, pid=3)
    p.push(c, 0.0)
    assert p.counters[3] == 40.0                   # no credit for having been idle
    # an agent that went idle and comes back is lifted too, never lowered
    p.pop(0.0), p.pop(0.0), p.pop(0.0)
    for t in (a, b, c):
        p.finished(t)
    p.on_tokens(ticket(3, pid=4), 500, 0)
    p.push(ticket(4, pid=1), 0.0)                   # pid 1 alone: nothing to lift to
    assert p.counters[1] == 100.0
    p.push(ticket(5, pid=2), 0.0)
    assert p.counters[2] == 100.0                   # lifted from 40 to pid 1's 100
    p.push(ticket(6, pid=4), 0.0)
    assert p.counters[4] == 500.0                   # already above: kept


def test_fair_cancelled_held_call_leaves_its_agent_inactive():
    """A call of a suspended process cancelled while held must stop counting its agent as
    active; otherwise its stale counter is what newcomers are lifted to."""
    started: list[Ticket] = []
    sched = Scheduler(SchedulerSettings(policy="fair", fair_input_weight=1.0, fair_output_weight=1.0),
                      started.append, lambda: 0.0)
    res = sched.resource("llm:m", 1)
    b = ticket(0, pid=2)
    a = ticket(1, pid=1)
    res.submit(b, 0.0)                 # runs
    res.submit(a, 0.0)                 # waits, lifted to pid 2's counter (0)
    res.policy.on_tokens(b, 200, 0)
    sched.suspend(1)
    assert res.stats.num_held == 1 and res.remove(a)
    res.submit(ticket(2, pid=3), 0.0)
    assert res.policy.counters[3] == 200.0   # lifted to the one active agent, pid 2


def test_fair_through_a_resource():
    b = Bench(FairSharePolicy(1.0, 2.0), num_slots=1)
    heavy = [ticket(i, pid=1) for i in range(3)]
    light = [ticket(10 + i, pid=2) for i in range(3)]
    for t in heavy + light:
        b.do("submit", t)
    for _ in range(len(heavy + light)):
        running = next(iter(b.res.running))
        b.res.policy.on_tokens(running, 0, 50 if running.pid == 1 else 5)
        b.do("release", running)
    assert b.started == [0, 10, 11, 12, 1, 2]   # after one heavy call, the light agent catches up


# ---- any policy through a resource: the slot invariants under random operations

@pytest.mark.parametrize("name", ["fifo", "rr", "priority", "fair"])
@pytest.mark.parametrize("num_slots", [1, 3])
def test_random_operations_keep_the_slot_invariants(name, num_slots):
    rng = random.Random(f"{name}-{num_slots}")
    settings = SchedulerSettings(rr_slice_tokens=2, aging_per_s=0.5)
    b = Bench(make_policy(settings, name), num_slots)
    tickets: list[Ticket] = []
    gone: dict[int, int] = {}   # seq of a released or removed call -> len(b.started) then
    for step in range(400):
        now = step * 0.1
        op = rng.choice(["submit", "submit", "release", "requeue", "remove", "switch"])
        running = list(b.res.running)
        waiting = [t for t in tickets if t not in b.res.running and t.seq not in gone]
        if op == "submit" or not tickets:
            t = ticket(len(tickets), pid=rng.randint(1, 4), priority=rng.randint(0, 9), created=now)
            tickets.append(t)
            b.do("submit", t, now=now)
        elif op == "release" and running:
            t = rng.choice(running)
            b.do("release", t, now=now)
            gone[t.seq] = len(b.started)
        elif op == "requeue" and running:
            b.do("requeue", rng.choice(running), now=now)
        elif op == "remove" and waiting:
            t = rng.choice(waiting)
            assert b.res.remove(t) and is_conserving(b.res)
            gone[t.seq] = len(b.started)
        elif op == "switch":
            b.do("set_policy", make_policy(settings, rng.choice(["fifo", "rr", "priority", "fair"])), now=now)
    while b.res.running:   # drain: every waiting call gets a slot in the end
        t = next(iter(b.res.running))
        b.do("release", t, now=1e3)
        gone[t.seq] = len(b.started)
    assert len(b.res.policy) == 0 and set(gone) == {t.seq for t in tickets}
    for seq, at in gone.items():   # a call that left never runs again
        assert seq not in b.started[at:]


# ---- live kernels

class SlotWatch:
    """Checks both slot invariants of every resource after every outermost scheduler
    operation (submit, dispatch, release, requeue, remove, policy switch, suspend, resume)."""

    def __init__(self) -> None:
        self.num_checks = 0
        self.violations: list[tuple[str, Any]] = []
        self.max_running: defaultdict[str, int] = defaultdict(int)
        self._depth = 0

    def check(self, op: str, resources: list[Resource]) -> None:
        for res in resources:
            self.num_checks += 1
            self.max_running[res.name] = max(self.max_running[res.name], len(res.running))
            if not is_conserving(res):
                self.violations.append((op, res.stats))

    def wrap(self, fn: Any, op: str, resources_of: Any) -> Any:
        def wrapped(obj: Any, *args: Any, **kw: Any) -> Any:
            self._depth += 1
            try:
                return fn(obj, *args, **kw)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.check(op, resources_of(obj))
        return wrapped


@pytest.fixture
def slot_watch(monkeypatch: pytest.MonkeyPatch) -> SlotWatch:
    watch = SlotWatch()
    for op in ("submit", "dispatch", "release", "requeue", "remove", "set_policy"):
        monkeypatch.setattr(Resource, op, watch.wrap(getattr(Resource, op), op, lambda r: [r]))
    for op in ("suspend", "resume", "set_policy"):
        monkeypatch.setattr(Scheduler, op, watch.wrap(getattr(Scheduler, op), op, lambda s: list(s)))
    return watch


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["fifo", "rr", "priority", "fair"])
async def test_kernel_never_exceeds_slots_and_never_idles(make_settings, slot_watch, policy):
    settings = make_settings(**{"scheduler.policy": policy, "scheduler.rr_slice_tokens": 3}, **hw(3))
    async with Kernel(settings) as k:
        pids = [(await k.spawn(f"agent{i}")).pid for i in range(3)]
        rng = random.Random(policy)
        with anyio.fail_after(30):
            tickets = [await k.submit(llm(f"q{i}", rng.randint(1, 12), priority=rng.randint(0, 20)),
                                      pid=pids[i % 3]) for i in range(24)]
            calls = [await t.wait() for t in tickets]
        backend = k.router.backends[0]
        assert backend.num_running == 0 and k.scheduler.resources["llm:sim-llama-3-8b"].stats.num_running == 0
    assert all(c.state is CallState.DONE for c in calls)
    assert slot_watch.num_checks >= 2 * len(calls) and slot_watch.violations == []   # a submit and a release each
    assert slot_watch.max_running["llm:sim-llama-3-8b"] == 3   # the limit was reached, not passed


@pytest.mark.anyio
async def test_priority_aging_end_to_end(make_settings):
    """High-priority calls arrive faster than one slot serves them; the priority-0 call
    still completes, ahead of high-priority calls that were already waiting."""
    settings = make_settings(**{"scheduler.policy": "priority", "scheduler.aging_per_s": 5.0}, **hw(1))
    async with Kernel(settings) as k:
        highs = [await k.submit(llm("high first", 8, priority=10))]   # holds the slot
        low = await k.submit(llm("low", 8, priority=0))

        async def feed() -> None:
            while not low.done.is_set():
                assert len(highs) < 500, "the low-priority call starved"
                highs.append(await k.submit(llm(f"high {len(highs)}", 8, priority=10)))
                await k.clock.sleep(0.1)

        with anyio.fail_after(60):
            await feed()
            low_call = await low.wait()
            high_calls = [await t.wait() for t in highs]
    assert low_call.state is CallState.DONE
    served_before = [c for c in high_calls if c.started < low_call.started]
    overtaken = [c for c in high_calls if c.created < low_call.started < c.started]
    assert len(served_before) >= 10     # high priority did come first for a while ...
    assert overtaken                     # ... but the aged low call beat high ones still waiting


async def _backlog_service(settings, *, num_heavy: int = 12, num_light: int = 100) -> dict[str, float]:
    """A heavy agent (64-token calls) and a light one (8-token calls), both backlogged;
    returns each one's weighted service (VTC weights) while both still had calls waiting."""
    async with Kernel(settings) as k:
        heavy, light = (await k.spawn("heavy")).pid, (await k.spawn("light")).pid
        sub = k.bus.subscribe({EventKind.CALL_TOKEN}, max_buffer=100_000)
        with anyio.fail_after(60):
            tickets = []
            for i in range(max(num_heavy, num_light)):
                if i < num_heavy:
                    tickets.append(await k.submit(llm("x", 64), pid=heavy))
                if i < num_light:
                    tickets.append(await k.submit(llm("x", 8), pid=light))
            t_start = k.clock.now()
            calls = [await t.wait() for t in tickets]
        events = received(sub)
        assert not sub.is_lagging
    assert all(c.state is CallState.DONE for c in calls)
    t_end = min(max(c.started for c in calls if c.pid == pid) for pid in (heavy, light))
    s = settings.scheduler
    service = {pid: 0.0 for pid in (heavy, light)}
    for c in calls:
        if t_start <= c.started <= t_end:
            service[c.pid] += s.fair_input_weight * count_tokens(c.messages)
    for e in events:
        if t_start <= e.at <= t_end:
            service[e.pid] += s.fair_output_weight
    return {"heavy": service[heavy], "light": service[light]}


@pytest.mark.anyio
async def test_fair_share_gives_heavy_and_light_agents_equal_service(make_settings, tmp_path):
    fair = await _backlog_service(make_settings(**{"scheduler.policy": "fair"}, **hw(2)))
    heavy_call = count_tokens([{"role": "user", "content": "x"}]) + 2 * 64
    assert fair["heavy"] > 5 * heavy_call and fair["light"] > 5 * heavy_call
    assert abs(fair["heavy"] - fair["light"]) <= 2 * heavy_call   # VTC's bound: two calls' worth
    # the same load under FIFO (arrival order alternates) favours the heavy agent by far
    fifo = await _backlog_service(make_settings(**{"scheduler.policy": "fifo"}, **hw(2),
                                                  home=str(tmp_path / "fifo")))
    assert fifo["heavy"] > 4 * fifo["light"]


@pytest.mark.anyio
@pytest.mark.parametrize("to", ["fair", "rr", "priority", "fifo"])
async def test_switching_policy_keeps_waiting_calls(make_settings, slot_watch, to):
    settings = make_settings(**{"scheduler.policy": "fifo"}, **hw(1))
    async with Kernel(settings) as k:
        sub = k.bus.subscribe({EventKind.POLICY})
        pid = (await k.spawn("a")).pid
        with anyio.fail_after(30):
            tickets = [await k.submit(llm(f"q{i}", 6, priority=i % 3), pid=pid if i % 2 else 0)
                       for i in range(8)]
            res = k.scheduler.resources["llm:sim-llama-3-8b"]
            assert res.stats.num_queued == 7
            k.set_policy(to)
            assert res.policy.name == to and res.stats.num_queued + res.stats.num_running == 8
            assert (await sub.receive()).data == {"resource": "llm:sim-llama-3-8b", "policy": to}
            calls = [await t.wait() for t in tickets]
            with pytest.raises(ConfigError) as info:
                k.set_policy("lottery")
            assert info.value.field == "scheduler.policy" and res.policy.name == to
            assert (await k.call(llm("after")))["message"]["content"]
        # a resource created after the switch uses the new policy too
        k.register_tool("echo", lambda x: x)
        assert await k.call({"kind": "tool", "tool": "echo", "arguments": {"x": 1}}) == 1
        assert k.scheduler.resources["tool:echo"].policy.name == to
    assert all(c.state is CallState.DONE for c in calls)
    assert slot_watch.violations == []


@pytest.mark.anyio
async def test_suspend_holds_queued_calls_until_resume(make_settings, slot_watch):
    settings = make_settings(**hw(1))
    async with Kernel(settings) as k:
        a, b = (await k.spawn("a")).pid, (await k.spawn("b")).pid
        res_name = "llm:sim-llama-3-8b"
        with anyio.fail_after(30):
            first = await k.submit(llm("a0", 20), pid=a)          # a's call, running
            queued = await k.submit(llm("a1", 4), pid=a)          # a's call, waiting
            await k.suspend(a)
            late = await k.submit(llm("a2", 4), pid=a)            # submitted while suspended
            others = [await k.submit(llm(f"b{i}", 4), pid=b) for i in range(3)]
            res = k.scheduler.resources[res_name]
            assert res.stats.num_held == 2
            for t in others:
                assert (await t.wait()).state is CallState.DONE
            assert (await first.wait()).state is CallState.DONE    # running calls are not held
            assert not queued.done.is_set() and not late.done.is_set()
            assert queued.call.state is CallState.QUEUED and k.processes.get(a).state == "suspended"
            assert res.stats.num_running == 0                       # held calls are not runnable
            await k.resume(a)
            assert (await queued.wait()).state is CallState.DONE
            assert (await late.wait()).state is CallState.DONE
            assert queued.call.started >= max(t.call.finished for t in others)
            assert res.stats.num_held == 0 and k.processes.get(a).state == "running"
    assert slot_watch.violations == []


@pytest.mark.anyio
async def test_time_limits_cancel_only_the_runs_past_their_limit() -> None:
    """One timer keeps every running call's limit: it fires at the earliest, cancels the
    runs past theirs with their error, and sets itself again for the rest."""
    limits = TimeLimits()
    a, b, c, d = (ticket(i) for i in range(4))
    for t in (a, b, c, d):
        t.scope = anyio.CancelScope()
    limits.set(a, 0.05, lambda: Cancelled("a timed out"))
    limits.set(b, 0.05, lambda: Cancelled("b timed out"))
    limits.set(c, 30.0, lambda: Cancelled("c timed out"))
    limits.clear(b)   # b's run ended in time
    await anyio.sleep(0.3)
    assert a.scope.cancel_called and a.timeout_error is not None and a.timeout_error.message == "a timed out"
    assert not b.scope.cancel_called and b.timeout_error is None
    assert not c.scope.cancel_called
    limits.set(d, 0.02, lambda: Cancelled("d timed out"))   # earlier than c's: the timer moves to it
    await anyio.sleep(0.3)
    assert d.scope.cancel_called and d.timeout_error.message == "d timed out"
    assert not c.scope.cancel_called
    limits.clear(c)
    d.scope = None   # a run already over when its limit comes is left alone
    limits.set(d, 0.01, lambda: Cancelled("late"))
    await anyio.sleep(0.2)
    assert d.timeout_error.message == "d timed out"
