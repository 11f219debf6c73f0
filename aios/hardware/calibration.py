"""What a device achieves of its datasheet: the efficiency factors and fixed costs the cost
model multiplies the roofline by, read from one TOML table (`data/calibration.toml`).

Invariant: every number here comes from a measurement of a single operator (a GEMM, an
attention kernel, a collective, a copy), never from an end-to-end serving result, and
carries its source; a value that is an assumption says so in its source. A malformed file
raises ConfigError naming the file, the table and the field.

The file has a [default] table with every field, and family tables ([hopper]) that list
their `devices` and override some fields. `CalibrationTable.for_device(name)` resolves a
device to its family's values over the defaults."""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from aios.config import read_toml
from aios.errors import ConfigError

DATA_DIR = Path(__file__).with_name("data")
DEFAULT = "default"

# fraction fields must lie in (0, 1]; the rest are non-negative seconds or bytes
FRACTIONS = ("gemm_efficiency", "hbm_efficiency", "attention_prefill_efficiency",
             "attention_decode_efficiency", "nvlink_efficiency", "pcie_efficiency")
AMOUNTS = ("collective_latency_s", "copy_latency_s", "overhead_s", "overhead_per_layer_s", "overhead_per_seq_s",
           "reserved_bytes")
ENGINES = "engine"   # the table of engine profiles: [engine.NAME] overrides some fields on any device


@dataclass(frozen=True, slots=True)
class Calibration:
    """One device family's achievable fractions and fixed costs. Override a value for a
    what-if with `dataclasses.replace(cal, overhead_s=0.0)`; its source stays as it was."""
    family: str
    gemm_efficiency: float
    """Of dense peak FLOP/s, for a compute-bound GEMM."""
    hbm_efficiency: float
    """Of peak HBM bandwidth, for a memory-bound GEMM (weight read) or elementwise kernel."""
    attention_prefill_efficiency: float
    """Of dense peak FLOP/s, for causal prefill attention."""
    attention_decode_efficiency: float
    """Of peak HBM bandwidth, for paged decode attention reading the KV cache."""
    nvlink_efficiency: float
    """Of one-way NVLink bandwidth, for a large all-reduce (ring bus bandwidth) or send."""
    pcie_efficiency: float
    """Of one-way PCIe bandwidth, for a large pinned host<->device copy."""
    collective_latency_s: float
    """Fixed time of one all-reduce or send, besides its bytes."""
    copy_latency_s: float
    """Fixed time of one host<->device copy call (cudaMemcpyAsync), besides its bytes."""
    overhead_s: float
    """Fixed time of one iteration: CPU scheduling, input preparation, sampling, launches."""
    overhead_per_layer_s: float
    """Fixed time per layer of an iteration (an engine that launches its kernels one by one)."""
    overhead_per_seq_s: float
    """Fixed time per sequence in an iteration (an engine that prepares inputs and samples
    each sequence in Python)."""
    reserved_bytes: float
    """Device memory per GPU that holds neither weights nor KV (activations, CUDA context)."""
    sources: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)
    """Where each value comes from, by field name."""

    def ideal(self) -> Calibration:
        """The pure roofline: every efficiency 1, no fixed costs (memory reserve kept)."""
        return replace(self, family=f"{self.family} (ideal)", collective_latency_s=0.0, copy_latency_s=0.0, overhead_s=0.0,
                       overhead_per_layer_s=0.0, overhead_per_seq_s=0.0,
                       **{name: 1.0 for name in FRACTIONS})


@dataclass(frozen=True, slots=True)
class CalibrationTable:
    """Every family of a calibration file, and which devices belong to which."""
    families: Mapping[str, Calibration]
    device_family: Mapping[str, str]
    """Lower-case device name -> family; devices not listed use the default family."""
    engines: Mapping[str, Mapping[str, tuple[float, str]]] = field(default_factory=dict)
    """Engine profiles: name -> {field: (value, source)} laid over any device's values."""

    def for_device(self, device_name: str, engine: str | None = None) -> Calibration:
        """A device's calibration; with `engine`, that engine profile's fields over it (the
        fixed costs of an engine of another era, say)."""
        cal = self.families[self.device_family.get(device_name.lower(), DEFAULT)]
        if engine is None:
            return cal
        if engine not in self.engines:
            raise ConfigError(f"unknown engine profile {engine!r}", field="engine",
                              hint=f"one of: {', '.join(sorted(self.engines)) or '(none in this file)'}")
        over = self.engines[engine]
        return replace(cal, family=f"{cal.family}+{engine}", **{k: v for k, (v, _) in over.items()},
                       sources=MappingProxyType({**cal.sources, **{k: s for k, (_, s) in over.items()}}))


def load_calibration(path: Path | None = None) -> CalibrationTable:
    """The calibration table of a TOML file; default: the packaged data/calibration.toml."""
    if path is None:
        return _default_table()
    return _parse(Path(path))


@functools.cache
def _default_table() -> CalibrationTable:
    return _parse(DATA_DIR / "calibration.toml")


def _parse(path: Path) -> CalibrationTable:
    data = read_toml(path, "calibration")
    if not isinstance(data.get(DEFAULT), dict):
        raise ConfigError(f"{path}: no [{DEFAULT}] table", field=DEFAULT,
                          hint=f"[{DEFAULT}] must give every field: {', '.join(FRACTIONS + AMOUNTS)}")
    defaults = _values(path, DEFAULT, data[DEFAULT], require_all=True)
    families: dict[str, Calibration] = {}
    device_family: dict[str, str] = {}
    engines: dict[str, Mapping[str, tuple[float, str]]] = {}
    raw_engines = data.pop(ENGINES, {})
    if not isinstance(raw_engines, dict) or not all(isinstance(v, dict) for v in raw_engines.values()):
        raise ConfigError(f"{path}: [{ENGINES}] must hold profile tables [{ENGINES}.NAME]", field=ENGINES)
    for name, raw in raw_engines.items():
        engines[name] = MappingProxyType(_values(path, f"{ENGINES}.{name}", raw, require_all=False))
    for name, raw in data.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: {name!r} is a value, not a table", field=name,
                              hint=f"write it as [{name}] with its fields as sub-tables")
        values = defaults if name == DEFAULT else {**defaults, **_values(path, name, raw, require_all=False)}
        families[name] = Calibration(family=name, **{k: v for k, (v, _) in values.items()},
                                     sources=MappingProxyType({k: s for k, (_, s) in values.items()}))
        if name == DEFAULT:
            continue
        devices = raw.get("devices")
        if not isinstance(devices, list) or not devices or not all(isinstance(d, str) for d in devices):
            raise ConfigError(f"{path}: family {name!r}, field devices: must be a non-empty list of device names",
                              field=f"{name}.devices", hint='for example devices = ["h100-sxm", "h200"]')
        for device in devices:
            if device.lower() in device_family:
                raise ConfigError(f"{path}: device {device!r} is in families {device_family[device.lower()]!r} "
                                  f"and {name!r}", field=f"{name}.devices")
            device_family[device.lower()] = name
    return CalibrationTable(MappingProxyType(families), MappingProxyType(device_family), MappingProxyType(engines))


def _values(path: Path, family: str, raw: dict, *, require_all: bool) -> dict[str, tuple[float, str]]:
    """The {field: (value, source)} a family table gives, each checked."""
    known = set(FRACTIONS + AMOUNTS)
    out: dict[str, tuple[float, str]] = {}
    for key, entry in raw.items():
        if key == "devices" and family != DEFAULT and not family.startswith(f"{ENGINES}."):
            continue
        where = f"{family}.{key}"
        if key not in known:
            raise ConfigError(f"{path}: unknown field {where}", field=where,
                              hint=f"fields: {', '.join(FRACTIONS + AMOUNTS)}"
                                   + ("" if family == DEFAULT else ", devices"))
        if not isinstance(entry, dict) or set(entry) != {"value", "source"}:
            raise ConfigError(f"{path}: field {where} must be a table with exactly `value` and `source`",
                              field=where, hint=f"[{where}] then value = ... and source = \"...\"")
        value, source = entry["value"], entry["source"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{path}: field {where}.value must be a finite number, not {value!r}",
                              field=f"{where}.value")
        if key in FRACTIONS and not 0 < value <= 1:
            raise ConfigError(f"{path}: field {where}.value must be in (0, 1], not {value}",
                              field=f"{where}.value", hint="a fraction of the datasheet peak")
        if key in AMOUNTS and value < 0:
            raise ConfigError(f"{path}: field {where}.value must be >= 0, not {value}", field=f"{where}.value")
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{path}: field {where}.source must say where the value comes from",
                              field=f"{where}.source", hint='a measurement, or "assumption: ..." and why')
        out[key] = (float(value), source)
    missing = known - set(out)
    if require_all and missing:
        raise ConfigError(f"{path}: [{family}] lacks field(s) {', '.join(sorted(missing))}",
                          field=f"{family}.{min(missing)}", hint=f"[{DEFAULT}] must give every field")
    return out

