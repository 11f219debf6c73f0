"""The serving mechanisms beyond one FCFS instance, each on a tiny scenario with a known
answer: live migration, disaggregated prefill/decode, priorities and swaps, multi-turn KV
reuse, pipeline stages, and the kernel-facing suspend/resume/cancel. The stand-in cost model
is affine, so that times can be checked by hand."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from aios.errors import ConfigError
from aios.hardware.cluster import Cluster, ClusterConfig, DistServe, Placement, serve
from aios.hardware.conversation import Conversations, PriorityUpdates
from aios.hardware.engine import Engine, EngineConfig, Instance, Ledger
from aios.hardware.workload import Arrivals, Lengths, Workload, sessions, synthetic
from tests.test_hardware_engine import AffineCost


class StagedCost(AffineCost):
    """AffineCost split over `pp` pipeline stages."""

    def __init__(self, pp: int, **kw):
        super().__init__(**kw)
        self.pp = pp


def every_request_finishes_once(result) -> None:
    assert np.all(~np.isnan(result.finish_s)) and not result.unserved
    assert np.all(result.finish_s >= result.first_token_s)


# ---- migration

def test_migrated_requests_finish_exactly_once():
    """Thresholds that make every poll migrate: requests bounce between two instances, and
    each one still produces its tokens once and finishes once."""
    w = synthetic(60, Arrivals("poisson", 20.0), Lengths.uniform(20, 200), Lengths.uniform(50, 300), seed=4)
    cfg = ClusterConfig(dispatch="least_load", migration=True, poll_s=0.05, migrate_out_threshold=-1e9,
                        migrate_in_threshold=1e9)
    cost = AffineCost(capacity=20_000, per_ctx=1e-6)
    r = Cluster(cost, EngineConfig(), 2, cfg).run(w)
    every_request_finishes_once(r)
    assert r.num_migrations.sum() > 10
    assert r.extra["migrations"] == int(r.num_migrations.sum())
    # tokens are conserved: decode iterations produced exactly the output tokens after the first
    decode_tokens = int(r.iter_tokens.sum())
    prefill_tokens = int(w.prompt_tokens.sum())
    assert decode_tokens == prefill_tokens + int((w.output_tokens - 1).sum())
    # the same run without migration gives the same tokens, in other places
    plain = Cluster(cost, EngineConfig(), 2, replace(cfg, migration=False)).run(w)
    assert plain.num_migrations.sum() == 0 and int(plain.iter_tokens.sum()) == decode_tokens
    # and a run is a function of its inputs
    again = Cluster(cost, EngineConfig(), 2, cfg).run(w)
    assert np.array_equal(again.finish_s, r.finish_s) and np.array_equal(again.num_migrations, r.num_migrations)


def test_migration_polls_go_on_across_an_idle_cluster():
    """A first request done before the first poll leaves the cluster idle; the polls must
    go on, so that the requests that come later can still be migrated."""
    early = Workload(np.array([0.0]), np.array([10]), np.array([1]))
    later = synthetic(40, Arrivals("poisson", 20.0), Lengths.uniform(20, 200), Lengths.uniform(50, 300), seed=4)
    w = Workload(np.concatenate([early.arrival_s, later.arrival_s + 5.0]),
                 np.concatenate([early.prompt_tokens, later.prompt_tokens]),
                 np.concatenate([early.output_tokens, later.output_tokens]))
    cfg = ClusterConfig(migration=True, migrate_out_threshold=-1e9, migrate_in_threshold=1e9)
    r = Cluster(AffineCost(capacity=20_000, per_ctx=1e-6), EngineConfig(), 2, cfg).run(w)
    every_request_finishes_once(r)
    assert r.num_migrations[1:].sum() > 0


def test_round_robin_puts_one_request_on_each_instance():
    w = Workload(np.array([0.0, 0.0]), np.array([100, 100]), np.array([400, 400]))
    cost = AffineCost(capacity=20_000, per_ctx=0.0)
    cfg = ClusterConfig(dispatch="round_robin", migration=False)
    r = Cluster(cost, EngineConfig(), 2, cfg).run(w)
    # one instance each, each alone: 1 prefill + 399 decodes
    assert r.finish_s[0] == pytest.approx(0.01 + 1e-2 + 399 * (0.01 + 1e-4))


def test_dispatch_policies_balance_load():
    w = synthetic(200, Arrivals("poisson", 50.0), Lengths.uniform(50, 500), Lengths.uniform(20, 200), seed=2)
    for dispatch in ("round_robin", "least_load"):
        r = Cluster(AffineCost(capacity=50_000), EngineConfig(), 4,
                    ClusterConfig(dispatch=dispatch, migration=False)).run(w)
        every_request_finishes_once(r)
    with pytest.raises(ConfigError, match="unknown dispatch"):
        ClusterConfig(dispatch="random")   # type: ignore[arg-type]


# ---- disaggregation

def test_distserve_prefills_on_one_side_and_decodes_on_the_other():
    w = Workload(np.array([0.0]), np.array([1000]), np.array([5]))
    pre, dec = AffineCost(capacity=20_000, per_ctx=0.0), AffineCost(capacity=20_000, per_ctx=0.0, swap_tokens_per_s=1e4)
    place = Placement(pre, dec, 1, 1, 1, 1)
    r = DistServe(place, EngineConfig(), EngineConfig()).run(w)
    prefill = 0.01 + 1e-4 * 1000
    transfer = 1001 / 1e4          # the prompt and the first token's KV, at the slower side's rate
    decode = 0.01 + 1e-4
    assert r.first_token_s[0] == pytest.approx(prefill)
    assert r.finish_s[0] == pytest.approx(prefill + transfer + 4 * decode)
    assert r.num_gpus == 2
    # the prefill instance ran one iteration of 1000 tokens; the decoder four of one token
    assert sorted(r.iter_tokens.tolist()) == [1, 1, 1, 1, 1000]


def test_distserve_conserves_requests_under_load():
    w = synthetic(300, Arrivals("poisson", 30.0), Lengths.uniform(100, 2000), Lengths.uniform(5, 100), seed=5)
    place = Placement(AffineCost(capacity=30_000), AffineCost(capacity=30_000), 2, 1, 1, 1)
    r = DistServe(place, EngineConfig(), EngineConfig()).run(w)
    every_request_finishes_once(r)
    a = DistServe(place, EngineConfig(), EngineConfig()).run(w)
    assert np.array_equal(a.finish_s, r.finish_s)


# ---- priorities, swaps, suspend

def test_a_high_priority_request_preempts_a_low_one_by_swap():
    # room for 60 tokens: the low-priority request (50 + 20) is running when the high one arrives
    w = Workload(np.array([0.0, 0.05]), np.array([30, 30]), np.array([30, 5]), priority=np.array([0, 5]))
    cost = AffineCost(capacity=64, per_ctx=0.0)
    cfg = EngineConfig(block_size=2, watermark=0.0, priority=True, preemption="swap")
    r = Engine(cost, cfg).run(w)
    every_request_finishes_once(r)
    assert r.num_swaps[0] >= 1 and r.num_swaps[1] == 0
    assert r.finish_s[1] < r.finish_s[0]


def test_swap_io_granularity_and_overlap():
    """Per-copy latency makes block-by-block swaps slower than group copies; overlap hides a
    swap behind compute instead of adding it."""
    from aios.hardware.cost import CostModel
    from aios.hardware.specs import get_device, get_model
    c = CostModel(get_model("llama-2-7b"), get_device("a100-80gb"))
    blocks = c.kv_transfer_s(1024, "pcie", copy_tokens=16)
    group = c.kv_transfer_s(1024, "pcie", copy_tokens=1024)
    bulk = c.kv_transfer_s(1024, "pcie")
    per_copy = c.calibration.copy_latency_s
    assert blocks - bulk == pytest.approx(2 * 32 * 64 * per_copy)
    assert group - bulk == pytest.approx(2 * 32 * 1 * per_copy)


def test_suspend_resume_and_cancel_free_and_restore_kv():
    cost = AffineCost(capacity=1_000, per_ctx=0.0)
    led = Ledger()
    inst = Instance(cost, EngineConfig(block_size=4, preemption="swap", watermark=0.0), led)
    a, b = led.add(0.0, 40, 100), led.add(0.0, 40, 100)
    inst.add(a)
    inst.add(b)
    inst.step(inst.now)            # both prefill together
    inst.step(inst.now)            # one decode
    held = inst.num_blocks - inst.free
    inst.suspend(a)                # the kernel's context switch: swapped out
    assert led.swaps[a] == 1 and a in inst.held and a not in inst.running
    assert inst.free == inst.num_blocks - int(led.blocks[b])
    done_before = int(led.done[a])
    for _ in range(3):
        inst.step(inst.now)
    assert int(led.done[a]) == done_before   # held: no tokens
    inst.resume(a)
    t = inst.now
    inst.step(inst.now)
    assert a in inst.running and int(led.done[a]) == done_before + 1
    # the swap-in of its KV (prompt + generated) was charged to that iteration
    swap_in = (40 + done_before) / cost.swap_tokens_per_s
    assert inst.now - t == pytest.approx(0.01 + 2e-4 + swap_in)
    inst.cancel(a)
    inst.cancel(b)
    assert inst.free == inst.num_blocks and not inst.has_work()
    assert held > 0


# ---- conversations

def test_kv_reuse_prefills_only_the_new_tokens_of_a_turn():
    w = sessions(5, Arrivals("poisson", 0.5), Lengths.uniform(20, 60), Lengths.uniform(10, 30), mean_turns=3,
                 think_s=2.0, seed=3)
    cost = AffineCost(capacity=100_000)
    base = Conversations(cost, EngineConfig(priority=True)).run(w)
    reuse = Conversations(cost, EngineConfig(priority=True, kv_reuse=True)).run(w)
    every_request_finishes_once(base)
    every_request_finishes_once(reuse)
    decodes = int((w.output_tokens - 1).sum())
    assert int(base.iter_tokens.sum()) - decodes == int(w.prompt_tokens.sum())
    assert int(reuse.iter_tokens.sum()) - decodes == int((w.prompt_tokens - w.prefix).sum())
    # a later turn is released after the previous one finished
    for s in np.unique(w.session):
        turns = np.flatnonzero(w.session == s)
        for a, b in zip(turns[:-1], turns[1:], strict=True):
            assert reuse.arrival_s[b] >= reuse.finish_s[a]


def test_priority_updates_swap_and_still_serve_everyone():
    w = sessions(20, Arrivals("poisson", 4.0), Lengths.uniform(50, 150), Lengths.uniform(50, 150), mean_turns=3,
                 think_s=1.0, num_priorities=4, seed=9)
    cost = AffineCost(capacity=4_000)
    cfg = EngineConfig(priority=True, preemption="swap", block_size=16)
    up = PriorityUpdates(interval_s=0.2, levels=4, seed=1)
    a = Conversations(cost, cfg, up).run(w)
    b = Conversations(cost, cfg, up).run(w)
    every_request_finishes_once(a)
    assert a.num_swaps.sum() > 0
    assert np.array_equal(a.finish_s, b.finish_s)
    with pytest.raises(ConfigError, match="priority"):
        Conversations(cost, EngineConfig(), up)
    # a conversation that outgrows the instance is reported, with its later turns
    small = Conversations(AffineCost(capacity=600), cfg, up).run(w)
    assert small.unserved and all("KV blocks" in why or "earlier turn" in why for why in small.unserved.values())
    assert np.sum(~np.isnan(small.finish_s)) + len(small.unserved) == len(w)


def test_priority_updates_per_iteration_for_all_or_each_conversation():
    """FastSwitch's "update frequency", read two ways: after an iteration, all live
    conversations redrawn together with that chance, or each one on its own."""
    w = sessions(20, Arrivals("poisson", 4.0), Lengths.uniform(50, 150), Lengths.uniform(50, 150), mean_turns=3,
                 think_s=1.0, num_priorities=4, seed=9)
    cost = AffineCost(capacity=4_000)
    cfg = EngineConfig(priority=True, preemption="swap", block_size=16)
    runs = {}
    for scope in ("all", "each"):
        up = PriorityUpdates(per_iteration=0.05, levels=4, scope=scope, seed=1)
        runs[scope] = Conversations(cost, cfg, up).run(w)
        every_request_finishes_once(runs[scope])
        again = Conversations(cost, cfg, up).run(w)
        assert np.array_equal(again.finish_s, runs[scope].finish_s)
    assert not np.array_equal(runs["all"].finish_s, runs["each"].finish_s)
    with pytest.raises(ConfigError, match="scope"):
        PriorityUpdates(per_iteration=0.05, scope="some")   # type: ignore[arg-type]


# ---- pipeline stages

def test_pipeline_stages_multiply_latency_and_split_memory():
    w = Workload(np.array([0.0]), np.array([100]), np.array([3]))
    r = serve(StagedCost(2, capacity=10_000, per_ctx=0.0), EngineConfig(), w)
    assert r.first_token_s[0] == pytest.approx(2 * (0.01 + 1e-2))
    assert r.finish_s[0] == pytest.approx(2 * (0.01 + 1e-2) + 2 * 2 * (0.01 + 1e-4))
    assert r.num_blocks == 2 * (5_000 // 16)
    busy = synthetic(100, Arrivals("poisson", 40.0), Lengths.uniform(10, 100), Lengths.uniform(10, 100), seed=1)
    every_request_finishes_once(serve(StagedCost(4, capacity=10_000), EngineConfig(), busy))
    with pytest.raises(ConfigError, match="pp=2") as err:   # an Engine is one stage: serve() runs a pipeline
        Engine(StagedCost(2, capacity=10_000), EngineConfig()).run(w)
    assert err.value.field == "pp" and "serve" in (err.value.hint or "")


# ---- bad input

def test_requests_no_instance_can_hold_are_reported_in_clusters():
    w = Workload(np.array([0.0, 0.1, 0.2]), np.array([50, 9_000, 50]), np.array([10, 10, 10]))
    r = Cluster(AffineCost(capacity=2_000), EngineConfig(), 3, ClusterConfig()).run(w)
    assert np.isnan(r.finish_s[1]) and "KV blocks" in r.unserved[1]
    assert not np.isnan(r.finish_s[0]) and not np.isnan(r.finish_s[2])
    # DistServe: fits the prefill side but not the decoder
    place = Placement(AffineCost(capacity=20_000), AffineCost(capacity=2_000), 1, 1, 1, 1)
    d = DistServe(place, EngineConfig(), EngineConfig()).run(w)
    assert np.isnan(d.finish_s[1]) and "KV blocks" in d.unserved[1]
    assert np.sum(~np.isnan(d.finish_s)) + len(d.unserved) == len(w)


def test_cluster_settings_are_checked():
    with pytest.raises(ConfigError, match="poll_s"):
        ClusterConfig(poll_s=0)
    with pytest.raises(ConfigError, match="at least one instance"):
        Cluster(AffineCost(), EngineConfig(), 0)
    with pytest.raises(ConfigError, match="prefill and one decode"):
        DistServe(Placement(AffineCost(), AffineCost(), 0, 1, 1, 1), EngineConfig(), EngineConfig())
    with pytest.raises(ConfigError, match="unknown role"):
        EngineConfig(role="both-ways")   # type: ignore[arg-type]


def test_a_request_finished_before_its_suspension_is_not_requeued_and_history_can_be_off():
    cost = AffineCost(capacity=1_000, per_ctx=0.0)
    led = Ledger()
    inst = Instance(cost, EngineConfig(block_size=4, preemption="swap", record=False), led)
    a = led.add(0.0, 10, 2)
    inst.add(a)
    inst.step(inst.now)
    inst.step(inst.now)
    assert not np.isnan(led.finish[a]) and inst.iterations == 2
    inst.suspend(a)
    inst.resume(a)
    assert not inst.has_work()
    assert inst.iter_s == [] and led.tbt_s == []   # nothing kept


def test_utilization_is_the_work_done_over_the_peak():
    from aios.hardware.cost import CostModel
    from aios.hardware.specs import get_device, get_model
    cost = CostModel(get_model("llama-2-7b"), get_device("a100-80gb"))
    w = Workload(np.array([0.0]), np.array([512]), np.array([65]))
    r = Engine(cost, EngineConfig()).run(w)
    pre = cost.iteration(np.array([512]), np.zeros(1, np.int64), np.zeros(0, np.int64))
    dec = [cost.iteration(np.zeros(0, np.int64), np.zeros(0, np.int64), np.array([512 + i])) for i in range(1, 65)]
    flops = pre.flops + sum(d.flops for d in dec)
    nbytes = pre.bytes + sum(d.bytes for d in dec)
    assert r.compute_util == pytest.approx(flops / (r.makespan_s * cost.peak_flops), rel=1e-9)
    assert r.bandwidth_util == pytest.approx(nbytes / (r.makespan_s * cost.peak_bytes_per_s), rel=1e-9)
    assert 0 < r.compute_util < 1 and 0 < r.bandwidth_util < 1
    # a lone decode streams the weights: bandwidth-bound, far from the compute peak
    assert r.bandwidth_util > 10 * r.compute_util
    assert {"compute_util", "bandwidth_util"} <= set(r.summary())
