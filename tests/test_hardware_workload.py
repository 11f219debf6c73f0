"""Workloads of the serving simulator: arrival processes, length distributions, dataset
shapes, multi-turn sessions and traces, deterministic under a seed, with clear errors."""
from __future__ import annotations

import numpy as np
import pytest

from aios.errors import ConfigError
from aios.hardware.workload import (DATASETS, Arrivals, Lengths, Workload, from_dataset, load_trace, save_trace,
                                    sessions, synthetic)


def test_same_seed_same_workload_other_seed_other():
    a = from_dataset("sharegpt4", 500, Arrivals("poisson", 4.0), seed=3)
    b = from_dataset("sharegpt4", 500, Arrivals("poisson", 4.0), seed=3)
    c = from_dataset("sharegpt4", 500, Arrivals("poisson", 4.0), seed=4)
    for name in ("arrival_s", "prompt_tokens", "output_tokens"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.prompt_tokens, c.prompt_tokens)


def test_arrival_processes_have_the_stated_rate_and_burstiness():
    rng = np.random.default_rng(0)
    poisson = np.diff(Arrivals("poisson", 12.0).sample(rng, 50_000), prepend=0.0)
    assert poisson.mean() == pytest.approx(1 / 12, rel=0.02)
    assert poisson.std() / poisson.mean() == pytest.approx(1.0, rel=0.03)
    bursty = np.diff(Arrivals("gamma", 12.0, cv=3.0).sample(rng, 50_000), prepend=0.0)
    assert bursty.mean() == pytest.approx(1 / 12, rel=0.05)
    assert bursty.std() / bursty.mean() == pytest.approx(3.0, rel=0.08)


def test_length_distributions():
    rng = np.random.default_rng(1)
    assert set(Lengths.fixed(512).sample(rng, 100)) == {512}
    u = Lengths.uniform(10, 20).sample(rng, 10_000)
    assert u.min() == 10 and u.max() == 20
    fit = Lengths.from_median_p90(1730, 5696, cap=100_000).sample(rng, 100_000)
    assert np.median(fit) == pytest.approx(1730, rel=0.03)
    assert np.quantile(fit, 0.9) == pytest.approx(5696, rel=0.03)
    capped = Lengths.from_median_p90(1730, 5696, cap=8192).sample(rng, 10_000)
    assert capped.max() == 8192 and capped.min() >= 1
    z = Lengths.zipf(1.5, 5, 1000).sample(rng, 10_000)
    assert z.min() == 5 and z.max() <= 1000 and np.median(z) < 20   # heavy head, long tail


@pytest.mark.parametrize("make, words", [
    (lambda: Lengths("normal"), "unknown length distribution"),
    (lambda: Lengths.uniform(10, 5), "low <= cap"),
    (lambda: Lengths.zipf(1.0, 1, 10), "exponent must be > 1"),
    (lambda: Lengths.lognormal(0, 1.0), "value >= 1"),
    (lambda: Arrivals("burst", 1.0), "unknown arrival process"),
    (lambda: Arrivals("poisson", 0.0), "must be positive"),
    (lambda: synthetic(-1, Arrivals("poisson", 1.0), Lengths.fixed(1), Lengths.fixed(1)), "n >= 0"),
    (lambda: from_dataset("wikipedia", 10, Arrivals("poisson", 1.0)), "unknown dataset"),
])
def test_bad_parameters_are_config_errors(make, words):
    with pytest.raises(ConfigError, match=words):
        make()


def test_every_dataset_states_its_source():
    assert {"sharegpt4", "arxiv_summarization", "sharegpt", "humaneval", "longbench_summarization"} <= set(DATASETS)
    assert all(d.source for d in DATASETS.values())


def test_sessions_carry_their_history_as_prefix():
    w = sessions(200, Arrivals("poisson", 1.0), Lengths.fixed(100), Lengths.fixed(50), mean_turns=5.5, seed=2)
    assert len(w) > 200 and np.all(np.diff(w.arrival_s) >= 0)
    assert len(w) / 200 == pytest.approx(5.5, rel=0.2)
    for s in (0, 1, 2):
        turns = np.flatnonzero(w.session == s)
        order = turns[np.argsort(w.turn[turns])]
        assert list(w.prefix[order]) == [150 * k for k in range(len(order))]
        assert list(w.prompt_tokens[order]) == [150 * k + 100 for k in range(len(order))]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_trace_round_trip(tmp_path, suffix):
    w = sessions(20, Arrivals("gamma", 2.0, cv=2.0), Lengths.uniform(5, 50), Lengths.uniform(1, 9), seed=5)
    path = tmp_path / f"trace{suffix}"
    save_trace(w, path)
    back = load_trace(path)
    for name in ("prompt_tokens", "output_tokens", "priority", "session", "turn", "prefix"):
        assert np.array_equal(getattr(back, name), getattr(w, name)), name
    assert np.allclose(back.arrival_s, w.arrival_s)


@pytest.mark.parametrize("text, words", [
    ('{"arrival_s": 0, "prompt_tokens": 5}\n', "line 1 has no output_tokens|:1 has no output_tokens"),
    ('{"arrival_s": 0, "prompt_tokens": 5, "output_tokens": 2}\nnot json\n', ":2 is not JSON"),
    ('{"arrival_s": "soon", "prompt_tokens": 5, "output_tokens": 2}\n', "arrival_s is not a number"),
    ('{"arrival_s": 1, "prompt_tokens": -5, "output_tokens": 2}\n', "must be a finite number >= 0"),
    ('{"arrival_s": 1, "prompt_tokens": 0, "output_tokens": 2}\n', "at least one prompt"),
    ("[1, 2, 3]\n", "not an object"),
])
def test_malformed_traces_name_the_line(tmp_path, text, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_trace(path)
    with pytest.raises(ConfigError, match="cannot read trace"):
        load_trace(tmp_path / "missing.jsonl")


def test_unsorted_input_is_sorted_by_arrival():
    w = Workload(np.array([3.0, 1.0, 2.0]), np.array([30, 10, 20]), np.array([3, 1, 2]))
    assert list(w.arrival_s) == [1.0, 2.0, 3.0] and list(w.prompt_tokens) == [10, 20, 30]
    with pytest.raises(ConfigError, match="has 2 entries, not 3"):
        Workload(np.array([1.0, 2.0, 3.0]), np.array([1, 2]), np.array([1, 1, 1]))


def test_a_mixture_draws_each_sample_from_one_part_by_weight():
    m = Lengths.mixture([(1, Lengths.fixed(5)), (3, Lengths.fixed(100))], cap=1000)
    x = m.sample(np.random.default_rng(0), 20_000)
    assert set(np.unique(x)) == {5, 100}
    assert abs((x == 5).mean() - 0.25) < 0.02
    assert m.sample(np.random.default_rng(1), 0).shape == (0,)
    with pytest.raises(ConfigError, match="mixture"):
        Lengths.mixture([])
    with pytest.raises(ConfigError, match="mixture"):
        Lengths.mixture([(0, Lengths.fixed(5))])
