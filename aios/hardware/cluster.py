"""Several serving instances under a global scheduler, on one event loop.

`Cluster(cost, engine, num_instances, cluster).run(workload)`: every instance is an
`engine.Instance` over one shared `Ledger` (a pipeline-parallel instance counts as its
virtual engines); the loop always advances the instance whose clock is furthest behind, up
to the next global event (an arrival, a poll, a migration stage), so that instances run
concurrently in simulated time and every decision sees a consistent picture.

Dispatch (`ClusterConfig.dispatch`), as Llumnix's artifact (branch osdi24ae) defines it:
  round_robin   the i-th request to instance i mod N.
  least_load    to the instance with the most free KV blocks (less the watermark and the
                queued requests' demand) per request, running or queued: the artifact's
                `load` dispatch, which its INFaaS++ baseline and Llumnix share.

Migration (`migration=True`, Llumnix): every `poll_s x migrate_every_polls`, each instance's
load is computed as the artifact's `consumed_speed` metric, the negative of its freeness:
free blocks less the watermark (and, with `defrag`, less the queued requests' demand and
any high-priority headroom) per running request (with `defrag`, one more while requests
queue). An instance whose load exceeds `migrate_out_threshold`, or that holds requests it
preempted, sends; one below `migrate_in_threshold` that holds none receives; the most
loaded sender pairs with the least loaded receiver, the next with the next. The request
moved is the most recently admitted one that is decoding and not of high priority (LCFS).
A migration is live: the KV is copied
in stages while the request keeps decoding on the source (stage 1 copies what it has,
stage 2 what it produced meanwhile); the request then stops on the source, the last
tokens' KV is copied (the downtime), and it resumes on the destination, whose blocks were
reserved at the start. A request that finishes or is preempted during the copy is not
moved (the migration aborts and the reservation is returned).

Disaggregation (`DistServe`): prefill instances (role "prefill") and decode instances (role
"decode"), each with its own parallelism; a request goes to the prefill instance with the
shortest queue, and once its first token is out its KV is pulled by the least-loaded
decoder over the transfer link; the prefill instance frees it when the transfer ends."""
from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from aios.errors import ConfigError
from aios.hardware.engine import Engine, EngineConfig, EngineResult, Instance, Ledger, result_of, virtual_engines
from aios.hardware.workload import Workload

Dispatch = Literal["round_robin", "least_load"]
_INF = math.inf


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    dispatch: Dispatch = "least_load"
    migration: bool = True
    defrag: bool = True                     # queued demand counts in the migration load (Llumnix)
    poll_s: float = 0.05                    # Llumnix's polling interval (repo default)
    migrate_out_threshold: float = 3.0      # load above it: the instance sends a request out
    migrate_in_threshold: float = 3.0       # load below it: the instance may take one in
    migrate_every_polls: int = 4            # pairs are formed every this many polls (Llumnix: 4)
    migration_link: Literal["nvlink", "pcie"] = "pcie"
    priority_headroom_blocks: int = 0       # virtual usage added per running high-priority request
    max_events: int = 100_000_000

    def __post_init__(self) -> None:
        if self.dispatch not in ("round_robin", "least_load"):
            raise ConfigError(f"unknown dispatch {self.dispatch!r}", field="dispatch",
                              hint="one of: round_robin, least_load")
        if not self.poll_s > 0:
            raise ConfigError("poll_s must be positive", field="poll_s")



def serve(cost: Any, config: EngineConfig, w: Workload) -> EngineResult:
    """One serving instance over a workload: an Engine, or with pipeline parallelism
    (`cost.pp` > 1) a cluster of one instance made of pp virtual engines."""
    if int(getattr(cost, "pp", 1)) > 1:
        return Cluster(cost, config, 1, ClusterConfig(dispatch="least_load", migration=False)).run(w)
    return Engine(cost, config).run(w)

class _Loop:
    """The shared event loop: timed callbacks plus instances stepped in time order."""

    def __init__(self, instances: Sequence[Instance], max_events: int):
        self.instances = list(instances)
        self.events: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()
        self.max_events = max_events

    def at(self, t: float, fn: Callable[[float], None]) -> None:
        heapq.heappush(self.events, (t, next(self._seq), fn))

    def wake(self, inst: Instance, t: float) -> None:
        """An instance that was idle catches up to `t` before taking new work."""
        if not inst.has_work():
            inst.now = max(inst.now, t)

    def added(self, inst: Instance) -> None:
        """Call after giving an instance work: it joins the run queue at its clock."""
        if inst.has_work():
            heapq.heappush(self._queue, (inst.now, self._index[id(inst)]))

    def run(self, arrivals: list[float], on_arrival: Callable[[int, float], None],
            on_step: Callable[[Instance], None]) -> float:
        n, j = len(arrivals), 0
        insts = self.instances
        # busy instances by their clock: (now, index); an entry is stale once its instance
        # moved on or went idle, and is then skipped
        index = {id(x): k for k, x in enumerate(insts)}
        queue = [(x.now, k) for k, x in enumerate(insts) if x.has_work()]
        heapq.heapify(queue)
        self._queue, self._index = queue, index
        for _ in range(self.max_events):
            t_evt = arrivals[j] if j < n else _INF
            if self.events and self.events[0][0] < t_evt:
                t_evt = self.events[0][0]
            while queue and (queue[0][0] != insts[queue[0][1]].now or not insts[queue[0][1]].has_work()):
                heapq.heappop(queue)
            if queue and queue[0][0] < t_evt:
                _, k = heapq.heappop(queue)
                lag = insts[k]
                before = (lag.iterations, lag.now)
                lag.step(t_evt)
                if (lag.iterations, lag.now) == before:   # nothing fits until something changes
                    if t_evt == _INF:
                        lag.give_up("could not be scheduled: no KV room was ever free for it")
                    else:
                        lag.now = t_evt
                on_step(lag)
                if lag.has_work():
                    heapq.heappush(queue, (lag.now, k))
                continue
            if t_evt == _INF:
                break
            if j < n and arrivals[j] <= t_evt:
                on_arrival(j, arrivals[j])
                j += 1
            else:
                t, _, fn = heapq.heappop(self.events)
                fn(t)
        else:
            raise ConfigError(f"the simulation passed {self.max_events} events", field="max_events")
        return max((x.now for x in insts), default=0.0)


class Cluster:
    """N instances of one model (a `cost` per instance, or one shared) under a global
    scheduler. `run(workload) -> EngineResult` over all of them (`num_gpus` set)."""

    def __init__(self, cost: Any, engine: EngineConfig, num_instances: int, cluster: ClusterConfig | None = None,
                 gpus_per_instance: int = 1):
        if num_instances < 1:
            raise ConfigError("a cluster needs at least one instance", field="instances")
        self.cost, self.engine, self.num_instances = cost, engine, num_instances
        self.cluster = cluster or ClusterConfig()
        self.gpus_per_instance = gpus_per_instance

    def run(self, w: Workload, progress: Callable[[int], None] | None = None) -> EngineResult:
        cfg = self.cluster
        ledger = Ledger.of(w)
        insts = [v for k in range(self.num_instances) for v in virtual_engines(self.cost, self.engine, ledger, str(k))]
        loop = _Loop(insts, cfg.max_events)
        rr = itertools.count()
        migrating: set[int] = set()
        stats = {"migrations": 0, "aborted": 0}

        def load(x: Instance) -> float:
            """Llumnix's migration load: minus the free blocks (less the watermark; with
            `defrag`, less the queued demand and high-priority headroom) per running request
            (with `defrag`, one more while requests queue); -inf when it runs nothing."""
            room = x.free - x.watermark
            busy = len(x.running)
            if cfg.defrag:
                room -= x.demand_blocks()
                if cfg.priority_headroom_blocks:
                    room -= cfg.priority_headroom_blocks * sum(1 for r in x.running if ledger.priority[r] > 0)
                busy += 1 if x.waiting or x.swapped else 0
            return -room / busy if busy else -_INF

        def dispatch_load(x: Instance) -> float:
            """The artifact's dispatch load: minus the free blocks less the watermark and the
            queued demand, per request running or queued; -inf when it has none."""
            busy = len(x.running) + len(x.waiting) + len(x.swapped)
            return -(x.free - x.watermark - x.demand_blocks()) / busy if busy else -_INF

        def preempted(x: Instance) -> bool:
            return bool(x.swapped) or any(ledger.preempts[r] > 0 for r in x.waiting)

        def on_arrival(rid: int, t: float) -> None:
            if cfg.dispatch == "round_robin":
                x = insts[next(rr) % len(insts)]
            else:
                x = min(insts, key=dispatch_load)
            loop.wake(x, t)
            x.add(rid)
            loop.added(x)
            if progress is not None:
                progress(1)

        def poll(t: float) -> None:
            if t < last_arrival or any(x.has_work() for x in insts) or loop.events:   # polls go on while work may come
                loop.at(t + cfg.poll_s * cfg.migrate_every_polls, poll)
            loads = {id(x): load(x) for x in insts}
            ranked = sorted(insts, key=lambda x: loads[id(x)], reverse=True)
            senders = [x for x in ranked if preempted(x) or loads[id(x)] > cfg.migrate_out_threshold]
            receivers = [x for x in reversed(ranked) if not preempted(x) and loads[id(x)] < cfg.migrate_in_threshold]
            for src, dst in zip(senders, receivers, strict=False):   # the most loaded to the least, and on
                if src is not dst and src.running:
                    start_migration(src, dst, t)

        def start_migration(src: Instance, dst: Instance, t: float) -> None:
            # Llumnix's LCFS: the most recently admitted running request that is decoding and
            # not of high priority
            movable = [r for r in src.running if r not in migrating and ledger.prefilled[r] >= ledger.target[r]
                       and ledger.priority[r] <= 0]
            if not movable:
                return
            r = max(movable, key=lambda q: (float(ledger.start[q]), q))
            ctx = int(ledger.prefilled[r] + ledger.done[r])
            reserve = src.need_blocks(ctx + 2 * src.config.block_size)
            if dst.free - reserve < dst.watermark:
                return
            dst.free -= reserve
            migrating.add(r)
            stage1 = src.cost.kv_transfer_s(ctx, cfg.migration_link)
            # tokens made during stage 1 (one per iteration of the source), copied in stage 2
            iter_s = src.iter_s[-1] if src.iter_s else stage1
            stage2 = src.cost.kv_transfer_s(max(1, int(stage1 / max(iter_s, 1e-9))), cfg.migration_link)
            loop.at(t + stage1 + stage2, lambda t2: commit(src, dst, r, reserve, t2))

        def commit(src: Instance, dst: Instance, r: int, reserve: int, t: float) -> None:
            migrating.discard(r)
            dst.free += reserve
            if r not in src.running or ledger.prefilled[r] < ledger.target[r]:
                stats["aborted"] += 1   # finished, preempted or swapped meanwhile
                return
            ctx = src.remove(r)
            ledger.migrations[r] += 1
            stats["migrations"] += 1
            # downtime: the last stage copies the tokens of the final iteration
            down = src.cost.kv_transfer_s(1, cfg.migration_link) + (src.iter_s[-1] if src.iter_s else 0.0)
            # hold the room on the destination until the request lands there
            need = dst.need_blocks(ctx + 1)
            dst.free -= need

            def land(t3: float) -> None:
                dst.free += need
                loop.wake(dst, t3)
                dst.add(r, resident=True)
                loop.added(dst)
            loop.at(t + down, land)

        last_arrival = float(w.arrival_s[-1]) if len(w) else 0.0
        if cfg.migration and len(w):
            loop.at(float(w.arrival_s[0]), poll)
        makespan = loop.run(w.arrival_s.tolist(), on_arrival, lambda x: None)
        for x in insts:
            x.give_up("could not be scheduled")
        result = result_of(ledger, insts, makespan, self.num_instances * self.gpus_per_instance)
        result.extra = {"migrations": stats["migrations"], "migrations_aborted": stats["aborted"]}
        return result


@dataclass(frozen=True, slots=True)
class Placement:
    """DistServe's unit: `prefill` instances of one cost model (tp x pp GPUs each) and
    `decode` instances of another."""
    prefill_cost: Any
    decode_cost: Any
    num_prefill: int
    num_decode: int
    prefill_gpus: int
    decode_gpus: int
    transfer_link: Literal["nvlink", "pcie"] = "nvlink"

    @property
    def num_gpus(self) -> int:
        return self.num_prefill * self.prefill_gpus + self.num_decode * self.decode_gpus


class DistServe:
    """Disaggregated prefill and decode (DistServe). `prefill_engine` batches prompts up to
    its `max_batched_tokens` (DistServe packs about L_m tokens, the length at which prefill
    saturates the GPU); `decode_engine` runs the decodes."""

    def __init__(self, placement: Placement, prefill_engine: EngineConfig, decode_engine: EngineConfig):
        if placement.num_prefill < 1 or placement.num_decode < 1:
            raise ConfigError("DistServe needs at least one prefill and one decode instance", field="placement")
        self.placement = placement
        self.prefill_engine = replace(prefill_engine, role="prefill")
        self.decode_engine = replace(decode_engine, role="decode")

    def run(self, w: Workload, progress: Callable[[int], None] | None = None) -> EngineResult:
        p = self.placement
        ledger = Ledger.of(w)
        pre = [v for k in range(p.num_prefill) for v in virtual_engines(p.prefill_cost, self.prefill_engine, ledger, f"p{k}")]
        dec = [v for k in range(p.num_decode) for v in virtual_engines(p.decode_cost, self.decode_engine, ledger, f"d{k}")]
        loop = _Loop(pre + dec, 100_000_000)

        def on_arrival(rid: int, t: float) -> None:
            x = min(pre, key=lambda y: (len(y.waiting) + len(y.running), y.used_blocks()))
            loop.wake(x, t)
            if not x.add(rid):
                return
            loop.added(x)
            if progress is not None:
                progress(1)

        def on_step(x: Instance) -> None:
            if not x.handoff:
                return
            for rid in x.handoff:
                d = min(dec, key=lambda y: (y.used_blocks() + y.head_demand_blocks()) / y.num_blocks)
                why = d.fits_ever(rid)
                if why:
                    x.release(rid)
                    ledger.unserved[rid] = why
                    continue
                ctx = int(ledger.prefilled[rid] + ledger.done[rid])
                # the decoder pulls the KV: the sender's shard over the link (the slower side)
                t_xfer = max(p.prefill_cost.kv_transfer_s(ctx, p.transfer_link),
                             p.decode_cost.kv_transfer_s(ctx, p.transfer_link))

                def land(t: float, rid: int = rid, d: Instance = d, src: Instance = x) -> None:
                    src.release(rid)
                    loop.wake(d, t)
                    d.add(rid, resident=True)
                    loop.added(d)
                loop.at(x.now + t_xfer, land)
            x.handoff.clear()

        makespan = loop.run(w.arrival_s.tolist(), on_arrival, on_step)
        for x in pre + dec:
            x.give_up("could not be scheduled")
        return result_of(ledger, pre + dec, makespan, p.num_gpus)
