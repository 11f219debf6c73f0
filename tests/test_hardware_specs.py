"""Device and model specs: the packaged data match the datasheets and published configs,
lookups name close matches, and a malformed data file names its file, entry and field."""
from __future__ import annotations

from pathlib import Path

import pytest

from aios.errors import ConfigError, NotFound
from aios.hardware import DTYPE_BYTES, get_device, get_model, load_devices, load_models

# Published totals, from each model's paper or card (see `source` in data/models.toml).
PUBLISHED_PARAMS = {
    "opt-13b": 12.9e9, "opt-66b": 65.7e9, "opt-175b": 175e9,
    "llama-7b": 6.7e9, "llama-30b": 32.5e9, "llama-2-7b": 6.74e9, "llama-2-13b": 13.0e9, "llama-2-70b": 69.0e9,
    "llama-3-8b": 8.03e9, "mistral-7b": 7.24e9, "yi-34b": 34.4e9,
    "qwen-32b": 32.5e9,  # Qwen1.5-32B, as its Hugging Face card counts it
    "falcon-180b": 180e9,
}

# NanoFlow Table 1 (PAPERS.md §14): memory GB, bandwidth GB/s, FP16 TF, NVLink GB/s both ways.
NANOFLOW_TABLE_1 = {
    "a100-40gb": (40, 1555, 312, 600),
    "a100-80gb": (80, 2000, 312, 600),
    "h100-sxm": (80, 3352, 989, 900),
    "h200": (141, 4800, 989, 900),
}

LLAMA_TOML = """
[tiny-llama]
num_layers = 2
hidden_size = 64
num_heads = 4
num_kv_heads = 2
intermediate_size = 128
vocab_size = 1000
mlp = "gated"
tied_embeddings = false
source = "a test"
"""


def test_every_packaged_model_has_a_published_total():
    assert set(load_models()) == set(PUBLISHED_PARAMS)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_num_params_within_3_percent_of_the_published_total(name):
    assert get_model(name).num_params() == pytest.approx(PUBLISHED_PARAMS[name], rel=0.03)


@pytest.mark.parametrize(("name", "kv_bytes"), [
    ("llama-2-7b", 32 * 2 * 32 * 128 * 2),     # 524288
    ("llama-3-8b", 32 * 2 * 8 * 128 * 2),      # 131072: GQA keeps a quarter of the heads
    ("opt-13b", 40 * 2 * 5120 * 2),            # 819200
])
def test_kv_bytes_per_token_exact_at_fp16(name, kv_bytes):
    assert get_model(name).kv_bytes_per_token() == kv_bytes
    assert get_model(name).kv_bytes_per_token(DTYPE_BYTES["fp8"]) == kv_bytes // 2


def test_weights_and_flops_follow_the_parameter_count():
    model = get_model("llama-2-7b")
    assert model.head_dim == 128
    assert model.weight_bytes() == 2 * model.num_params()
    assert model.weight_bytes(DTYPE_BYTES["fp32"]) == 4 * model.num_params()
    # 2 FLOPs per weight, without the 2 x 32000 x 4096 of embeddings and LM head
    assert model.flops_per_token() == 2 * (model.num_params() - 2 * 32000 * 4096)


@pytest.mark.parametrize("name", sorted(NANOFLOW_TABLE_1))
def test_devices_match_nanoflow_table_1(name):
    memory_gb, bandwidth_gb_s, fp16_tf, link_gb_s = NANOFLOW_TABLE_1[name]
    device = get_device(name)
    # the datasheet's GB are binary on the part; the driver keeps 0.8 GiB (devices.toml)
    assert device.hbm_bytes == pytest.approx(memory_gb * 2**30 - 0.8 * 2**30, rel=0.01)
    assert device.hbm_bytes_per_s == pytest.approx(bandwidth_gb_s * 1e9)
    assert device.flops("fp16") == pytest.approx(fp16_tf * 1e12)
    assert 2 * device.nvlink_bytes_per_s == pytest.approx(link_gb_s * 1e9)   # stored one way


@pytest.mark.parametrize(("name", "fp16_tf", "bandwidth_gb_s"), [("l4", 121, 300), ("a10", 125, 600)])
def test_pcie_cards_have_no_nvlink(name, fp16_tf, bandwidth_gb_s):
    device = get_device(name)
    assert device.flops("fp16") == pytest.approx(fp16_tf * 1e12)
    assert device.hbm_bytes_per_s == pytest.approx(bandwidth_gb_s * 1e9)
    assert device.hbm_bytes == 24 * 10**9
    assert device.nvlink_bytes_per_s == 0
    assert device.pcie_bytes_per_s == 32e9


def test_every_device_states_its_source_and_only_known_dtypes():
    for device in load_devices().values():
        assert device.source
        assert set(device.peak_flops) <= set(DTYPE_BYTES)


def test_lookup_ignores_case():
    assert get_device("A100-80GB") is get_device("a100-80gb")
    assert get_model("Llama-2-70B").num_kv_heads == 8


def test_unknown_device_names_the_close_ones():
    with pytest.raises(NotFound) as caught:
        get_device("h100")
    assert "h100-sxm" in caught.value.hint
    with pytest.raises(NotFound) as caught:
        get_model("llama2-7b")
    assert "llama-2-7b" in caught.value.hint


def test_missing_dtype_names_the_ones_the_device_has():
    with pytest.raises(NotFound) as caught:
        get_device("a10").flops("fp8")
    assert caught.value.field == "dtype"
    assert "fp16" in caught.value.hint


def test_the_default_load_is_cached_and_not_shared():
    models = load_models()
    models.pop("opt-13b")
    assert "opt-13b" in load_models()
    assert load_models()["llama-3-8b"] is get_model("llama-3-8b")


def test_a_custom_file_adds_a_model(tmp_path: Path):
    path = tmp_path / "models.toml"
    path.write_text(LLAMA_TOML)
    model = load_models(path)["tiny-llama"]
    assert model.head_dim == 16
    assert model.num_params() == 2 * 1000 * 64 + 2 * (64 * (4 + 2 * 2) * 16 + 64 * 64 + 3 * 64 * 128)
    assert model.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 2


@pytest.mark.parametrize(("edit", "field"), [
    (lambda text: text.replace("num_layers = 2\n", ""), "tiny-llama.num_layers"),            # missing
    (lambda text: text.replace("num_layers = 2", 'num_layers = "2"'), "tiny-llama.num_layers"),  # type
    (lambda text: text.replace("mlp = \"gated\"", "mlp = \"swiglu\""), "tiny-llama.mlp"),     # value
    (lambda text: text + "rope_theta = 10000.0\n", "tiny-llama.rope_theta"),                 # unknown
    (lambda text: text.replace("num_kv_heads = 2", "num_kv_heads = 3"), "tiny-llama.num_kv_heads"),
])
def test_a_malformed_model_names_file_entry_and_field(tmp_path: Path, edit, field):
    path = tmp_path / "models.toml"
    path.write_text(edit(LLAMA_TOML))
    with pytest.raises(ConfigError) as caught:
        load_models(path)
    assert caught.value.field == field
    assert str(path) in caught.value.message
    assert "'tiny-llama'" in caught.value.message
    assert field.split(".")[1] in caught.value.message


def test_a_malformed_device_names_the_bad_dtype(tmp_path: Path):
    path = tmp_path / "devices.toml"
    path.write_text('[x1]\npeak_flops = { fp64 = 1e12 }\nhbm_bytes = 1\nhbm_bytes_per_s = 1.0\n'
                    'nvlink_bytes_per_s = 0\npcie_bytes_per_s = 1.0\nsource = "a test"\n')
    with pytest.raises(ConfigError) as caught:
        load_devices(path)
    assert caught.value.field == "x1.peak_flops.fp64"


def test_a_file_that_is_not_toml_is_a_config_error(tmp_path: Path):
    path = tmp_path / "devices.toml"
    path.write_text("[a100\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_devices(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_devices(tmp_path / "absent.toml")
