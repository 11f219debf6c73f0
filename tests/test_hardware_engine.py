"""The serving engine on tiny scenarios with known answers, with a stand-in cost model
(affine in tokens and context) so that the arithmetic is checkable by hand."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from aios.errors import ConfigError
from aios.hardware.engine import Engine, EngineConfig
from aios.hardware.workload import Arrivals, Lengths, Workload, synthetic


@dataclass
class Cost:
    time_s: float


class AffineCost:
    """An iteration takes base + per_token x tokens + per_ctx x decode context; KV room
    for `capacity` tokens; a swap moves `swap_tokens_per_s`."""

    def __init__(self, capacity: int = 10_000, base: float = 0.01, per_token: float = 1e-4, per_ctx: float = 1e-6,
                 swap_tokens_per_s: float = 1e5):
        self.capacity, self.base, self.per_token, self.per_ctx = capacity, base, per_token, per_ctx
        self.swap_tokens_per_s = swap_tokens_per_s

    def iteration(self, prefill_lens, prefill_ctx, decode_ctx) -> Cost:
        tokens = int(np.sum(prefill_lens)) + len(decode_ctx)
        return Cost(self.base + self.per_token * tokens + self.per_ctx * float(np.sum(decode_ctx)))

    def step_time(self, prefill_lens, prefill_ctx, num_dec: int, dec_ctx: int) -> float:
        return self.base + self.per_token * (sum(prefill_lens) + num_dec) + self.per_ctx * dec_ctx

    def kv_capacity_tokens(self, utilization: float) -> int:
        return self.capacity

    def kv_transfer_s(self, tokens: int, link: str, copy_tokens: int | None = None) -> float:
        return tokens / self.swap_tokens_per_s


def one(prompt: int, output: int, at: float = 0.0) -> Workload:
    return Workload(np.array([at]), np.array([prompt]), np.array([output]))


def test_a_lone_request_by_hand():
    cost = AffineCost(per_ctx=0.0)
    r = Engine(cost, EngineConfig(scheduler="vllm")).run(one(100, 4, at=1.0))
    prefill = 0.01 + 1e-4 * 100
    decode = 0.01 + 1e-4
    assert r.first_token_s[0] == pytest.approx(1.0 + prefill)
    assert r.finish_s[0] == pytest.approx(1.0 + prefill + 3 * decode)
    assert r.tbt_quantile(0.5) == pytest.approx(decode)
    assert r.summary()["finished"] == 1 and not r.unserved


def test_jumps_match_step_by_step_decode_times():
    """Decode cost grows with context: a jump over k iterations must sum the same series."""
    cost = AffineCost(per_ctx=1e-4)
    r = Engine(cost, EngineConfig(scheduler="vllm")).run(one(10, 50))
    expected = 0.01 + 1e-4 * 10                      # prefill
    for step in range(49):                          # decode with context 10 + 1 + step
        expected += 0.01 + 1e-4 + 1e-4 * (11 + step)
    assert r.finish_s[0] == pytest.approx(expected, rel=1e-9)
    assert len(r.iter_s) == 50


def test_chunked_prefill_never_exceeds_its_budget():
    w = synthetic(200, Arrivals("poisson", 50.0), Lengths.uniform(100, 3000), Lengths.uniform(1, 100), seed=1)
    r = Engine(AffineCost(capacity=200_000), EngineConfig(scheduler="sarathi", token_budget=512)).run(w)
    assert r.iter_tokens.max() <= 512
    assert np.all(~np.isnan(r.finish_s))


def test_swap_preemption_moves_kv_out_and_back():
    # room for 40 tokens: two requests that grow to 30 tokens each cannot both stay
    w = Workload(np.array([0.0, 0.0]), np.array([10, 10]), np.array([20, 20]))
    cost = AffineCost(capacity=40, per_ctx=0.0)
    r = Engine(cost, EngineConfig(scheduler="vllm", block_size=2, watermark=0.0, preemption="swap")).run(w)
    assert r.num_swaps.sum() >= 1 and r.num_preemptions.sum() == r.num_swaps.sum()
    assert np.all(~np.isnan(r.finish_s)) and not r.unserved
    recompute = Engine(cost, EngineConfig(scheduler="vllm", block_size=2, watermark=0.0,
                                          preemption="recompute")).run(w)
    assert recompute.num_preemptions.sum() >= 1 and recompute.num_swaps.sum() == 0
    assert np.all(~np.isnan(recompute.finish_s))


def test_a_recomputed_request_holds_its_prompt_and_tokens_once():
    """Room for 40 tokens; two requests grow to 34 each. The newer is preempted when they
    meet (about 20 each), recomputes its prompt and the tokens it had once the other is done,
    and then fits to its end: one preemption, not a cascade of self-preemptions (its KV must
    count the re-prefilled tokens once)."""
    w = Workload(np.array([0.0, 0.0]), np.array([4, 4]), np.array([30, 30]))
    cost = AffineCost(capacity=40, per_ctx=0.0)
    r = Engine(cost, EngineConfig(scheduler="vllm", block_size=2, watermark=0.0, preemption="recompute")).run(w)
    assert r.num_preemptions.tolist() == [0, 1]
    assert np.all(~np.isnan(r.finish_s)) and not r.unserved
    # the recompute is one prefill of the prompt and the tokens made before the preemption
    prefills = r.iter_tokens[r.iter_tokens > 2]
    assert prefills[0] == 8 and len(prefills) == 2 and 4 < prefills[1] < 4 + 30


def test_conservation_and_determinism():
    w = synthetic(500, Arrivals("gamma", 20.0, cv=3.0), Lengths.lognormal(300, 1.0, cap=3000),
                  Lengths.lognormal(100, 1.0, cap=1000), seed=7)
    for sched in ("orca", "vllm", "sarathi"):
        cfg = EngineConfig(scheduler=sched, max_seq_len=4096)
        a = Engine(AffineCost(capacity=20_000), cfg).run(w)
        b = Engine(AffineCost(capacity=20_000), cfg).run(w)
        served = ~np.isnan(a.finish_s)
        assert served.sum() + len(a.unserved) == len(w), sched          # every request finishes or is reported
        assert np.array_equal(a.finish_s, b.finish_s, equal_nan=True), sched
        assert np.all(a.first_token_s[served] >= w.arrival_s[served])
        assert np.all(a.finish_s[served] >= a.first_token_s[served])


def test_paging_batches_more_than_reserving():
    w = synthetic(400, Arrivals("poisson", 30.0), Lengths.lognormal(200, 0.8, cap=1500),
                  Lengths.lognormal(200, 0.8, cap=1500), seed=3)
    cost = AffineCost(capacity=30_000)
    orca = Engine(cost, EngineConfig(scheduler="orca", orca_reserve="max", max_seq_len=2048)).run(w)
    vllm = Engine(cost, EngineConfig(scheduler="vllm")).run(w)
    assert vllm.mean_batch() > orca.mean_batch()


def test_impossible_requests_are_reported_not_hung():
    w = Workload(np.array([0.0, 1.0]), np.array([50, 5_000]), np.array([10, 10]))
    r = Engine(AffineCost(capacity=1_000), EngineConfig(scheduler="vllm")).run(w)
    assert not np.isnan(r.finish_s[0]) and np.isnan(r.finish_s[1])
    assert "needs" in r.unserved[1] and "KV blocks" in r.unserved[1]
    with pytest.raises(ConfigError, match="unknown scheduler"):
        EngineConfig(scheduler="fifo")   # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no room for the KV cache"):
        Engine(AffineCost(capacity=0))


@pytest.mark.parametrize("sched", ["orca", "vllm"])
def test_a_prompt_longer_than_the_iteration_budget_is_prefilled_alone(sched):
    w = Workload(np.array([0.0, 0.0]), np.array([100, 6_000]), np.array([5, 5]))
    r = Engine(AffineCost(capacity=20_000), EngineConfig(scheduler=sched, max_batched_tokens=4096,
                                                         max_seq_len=8192)).run(w)
    assert np.all(~np.isnan(r.finish_s)) and not r.unserved
    # alone among prompts: vLLM's prefill iteration holds just it; Orca's also the other's decode
    assert r.iter_tokens.max() == (6_000 if sched == "vllm" else 6_001)


def test_orca_buddy_reservations_are_power_of_two_runs_of_blocks():
    # 100 + 40 tokens = 9 blocks of 16; a buddy allocator hands out 16
    w = Workload(np.array([0.0]), np.array([100]), np.array([40]))
    exact = Engine(AffineCost(capacity=16 * 9), EngineConfig(scheduler="orca", watermark=0.0)).run(w)
    assert not exact.unserved
    buddy = Engine(AffineCost(capacity=16 * 9), EngineConfig(scheduler="orca", orca_buddy=True, watermark=0.0)).run(w)
    assert "needs 16 KV blocks" in buddy.unserved[0]
