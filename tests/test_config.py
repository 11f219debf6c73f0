"""Settings: defaults, then a TOML file, then AIOS_* environment variables, then dotted
flags; every invalid value is a ConfigError that names the dotted field."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from aios.config import HardwareBackendSettings, LiteLLMBackendSettings, Settings, load_settings
from aios.errors import ConfigError


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "aios.toml"
    path.write_text(text)
    return path


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIOS_HOME", raising=False)
    s = load_settings(env={})
    assert s == Settings()
    assert s.scheduler.policy == "fifo"
    assert s.clock.mode == "wall" and s.clock.speed == 1.0
    assert s.shutdown == "drain"
    assert s.home == Path("~/.aios").expanduser()
    assert s.db_url == f"sqlite:///{Path('~/.aios').expanduser() / 'aios.db'}"
    (backend,) = s.backends
    assert isinstance(backend, HardwareBackendSettings)
    assert "sim-llama-3-8b" in backend.models


def test_settings_are_frozen() -> None:
    s = load_settings(env={})
    with pytest.raises(Exception, match="frozen"):
        s.scheduler.policy = "rr"   # type: ignore[misc]


def test_toml_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f"""
home = "{tmp_path}"
tool_slots = 4
[scheduler]
policy = "rr"
rr_slice_tokens = 16
[clock]
mode = "virtual"
[[backends]]
kind = "litellm"
models = ["openai/gpt-4o-mini"]
max_retries = 5
[[backends]]
kind = "hardware"
num_slots = 2
""")
    s = load_settings(path, env={})
    assert s.home == tmp_path
    assert s.db_url == f"sqlite:///{tmp_path / 'aios.db'}"
    assert s.tool_slots == 4
    assert (s.scheduler.policy, s.scheduler.rr_slice_tokens) == ("rr", 16)
    assert s.clock.mode == "virtual"
    litellm, hw = s.backends
    assert isinstance(litellm, LiteLLMBackendSettings)
    assert litellm.models == ["openai/gpt-4o-mini"] and litellm.max_retries == 5
    assert isinstance(hw, HardwareBackendSettings) and hw.num_slots == 2


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[scheduler]\npolicy = "rr"\nrr_slice_tokens = 16\n')
    s = load_settings(path, env={"AIOS_SCHEDULER__POLICY": "fair", "AIOS_TOOL_SLOTS": "3",
                                 "AIOS_CLOCK__SPEED": "2.5", "AIOS_DATABASE_URL": "sqlite:///x.db",
                                 "AIOS_HOME": str(tmp_path), "OTHER__VAR": "ignored"})
    assert s.scheduler.policy == "fair"
    assert s.scheduler.rr_slice_tokens == 16   # the rest of the file's section stays
    assert s.tool_slots == 3                    # JSON values are parsed: a number
    assert s.clock.speed == 2.5
    assert s.db_url == "sqlite:///x.db"
    assert s.home == tmp_path


def test_env_backends_as_json() -> None:
    s = load_settings(env={"AIOS_BACKENDS": '[{"kind": "litellm", "models": ["ollama/llama3"]}]'})
    (backend,) = s.backends
    assert isinstance(backend, LiteLLMBackendSettings) and backend.models == ["ollama/llama3"]


def test_flags_override_env_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[scheduler]\npolicy = "rr"\n')
    s = load_settings(path, env={"AIOS_SCHEDULER__POLICY": "fair", "AIOS_TOOL_SLOTS": "3"},
                      overrides={"scheduler.policy": "priority", "scheduler.aging_per_s": 0.5})
    assert s.scheduler.policy == "priority"
    assert s.scheduler.aging_per_s == 0.5
    assert s.tool_slots == 3


def test_home_from_env_does_not_beat_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, f'home = "{tmp_path / "from-file"}"\n')
    s = load_settings(path, env={"AIOS_HOME": str(tmp_path / "from-env")})
    assert s.home == tmp_path / "from-file"


@pytest.mark.parametrize(("overrides", "env", "field"), [
    ({"scheduler.policy": "lottery"}, {}, "scheduler.policy"),
    ({}, {"AIOS_SCHEDULER__POLICY": "lottery"}, "scheduler.policy"),
    ({"tool_slots": -1}, {}, "tool_slots"),
    ({"memory_slots": 0}, {}, "memory_slots"),
    ({}, {"AIOS_STORAGE_SLOTS": "-2"}, "storage_slots"),
    ({"backends": [{"kind": "hardware", "num_slots": -1}]}, {}, "backends.0.num_slots"),
    ({"backends": [{"kind": "litellm", "models": ["m"], "max_retries": -1}]}, {}, "backends.0.max_retries"),
    ({"backends": [{"kind": "litellm"}]}, {}, "backends.0.models"),
    ({"clock.speed": 0}, {}, "clock.speed"),
    ({"clock.mode": "sundial"}, {}, "clock.mode"),
    ({"scheduler.rr_slice_tokens": "many"}, {}, "scheduler.rr_slice_tokens"),
    ({"scheduler.nope": 1}, {}, "scheduler.nope"),
    ({"nope": 1}, {}, "nope"),
    ({}, {"AIOS_NOPE": "1"}, "nope"),
    ({"backends": [{"kind": "hardware", "colour": "red"}]}, {}, "backends.0.colour"),
    ({"drain_timeout_s": 0}, {}, "drain_timeout_s"),
    ({"memory_embedder": "minlm"}, {}, "memory_embedder"),
    ({}, {"AIOS_MEMORY_EMBEDDER": "/no/such/model"}, "memory_embedder"),
])
def test_invalid_value_names_the_field(overrides: dict, env: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, overrides=overrides)
    assert info.value.field == field
    assert field in info.value.message
    assert info.value.code == "invalid_config"


def test_value_under_a_scalar_conflicts() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, overrides={"shutdown": "drain", "shutdown.mode": "x"})
    assert info.value.field == "shutdown.mode"


def test_bad_toml_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[scheduler\npolicy = rr\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.field == "config"
    assert "not valid TOML" in info.value.message and str(path) in info.value.message
    assert "line 1, column 11" in info.value.message   # where it stops parsing, as the editor counts


def test_a_config_file_that_does_not_parse_stops_the_daemon_before_it_starts(tmp_path: Path) -> None:
    """aios kernel start --config FILE: one error line with the file, line and column; exit 2;
    nothing started, nothing written to the home."""
    import subprocess
    import sys
    path = write_toml(tmp_path, '[server]\nport = 8642\nhost = 127.0.0.1\n')
    home = tmp_path / "home"
    r = subprocess.run([sys.executable, "-m", "aios.cli.main", "kernel", "start", "--config", str(path)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "AIOS_HOME": str(home), "NO_COLOR": "1"})
    assert r.returncode == 2 and r.stderr.startswith(f"error: config file {path} is not valid TOML")
    assert "(at line 3, column 13)" in r.stderr and "\nhint: fix the file at that line" in r.stderr
    assert "Traceback" not in r.stderr
    assert not home.exists() or not any(home.iterdir())


def test_invalid_value_in_toml_file_names_the_field(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[scheduler]\npolicy = "lottery"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.field == "scheduler.policy"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.field == "config"
    assert str(path) in info.value.message and "does not exist" in info.value.message


def test_config_path_that_is_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path, env={})
    assert info.value.field == "config"
    assert str(tmp_path) in info.value.message


def test_config_file_that_is_not_text(tmp_path: Path) -> None:
    path = tmp_path / "aios.toml"
    path.write_bytes(b"\xff\xfe\x00policy")
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.field == "config"
    assert str(path) in info.value.message
