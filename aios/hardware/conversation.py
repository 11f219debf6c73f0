"""Multi-turn conversations with changing priorities on one instance: the setting of
FastSwitch (fairness-aware serving, where priority changes force frequent KV swaps).

`Conversations(cost, engine, updates).run(workload)`: the workload's sessions (see
`workload.sessions`) are released turn by turn: the first turn at its arrival, each later
turn a think time after the previous reply finished (the think time is the gap the
workload put between the turns' arrivals). Every `updates.interval_s` (or, with
`updates.per_iteration`, at each iteration with that probability: FastSwitch's "update
frequency"; with `scope="each"`, each conversation with that probability on its own) the
priorities of the live conversations are redrawn (`pattern`: "random" draws each anew, "markov" moves each one
level up or down with probability `markov_move`), and the instance re-sorts its queues and
preempts by priority (`EngineConfig.priority` must be on).

With `EngineConfig.kv_reuse`, a conversation's KV stays in host memory between turns: the
next turn copies the earlier turns' KV in and prefills only its new tokens. Without it (vLLM
0.3.3, no prefix caching), every turn prefills the whole conversation again."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aios.errors import ConfigError
from aios.hardware.engine import EngineConfig, EngineResult, Instance, Ledger, result_of
from aios.hardware.workload import Workload


@dataclass(frozen=True, slots=True)
class PriorityUpdates:
    interval_s: float = 0.0          # 0: priorities never change (unless per_iteration)
    per_iteration: float = 0.0       # else: the chance that an iteration is followed by a redraw
    levels: int = 4
    pattern: Literal["random", "markov"] = "random"
    markov_move: float = 0.5
    scope: Literal["all", "each"] = "all"   # per_iteration: all conversations redrawn together, or each on its own
    seed: int = 0

    def __post_init__(self) -> None:
        if self.interval_s < 0 or self.levels < 1:
            raise ConfigError("priority updates need interval_s >= 0 and levels >= 1", field="interval_s")
        if not 0 <= self.per_iteration <= 1:
            raise ConfigError("per_iteration is a probability in [0, 1]", field="per_iteration")
        if self.pattern not in ("random", "markov"):
            raise ConfigError(f"unknown priority pattern {self.pattern!r}", field="pattern", hint="random or markov")
        if self.scope not in ("all", "each"):
            raise ConfigError(f"unknown priority update scope {self.scope!r}", field="scope", hint="all or each")


class Conversations:
    def __init__(self, cost: Any, engine: EngineConfig, updates: PriorityUpdates | None = None):
        if not engine.priority and updates is not None and (updates.interval_s or updates.per_iteration):
            raise ConfigError("priority updates need EngineConfig(priority=True)", field="priority")
        self.cost, self.engine, self.updates = cost, engine, updates or PriorityUpdates()

    def run(self, w: Workload, progress: Callable[[int], None] | None = None) -> EngineResult:
        n = len(w)
        ledger = Ledger.of(w)
        ledger.arrival[:n] = np.nan   # set as each turn is released
        inst = Instance(self.cost, self.engine, ledger)
        up = self.updates
        rng = np.random.default_rng(up.seed)
        # each session's turns in order; a turn's think time is its arrival gap in the workload
        order = np.lexsort((w.turn, w.session))
        next_turn: dict[int, int] = {}
        think = np.zeros(n)
        for a, b in zip(order[:-1].tolist(), order[1:].tolist(), strict=True):
            if w.session[a] == w.session[b] and w.session[a] >= 0:
                next_turn[a] = b
                think[b] = max(0.0, float(w.arrival_s[b] - w.arrival_s[a]))
        firsts = sorted((float(w.arrival_s[i]), i) for i in range(n) if w.turn[i] == 0 or w.session[i] < 0)
        releases: list[tuple[float, int]] = list(reversed(firsts))   # a stack, earliest last
        pending: list[tuple[float, int]] = []   # later turns, released by finishes
        live_sessions: dict[int, int] = {}     # session -> its current priority
        now_update = up.interval_s if up.interval_s else math.inf

        def release(i: int, t: float) -> None:
            ledger.arrival[i] = t
            s = int(w.session[i])
            if s >= 0:
                ledger.priority[i] = live_sessions.setdefault(s, int(ledger.priority[i]))
            prefix = int(w.prefix[i]) if self.engine.kv_reuse else 0
            if not inst.has_work():
                inst.now = max(inst.now, t)
            inst.add(i, host_prefix=prefix)

        def redraw(chance: float = 1.0) -> None:
            """New priorities: every live conversation's, or (chance < 1) each one's with that chance."""
            for s, p in live_sessions.items():
                if chance < 1.0 and rng.random() >= chance:
                    continue
                if up.pattern == "random":
                    live_sessions[s] = int(rng.integers(0, up.levels))
                elif rng.random() < up.markov_move:
                    live_sessions[s] = int(min(up.levels - 1, max(0, p + (1 if rng.random() < 0.5 else -1))))
            for q in (inst.running, inst.waiting, inst.swapped):
                for i in q:
                    s = int(w.session[i])
                    if s in live_sessions:
                        ledger.priority[i] = live_sessions[s]
            inst.reprioritize()

        for _ in range(self.engine.max_iterations):
            pending.sort(reverse=True)
            t_next = min(releases[-1][0] if releases else math.inf, pending[-1][0] if pending else math.inf)
            t_evt = min(t_next, now_update)
            if inst.has_work() and inst.now < t_evt:
                before = (inst.iterations, inst.now)
                inst.step(t_evt)
                if (inst.iterations, inst.now) == before:
                    if t_evt == math.inf:
                        inst.give_up("could not be scheduled: no KV room was ever free for it")
                    else:
                        inst.now = t_evt
                for i in inst.finished:
                    j = next_turn.get(i)
                    if j is not None:
                        pending.append((float(ledger.finish[i]) + think[j], j))
                    else:
                        live_sessions.pop(int(w.session[i]), None)
                if progress is not None and inst.finished:
                    progress(len(inst.finished))
                inst.finished.clear()
                if up.per_iteration:   # each iteration of the step may be followed by a redraw
                    steps = inst.iterations - before[0]
                    chance = 1 - (1 - up.per_iteration) ** steps
                    if steps and up.scope == "each":
                        redraw(chance)
                    elif steps and rng.random() < chance:
                        redraw()
                continue
            if t_evt == math.inf:
                break
            if t_evt == now_update:
                redraw()
                now_update += up.interval_s
                if not (releases or pending or inst.has_work()):
                    now_update = math.inf
                continue
            src = releases if releases and releases[-1][0] == t_next else pending
            t, i = src.pop()
            release(i, t)
        else:
            raise ConfigError(f"the simulation passed {self.engine.max_iterations} iterations",
                              field="max_iterations")
        for i in range(n):   # turns never released (an earlier turn was unserved)
            if math.isnan(ledger.arrival[i]):
                ledger.arrival[i] = w.arrival_s[i]
                ledger.unserved.setdefault(i, "an earlier turn of its conversation was never served")
        return result_of(ledger, [inst], inst.now)
