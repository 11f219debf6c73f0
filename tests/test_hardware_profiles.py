"""Measured iteration profiles (aios.hardware.profiles): the packaged fits load and time
iterations as their authors' formula does, a CostModel given one uses them, the roofline
agrees with an independently profiled engine, and a bad file or lookup says what is wrong."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aios.errors import ConfigError, NotFound
from aios.hardware.cost import CostModel
from aios.hardware.engine import Engine, EngineConfig
from aios.hardware.profiles import get_profile, load_profiles
from aios.hardware.specs import get_device, get_model
from aios.hardware.workload import Workload


def cost(engine: str | None, tp: int = 4, pp: int = 1) -> CostModel:
    prof = get_profile(engine, "opt-66b", "a100-80gb", tp) if engine else None
    return CostModel(get_model("opt-66b"), get_device("a100-80gb"), tp=tp, pp=pp, profile=prof)


def test_the_packaged_profiles_cover_distserves_engines_and_cite_their_source():
    table = load_profiles()
    assert {(e, m, t) for e, m, _, t in table} >= {("distserve", "opt-66b", 4), ("vllm-0.2", "opt-66b", 4),
                                                  ("distserve", "opt-66b", 2), ("distserve", "opt-13b", 1)}
    assert all("LLMServe/DistServe" in p.source for p in table.values())


def test_a_profile_times_an_iteration_by_its_fitted_formula():
    """DistServe's fit of its own engine, OPT-66B at TP4: prefill ms = a + b sum(l) + c sum(l^2);
    decode ms = a + b (context incl. the new tokens) + c B, a second fit from 95 sequences."""
    p = get_profile("distserve", "opt-66b", "a100-80gb", 4)
    a, b, c = p.prefill_ms
    assert p.step_s([2000, 1000], 0, 0) == pytest.approx((a + b * 3000 + c * (2000 ** 2 + 1000 ** 2)) * 1e-3)
    a, b, c = p.decode_ms
    assert p.step_s([], 20, 20 * 2001) == pytest.approx((a + b * 20 * 2001 + c * 20) * 1e-3)
    a, b, c = p.decode_large_ms
    assert p.step_s([], 95, 95_000) == pytest.approx((a + b * 95_000 + c * 95) * 1e-3)
    # a mixed iteration: the prefill step plus the decodes' variable part
    pa, pb, pc = p.prefill_ms
    da, db, dc = p.decode_ms
    assert p.step_s([512], 3, 3000) == pytest.approx((pa + pb * 512 + pc * 512 ** 2 + db * 3000 + dc * 3) * 1e-3)


def test_a_cost_model_with_a_profile_is_timed_by_it_and_splits_it_over_pipeline_stages():
    prof = get_profile("vllm-0.2", "opt-66b", "a100-80gb", 4)
    c = cost("vllm-0.2")
    assert c.prefill_time(2000) == pytest.approx(prof.step_s([2000], 0, 0))
    assert c.decode_time(20, 2000) == pytest.approx(prof.step_s([], 20, 20 * 2001))
    it = c.iteration(np.array([2000]), np.zeros(1, np.int64), np.zeros(0, np.int64))
    assert it.time_s == pytest.approx(prof.step_s([2000], 0, 0)) and it.flops > 0 and it.gemm_s == 0
    staged = cost("distserve", tp=2, pp=2)
    whole = get_profile("distserve", "opt-66b", "a100-80gb", 2)
    assert staged.step_time([2000], [0], 0, 0) == pytest.approx(whole.step_s([2000], 0, 0) / 2)
    # memory stays the roofline's
    assert c.kv_capacity_tokens(0.95) == cost(None).kv_capacity_tokens(0.95)


def test_the_roofline_agrees_with_distserves_profile_of_its_own_engine():
    """An independent check of the default calibration: DistServe's measured engine (OPT-66B,
    TP4, A100-80GB) and the roofline agree within 20% on a 2k prefill and on decode steps."""
    roof, measured = cost(None), cost("distserve")
    assert roof.prefill_time(2000) == pytest.approx(measured.prefill_time(2000), rel=0.10)
    for batch in (8, 32, 64):
        assert roof.decode_time(batch, 2000) == pytest.approx(measured.decode_time(batch, 2000), rel=0.20), batch
    # vLLM 0.2, as DistServe profiled it, prefills ~1.8x slower than its engine
    assert 1.6 < cost("vllm-0.2").prefill_time(2000) / measured.prefill_time(2000) < 2.0


def test_an_engine_runs_on_a_profiled_cost_model():
    w = Workload(np.linspace(0, 5, 20), np.full(20, 1900), np.full(20, 40))
    r = Engine(cost("vllm-0.2"), EngineConfig(max_seq_len=2048, gpu_memory_utilization=0.95)).run(w)
    assert np.isfinite(r.finish_s).all() and (r.output_tokens == 40).all()
    # every request waits at least its own prefill
    assert (r.ttft_s >= cost("vllm-0.2").prefill_time(1900) - 1e-9).all()


def test_an_unknown_engine_or_setting_names_what_was_profiled():
    with pytest.raises(NotFound, match="no iteration profile of engine 'turbo'") as info:
        get_profile("turbo", "opt-66b", "a100-80gb", 4)
    assert "distserve" in info.value.hint
    with pytest.raises(NotFound, match="not profiled for opt-66b on a100-80gb at tp=1") as info:
        get_profile("distserve", "opt-66b", "a100-80gb", 1)
    assert "tp=4" in info.value.hint
    with pytest.raises(ConfigError, match="not opt-66b on a100-80gb at tp=2"):
        CostModel(get_model("opt-66b"), get_device("a100-80gb"), tp=2,
                  profile=get_profile("distserve", "opt-66b", "a100-80gb", 4))


GOOD = '[e.m.d]\nsource = "a test"\n[e.m.d.tp1]\nprefill_ms = [1, 0.1, 0]\ndecode_ms = [1, 0, 0.1]\n' \
       'decode_large_ms = [1, 0, 0.1]\nlarge_batch_from = 8\n'


@pytest.mark.parametrize("text, field", [
    ("not [ toml", "profiles"),
    (GOOD.replace('source = "a test"\n', ""), "e.m.d.source"),
    (GOOD.replace("[e.m.d.tp1]", "[e.m.d.one]"), "e.m.d.one"),
    (GOOD.replace("prefill_ms = [1, 0.1, 0]", "prefill_ms = [1, 0.1]"), "e.m.d.tp1.prefill_ms"),
    (GOOD.replace("prefill_ms = [1, 0.1, 0]", 'prefill_ms = [1, "x", 0]'), "e.m.d.tp1.prefill_ms"),
    (GOOD.replace("decode_ms = [1, 0, 0.1]", "decode_ms = [-1, 0, 0.1]"), "e.m.d.tp1"),
    (GOOD.replace("large_batch_from = 8", "large_batch_from = 0"), "e.m.d.tp1.large_batch_from"),
    (GOOD.replace("large_batch_from = 8", "large_batch_from = 8\nspeedup = 2"), "e.m.d.tp1"),
    (GOOD.replace("large_batch_from = 8\n", ""), "e.m.d.tp1"),
])
def test_a_malformed_profile_file_names_the_field(tmp_path: Path, text: str, field: str):
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_profiles(path)
    assert info.value.field == field


def test_a_good_profile_file_loads(tmp_path: Path):
    path = tmp_path / "profiles.toml"
    path.write_text(GOOD)
    p = load_profiles(path)[("e", "m", "d", 1)]
    assert p.step_s([10], 0, 0) == pytest.approx(2e-3)
