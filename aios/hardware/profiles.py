"""Measured iteration times (`data/profiles.toml`): an engine's prefill and decode steps as
a paper's authors profiled them on real GPUs and fitted them, per (engine, model, device,
tensor parallelism). A `CostModel(..., profile=...)` times its iterations by one instead of
by the roofline; what the roofline also gives (memory, KV transfers, FLOPs and bytes for
utilization) stays the roofline's.

Where an engine of a paper was profiled, its profile is the most direct calibration there
is: a measurement of that engine's iterations on that model and device, taken before and
apart from any serving result. Its limits: it covers only the (model, device, tp) that were
profiled, and it was fitted on whole prefills and decode-only steps, so a mixed or chunked
iteration is the sum of a prefill step and a decode step's variable part (one intercept),
and a chunk's attention to the cached tokens before it is not charged."""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from aios.config import read_toml
from aios.errors import ConfigError, NotFound

DATA_FILE = Path(__file__).with_name("data") / "profiles.toml"
_FIELDS = ("prefill_ms", "decode_ms", "decode_large_ms", "large_batch_from")


@dataclass(frozen=True, slots=True)
class IterationProfile:
    """One engine's fitted iteration times on one (model, device, tp), in milliseconds:
    prefill = a + b sum(l) + c sum(l^2) over the prompts batched; decode = a + b C + c B for
    B sequences holding C tokens of context (new token included), with `decode_large_ms`
    from `large_batch_from` sequences on."""
    engine: str
    model: str
    device: str
    tp: int
    prefill_ms: tuple[float, float, float]
    decode_ms: tuple[float, float, float]
    decode_large_ms: tuple[float, float, float]
    large_batch_from: int
    source: str

    def step_s(self, prefill_lens: list[int], num_decodes: int, context_tokens: int) -> float:
        """One iteration, in seconds, of prefill chunks `prefill_lens` and `num_decodes`
        decodes holding `context_tokens` tokens in all (each one's new token included)."""
        ms = 0.0
        if prefill_lens:
            a, b, c = self.prefill_ms
            ms = a + b * sum(prefill_lens) + c * sum(x * x for x in prefill_lens)
        if num_decodes:
            a, b, c = self.decode_large_ms if num_decodes >= self.large_batch_from else self.decode_ms
            ms += b * context_tokens + c * num_decodes + (0.0 if prefill_lens else a)
        return ms * 1e-3


def get_profile(engine: str, model: str, device: str, tp: int, path: Path | None = None) -> IterationProfile:
    """The profile of `engine` serving `model` on `device` at tensor parallelism `tp`; a
    NotFound names what was profiled instead."""
    table = load_profiles(path)
    key = (engine, model.lower(), device.lower(), tp)
    if key in table:
        return table[key]
    engines = sorted({k[0] for k in table})
    if engine not in engines:
        raise NotFound(f"no iteration profile of engine {engine!r}", field="profile",
                       hint=f"profiled engines: {', '.join(engines)} (in {DATA_FILE.name})")
    have = sorted(f"{m} on {d} at tp={t}" for e, m, d, t in table if e == engine)
    raise NotFound(f"engine {engine!r} was not profiled for {model} on {device} at tp={tp}", field="profile",
                   hint=f"profiled: {'; '.join(have)}; or leave the profile out to use the roofline")


def load_profiles(path: Path | None = None) -> Mapping[tuple[str, str, str, int], IterationProfile]:
    """Every profile of a file (default: the packaged data/profiles.toml), by (engine,
    model, device, tp). A malformed file raises ConfigError naming the table and field."""
    return _default() if path is None else _parse(Path(path))


@functools.cache
def _default() -> Mapping[tuple[str, str, str, int], IterationProfile]:
    return _parse(DATA_FILE)


def _parse(path: Path) -> Mapping[tuple[str, str, str, int], IterationProfile]:
    data = read_toml(path, "profiles")
    out: dict[tuple[str, str, str, int], IterationProfile] = {}
    for engine, models in data.items():
        for model, devices in _tables(path, engine, models).items():
            for device, entry in _tables(path, f"{engine}.{model}", devices).items():
                where = f"{engine}.{model}.{device}"
                entry = _tables(path, where, entry, allow={"source"})
                source = entry.pop("source", None)
                if not isinstance(source, str) or not source.strip():
                    raise ConfigError(f"{path}: [{where}] must say where its profiles come from in `source`",
                                      field=f"{where}.source")
                if not entry:
                    raise ConfigError(f"{path}: [{where}] has no [{where}.tpN] table", field=where)
                for tp_key, fit in entry.items():
                    out[(engine, model, device, _tp(path, where, tp_key))] = _profile(
                        path, f"{where}.{tp_key}", fit, engine, model, device, _tp(path, where, tp_key), source)
    return MappingProxyType(out)


def _tables(path: Path, where: str, value: object, allow: set[str] = frozenset()) -> dict:   # type: ignore[assignment]
    if not isinstance(value, dict) or any(not isinstance(v, dict) for k, v in value.items() if k not in allow):
        raise ConfigError(f"{path}: [{where}] must hold tables", field=where,
                          hint="[ENGINE.MODEL.DEVICE] with source, then [ENGINE.MODEL.DEVICE.tpN] tables")
    return dict(value)


def _tp(path: Path, where: str, key: str) -> int:
    if not (key.startswith("tp") and key[2:].isdigit() and int(key[2:]) >= 1):
        raise ConfigError(f"{path}: [{where}.{key}] is not a tensor-parallel degree", field=f"{where}.{key}",
                          hint="name it tpN, for example tp4")
    return int(key[2:])


def _profile(path: Path, where: str, fit: dict, engine: str, model: str, device: str, tp: int,
             source: str) -> IterationProfile:
    if set(fit) != set(_FIELDS):
        missing, extra = set(_FIELDS) - set(fit), set(fit) - set(_FIELDS)
        raise ConfigError(f"{path}: [{where}] " + (f"lacks {', '.join(sorted(missing))}" if missing
                                                   else f"has unknown field(s) {', '.join(sorted(extra))}"),
                          field=where, hint=f"fields: {', '.join(_FIELDS)}")
    coeffs = {}
    for name in _FIELDS[:3]:
        v = fit[name]
        if (not isinstance(v, list) or len(v) != 3
                or not all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in v)):
            raise ConfigError(f"{path}: {where}.{name} must be three finite numbers [a, b, c], not {v!r}",
                              field=f"{where}.{name}")
        coeffs[name] = tuple(float(x) for x in v)
    if coeffs["prefill_ms"][0] < 0 or coeffs["decode_ms"][0] < 0 or coeffs["decode_large_ms"][0] < 0:
        raise ConfigError(f"{path}: [{where}] has a negative intercept: an iteration cannot take less than nothing",
                          field=where)
    large = fit["large_batch_from"]
    if isinstance(large, bool) or not isinstance(large, int) or large < 1:
        raise ConfigError(f"{path}: {where}.large_batch_from must be a positive integer, not {large!r}",
                          field=f"{where}.large_batch_from")
    return IterationProfile(engine, model, device, tp, coeffs["prefill_ms"], coeffs["decode_ms"],  # type: ignore[arg-type]
                            coeffs["decode_large_ms"], large, source)
