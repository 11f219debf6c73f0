"""`aios sim run`: the TOML file's schema and its errors (file, section and field named;
exit 2 with a one-line message), a tiny run's JSON and tables, charts, sweeps, the
capacity search, traces and determinism under a seed."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aios.cli.main import app, main
from aios.errors import ConfigError
from aios.hardware.sim import SYSTEMS, load_config, simulate, unserved_reasons

DOCS = Path(__file__).resolve().parents[1] / "docs" / "sim"
BASE = {
    "model": {"name": "llama-2-7b", "device": "a100-80gb"},
    "engine": {"scheduler": "vllm"},
    "workload": {"requests": 30, "rate": 8, "seed": 3, "prompt": {"dist": "uniform", "low": 16, "high": 256},
                 "output": {"dist": "fixed", "n": 24}},
}


def toml(sections: dict) -> str:
    """Tables of plain values (strings, numbers, booleans, lists, inline tables) as TOML."""
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)   # true/false, numbers and simple strings read the same in TOML
    return "".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items()) + "\n"
                   for name, table in sections.items())


def changed(change: dict) -> str:
    """BASE with `change`'s keys set (None: removed), section by section."""
    sections = {name: dict(table) for name, table in BASE.items()}
    for name, table in change.items():
        merged = sections.setdefault(name, {})
        for k, v in table.items():
            if v is None:
                merged.pop(k, None)
            else:
                merged[k] = v
    return toml(sections)


TINY = toml(BASE)
SLO = """
[slo]
ttft_s = 0.5
tpot_s = 0.05
attainment = 0.9
"""
SUMMARY_KEYS = {"requests", "finished", "unserved", "unserved_reasons", "throughput_tokens_per_s", "ttft_p50_s",
                "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "e2e_p50_s", "mean_batch", "preemptions", "swaps",
                "iterations", "makespan_s"}


def write(tmp_path: Path, text: str, name: str = "sim.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def sim_json(*args: str) -> dict:
    result = CliRunner().invoke(app, ["sim", "run", *args, "--json"])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def test_the_example_files_parse():
    vidur = load_config(DOCS / "vllm-llama2-7b.toml")
    assert (vidur.model.name, vidur.model.device, vidur.engine.scheduler) == ("llama-2-7b", "a100-80gb", "vllm")
    assert (vidur.workload.requests, vidur.workload.rate, vidur.workload.prompt.n, vidur.workload.output.n) == \
        (10000, 12.0, 512, 128)
    sweep = load_config(DOCS / "sarathi-sweep.toml")
    assert sweep.sweep.rates and sweep.sweep.capacity and sweep.slo is not None
    assert set(SYSTEMS) >= {sweep.system.kind}


def test_seed_flag_and_relative_trace(tmp_path):
    assert load_config(write(tmp_path, TINY), seed=11).workload.seed == 11
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,100,5\n0.1,50,3\n0.3,20,2\n")
    config = load_config(write(tmp_path, changed({"workload": {"trace": "traces/t.csv", "requests": 2, "rate": None,
                                                           "prompt": None, "output": None}})))
    assert Path(config.workload.trace) == tmp_path / "traces" / "t.csv"
    report = simulate(config)
    assert report.summary()["requests"] == 2 and report.summary()["finished"] == 2
    (tmp_path / "traces" / "t.csv").write_text("arrival_s,prompt_tokens,output_tokens\n0,100,five\n")
    with pytest.raises(ConfigError, match=r"\[workload\] trace: .*t\.csv:2: output_tokens is not a number"):
        simulate(config)


BAD = [   # (the change to BASE, or a file's text; section, field, words of the message)
    ("[model\n", None, None, "not valid TOML"),
    (TINY + "[modle]\nname = 1\n", "modle", None, "no such section"),
    ({"engine": {"shceduler": "vllm"}}, "engine", "shceduler", "no such field"),
    ({"workload": {"rate": "fast"}}, "workload", "rate", "valid number"),
    ({"workload": {"requests": True}}, "workload", "requests", "valid integer"),
    ({"model": {"name": "llama-9"}}, "model", "name", "unknown model"),
    ({"model": {"device": "a100-81gb"}}, "model", "device", "unknown device"),
    ({"model": {"name": "llama-2-70b"}}, "model", "tp", "does not fit"),
    ({"model": {"tp": 3}}, "model", "tp", "does not divide"),
    ({"engine": {"scheduler": "fcfs"}}, "engine", "scheduler", "'vllm'"),
    ({"engine": {"gpu_memory_utilization": 1.5}}, "engine", "gpu_memory_utilization", "(0, 1]"),
    ({"system": {"kind": "vidur"}}, "system", "kind", "unknown system"),
    ({"workload": {"prompt": {"dist": "gauss", "n": 3}}}, "workload", "prompt", "gauss"),
    ({"workload": {"prompt": {"dist": "fixed"}}}, "workload", "prompt.n", "required"),
    ({"workload": {"prompt": {"dist": "lognormal", "median": 100}}}, "workload", "prompt.sigma", "sigma or p90"),
    ({"workload": {"prompt": {"dist": "uniform", "low": 50, "high": 10}}}, "workload", "prompt.low", "low <= cap"),
    ({"workload": {"dataset": "sharegpt"}}, "workload", "dataset", "not both"),
    ({"workload": {"dataset": "sharegtp", "prompt": None, "output": None}}, "workload", "dataset",
     "unknown dataset"),
    ({"workload": {"rate": None}}, "workload", "rate", "needs an arrival rate"),
    ({"workload": {"trace": "missing.csv", "prompt": None, "output": None, "rate": None}}, "workload", "trace",
     "no trace file"),
    ({"workload": {"cv": 2.0}}, "workload", "cv", "gamma"),
    ({"slo": {"attainment": 0.9}}, "slo", None, "ttft_s, tpot_s"),
    ({"slo": {"ttft_s": -1}}, "slo", "ttft_s", "greater than 0"),
    ({"sweep": {"capacity": True}}, "sweep", "capacity", "needs an [slo]"),
    ({"sweep": {"rates": [1, -2]}}, "sweep", "rates.1", "greater than 0"),
    ({"sweep": {}}, "sweep", "rates", "needs rates"),
]


@pytest.mark.parametrize(("change", "section", "field", "words"), BAD, ids=[b[3] for b in BAD])
def test_a_bad_file_is_a_config_error_naming_file_section_and_field(tmp_path, change, section, field, words):
    path = write(tmp_path, change if isinstance(change, str) else changed(change))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    err = caught.value
    assert str(path) in err.message and words in err.message, err.message
    if section is not None:
        assert f"[{section}]" in err.message
        assert err.field == (f"{section}.{field}" if field else section)
        if field is not None:
            assert field in err.message


def test_the_command_exits_2_with_a_one_line_message(tmp_path, monkeypatch, capsys):
    path = write(tmp_path, changed({"model": {"name": "llama-9"}}))
    result = CliRunner().invoke(app, ["sim", "run", "--config", str(path)])
    assert isinstance(result.exception, ConfigError) and result.exception.field == "model.name"
    monkeypatch.setattr(sys, "argv", ["aios", "sim", "run", "--config", str(path)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: {path}: [model] name: unknown model 'llama-9'"
    assert err[1].startswith("hint: did you mean") and len(err) == 2


def test_a_tiny_run_as_json(tmp_path):
    out = sim_json("--config", str(write(tmp_path, TINY + SLO)))
    assert set(out) == {"simulated", "note", "setup", "config", "summary", "sweep", "capacity", "timing", "plots"}
    assert out["simulated"] is True and out["note"].startswith("simulated figures")   # the JSON says so too
    s = out["summary"]
    assert SUMMARY_KEYS | {"slo_attainment", "slo_target", "goodput_requests_per_s"} <= set(s)
    assert s["requests"] == 30 and s["finished"] + s["unserved"] == 30
    assert 0 <= s["slo_attainment"] <= 1 and s["throughput_tokens_per_s"] > 0
    assert out["timing"]["runs"] == 1 and out["timing"]["requests"] == 30
    assert out["timing"]["iterations"] == s["iterations"] > 0 and out["timing"]["requests_per_s"] > 0
    assert out["setup"].startswith("llama-2-7b on 1x a100-80gb") and out["sweep"] == [] and out["plots"] == []


def test_unserved_requests_are_counted_with_their_reason(tmp_path):
    """A prompt longer than the whole KV cache can never be scheduled."""
    path = write(tmp_path, changed({"engine": {"gpu_memory_utilization": 0.19},
                                    "workload": {"prompt": {"dist": "uniform", "low": 16, "high": 4000}}}))
    out = sim_json("--config", str(path))
    s = out["summary"]
    assert s["unserved"] > 0 and s["finished"] + s["unserved"] == 30
    assert sum(s["unserved_reasons"].values()) == s["unserved"] and len(s["unserved_reasons"]) == 1
    assert re.fullmatch(r"needs \d+-\d+ KV blocks \(\d+-\d+ tokens\) but the instance has \d+",
                        next(iter(s["unserved_reasons"])))


def test_unserved_reasons_merge_when_only_numbers_differ():
    assert unserved_reasons({1: "needs 20 blocks of 10", 2: "needs 7 blocks of 10", 3: "could not be scheduled",
                             4: "needs 9.5 blocks of 10"}) == {"needs 7-20 blocks of 10": 3, "could not be scheduled": 1}


def test_the_summary_table(tmp_path):
    result = CliRunner().invoke(app, ["sim", "run", "--config", str(write(tmp_path, TINY + SLO))])
    assert result.exit_code == 0, result.output
    for words in ("Simulated:", "TTFT p50 / p99", "SLO attainment", "goodput", "sim speed", "iterations/s"):
        assert words in result.stdout
    assert "\x1b[" not in result.stdout


def test_a_sweep_has_one_row_per_rate_and_charts(tmp_path):
    text = TINY + SLO + "[sweep]\nrates = [2, 8, 40]\ncapacity = true\nmin_rate = 1\nmax_rate = 100\n"
    path, charts = write(tmp_path, text), tmp_path / "charts"
    out = sim_json("--config", str(path), "--plot", str(charts))
    assert [row["rate"] for row in out["sweep"]] == [2, 8, 40]
    assert all(row["finished"] + row["unserved"] == 30 for row in out["sweep"])
    assert out["sweep"][1]["ttft_p50_s"] == out["summary"]["ttft_p50_s"]   # rate 8 is the workload's own
    assert out["timing"]["runs"] == 3 + len({p[0] for p in out["capacity"]["probes"]} - {2.0, 8.0, 40.0})
    assert out["capacity"]["probes"] and out["capacity"]["target"] == 0.9
    names = {Path(p).name for p in out["plots"]}
    assert names == {"ttft_cdf.png", "tbt_cdf.png", "e2e_cdf.png", "latency_vs_load.png"}
    for p in out["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 5000
    table = CliRunner().invoke(app, ["sim", "run", "--config", str(path)])
    assert table.exit_code == 0 and "latency against load" in table.stdout and "capacity:" in table.stdout


def test_the_same_seed_gives_the_same_figures(tmp_path):
    path = str(write(tmp_path, TINY + SLO + "[sweep]\nrates = [4, 16]\n"))
    first, second = sim_json("--config", path), sim_json("--config", path)
    for out in (first, second):
        del out["timing"]
    assert first == second
    other = sim_json("--config", path, "--seed", "4")
    assert other["config"]["workload"]["seed"] == 4 and other["summary"] != first["summary"]


# ---- the other systems

def test_a_cluster_with_migration_a_distserve_pair_and_conversations(tmp_path):
    cluster = sim_json("--config", str(write(tmp_path, changed(
        {"system": {"kind": "cluster", "instances": 3, "dispatch": "least_load", "migration": True}}), "c.toml")))
    assert "cluster of 3 instances" in cluster["setup"]
    assert cluster["summary"]["finished"] == 30
    split = sim_json("--config", str(write(tmp_path, changed(
        {"system": {"kind": "distserve", "prefill_tp": 2, "decode_instances": 2}}), "d.toml")))
    assert "1 prefill x tp2 pp1 + 2 decode x tp1 pp1" in split["setup"] and split["summary"]["finished"] == 30
    talks = sim_json("--config", str(write(tmp_path, changed(
        {"engine": {"priority": True, "preemption": "swap", "kv_reuse": True},
         "workload": {"requests": None, "sessions": 6, "rate": 1.0, "mean_turns": 3, "priorities": 3},
         "system": {"kind": "conversations", "priority_interval_s": 0.5}}), "s.toml")))
    s = talks["summary"]
    assert "6 sessions" in talks["setup"] and s["finished"] + s["unserved"] == s["requests"] >= 6
    assert set(SYSTEMS) == {"single", "cluster", "distserve", "conversations"}


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"workload": {"sessions": 4}}, "workload.sessions", "kind conversations"),
    ({"system": {"kind": "conversations"}}, "system.kind", "kind conversations"),
    ({"workload": {"sessions": 4}, "system": {"kind": "conversations", "priority_interval_s": 1.0}},
     "engine.priority", "priority scheduling"),
    ({"system": {"kind": "distserve", "decode_tp": 3}}, "system.decode_tp", "does not divide"),
    ({"system": {"kind": "cluster", "instances": 0}}, "system.instances", ""),
])
def test_system_mistakes_name_their_field(tmp_path, change, field, words):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, changed(change)))
    assert e.value.field == field and words in e.value.message
