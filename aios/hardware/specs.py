"""What the hardware model simulates: devices (a GPU's datasheet numbers) and models (a
transformer's shape, from its published config). Both are data, not code: each lives in a
TOML file under `data/`, one table per entry, and adding a GPU or a model is a new table.

Invariant: every number is in base units (bytes, bytes/s, FLOP/s) and every entry names its
source. A malformed file raises ConfigError naming the file, the entry and the field.

Parameter counting (`ModelSpec.num_params`) takes the weight matrices only: embeddings, the
LM head when untied, and per layer the QKV, O and MLP matrices. Biases, norms and learned
positional embeddings (OPT's 2050 x hidden) are left out; they are under 0.1% of every
model here, and the published totals are matched within 1.5% (tests allow 3%)."""
from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aios.config import read_toml
from aios.errors import ConfigError, NotFound

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
DATA_DIR = Path(__file__).with_name("data")

Dtype = Literal["fp32", "tf32", "fp16", "bf16", "fp8", "int8"]


@dataclass(frozen=True, slots=True)
class Device:
    """One accelerator, as its datasheet gives it."""
    name: str
    peak_flops: Mapping[str, float] = field(hash=False)
    """Dense (no 2:4 sparsity) FLOP/s per dtype; fp32 is the non-tensor-core rate."""
    hbm_bytes: int
    """Device memory capacity (HBM, or GDDR6 on L4/A10)."""
    hbm_bytes_per_s: float
    """Peak device-memory bandwidth."""
    nvlink_bytes_per_s: float
    """Per-GPU NVLink bandwidth in one direction (half the datasheet's bidirectional total);
    0 when the device has none."""
    pcie_bytes_per_s: float
    """Host link in one direction, nominal."""
    source: str

    def flops(self, dtype: str) -> float:
        """Dense peak FLOP/s at `dtype`; NotFound if the datasheet gives none."""
        try:
            return self.peak_flops[dtype]
        except KeyError:
            raise NotFound(f"device {self.name} has no {dtype!r} peak", field="dtype",
                           hint=f"it has: {', '.join(self.peak_flops)}") from None


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A decoder-only transformer's shape, from its published config."""
    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    mlp: str
    """"gated": SwiGLU, 3 matrices of hidden x intermediate (LLaMA family);
    "plain": 2 matrices with a GELU/ReLU between (OPT, Falcon)."""
    tied_embeddings: bool
    """The LM head shares the input embedding's weights (counted once)."""
    source: str

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def layer_params(self) -> int:
        """Weights of one decoder layer: QKV, O and the MLP."""
        qkv = self.hidden_size * (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        out = self.num_heads * self.head_dim * self.hidden_size
        mlp = (3 if self.mlp == "gated" else 2) * self.hidden_size * self.intermediate_size
        return qkv + out + mlp

    def num_params(self) -> int:
        """Embeddings (+ the LM head when untied) + every layer; no biases or norms."""
        embedding = self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)
        return embedding + self.num_layers * self.layer_params()

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        return self.num_params() * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V of one token across all layers (full attention; no sliding window)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * dtype_bytes

    def flops_per_token(self) -> float:
        """Forward matmul FLOPs of the decoder layers for one token: 2 x layer weights.

        Leaves out the attention scores (QK^T and PV, which grow with the context and are
        the cost model's to add) and the LM head (2 x hidden x vocab, run once per sampled
        token, not for every prompt token)."""
        return 2.0 * self.num_layers * self.layer_params()


# ---- the files' schema (pydantic, at the edge only)

class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _DeviceEntry(_Entry):
    peak_flops: dict[Dtype, float] = Field(min_length=1)
    hbm_bytes: int = Field(gt=0)
    hbm_bytes_per_s: float = Field(gt=0)
    nvlink_bytes_per_s: float = Field(ge=0)
    pcie_bytes_per_s: float = Field(gt=0)
    source: str = Field(min_length=1)


class _ModelEntry(_Entry):
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    mlp: Literal["gated", "plain"]
    tied_embeddings: bool
    source: str = Field(min_length=1)


def _read_entries(path: Path, kind: str, schema: type[_Entry]) -> dict[str, tuple[str, _Entry]]:
    """Each top-level table of `path`, validated: {lower-case name: (name as written, entry)}."""
    data = read_toml(path, kind)
    entries: dict[str, tuple[str, _Entry]] = {}
    for name, raw in data.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: {kind} {name!r} is a value, not a table", field=name,
                              hint=f"write it as [{name}] followed by its fields")
        if name.lower() in entries:
            raise ConfigError(f"{path}: {kind} {name!r} is defined twice (names ignore case)",
                              field=name)
        try:
            entries[name.lower()] = (name, schema.model_validate(raw))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"] if p != "[key]")
            raise ConfigError(f"{path}: {kind} {name!r}, field {loc}: {err['msg']}",
                              field=f"{name}.{loc}",
                              hint=f"{e.error_count()} problem(s) in this entry; fields: "
                                   f"{', '.join(schema.model_fields)}") from None
    return entries


def load_devices(path: Path | None = None) -> dict[str, Device]:
    """The devices of a TOML file, by lower-case name; default: the packaged data/devices.toml."""
    if path is None:
        return dict(_default_devices())
    return {key: Device(name=key, peak_flops=MappingProxyType(dict(entry.peak_flops)),
                        **entry.model_dump(exclude={"peak_flops"}))
            for key, (_, entry) in _read_entries(Path(path), "device", _DeviceEntry).items()}


def load_models(path: Path | None = None) -> dict[str, ModelSpec]:
    """The models of a TOML file, by lower-case name; default: the packaged data/models.toml."""
    if path is None:
        return dict(_default_models())
    models = {}
    for key, (name, entry) in _read_entries(Path(path), "model", _ModelEntry).items():
        if entry.hidden_size % entry.num_heads:
            raise ConfigError(f"{path}: model {name!r}, field num_heads: {entry.num_heads} does not "
                              f"divide hidden_size {entry.hidden_size}", field=f"{name}.num_heads")
        if entry.num_heads % entry.num_kv_heads:
            raise ConfigError(f"{path}: model {name!r}, field num_kv_heads: {entry.num_kv_heads} does "
                              f"not divide num_heads {entry.num_heads}", field=f"{name}.num_kv_heads")
        models[key] = ModelSpec(name=key, **entry.model_dump())
    return models


@functools.cache
def _default_devices() -> Mapping[str, Device]:
    return MappingProxyType(load_devices(DATA_DIR / "devices.toml"))


@functools.cache
def _default_models() -> Mapping[str, ModelSpec]:
    return MappingProxyType(load_models(DATA_DIR / "models.toml"))


def get_device(name: str) -> Device:
    """A packaged device by name, ignoring case; NotFound with the closest names otherwise."""
    return _lookup(_default_devices(), name, "device")


def get_model(name: str) -> ModelSpec:
    """A packaged model by name, ignoring case; NotFound with the closest names otherwise."""
    return _lookup(_default_models(), name, "model")


def _lookup(known: Mapping[str, Any], name: str, kind: str) -> Any:
    try:
        return known[name.lower()]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), list(known), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}?" if close else f"known {kind}s: {', '.join(known)}."
        raise NotFound(f"unknown {kind} {name!r}", field=kind,
                       hint=f"{hint} New {kind}s go in aios/hardware/data/{kind}s.toml") from None
