"""The hardware model: a discrete-event simulator of LLM serving. `specs` holds what it
simulates (devices and models, read from the TOML files under `data/`); `cost` times one
engine iteration by a calibrated roofline (`data/calibration.toml`); `workload` makes the
requests; `engine` runs serving instances; `cluster` puts several under a global scheduler
(Llumnix, INFaaS++) or splits prefill from decode (DistServe); `conversation` serves
multi-turn sessions with priority changes (FastSwitch); `metrics` judges a run; `sim`
reads a TOML description for `aios sim`; `trace` exports the kernel's own traffic. It is a
simulator: no GPU runs, and its figures are calibrated estimates."""
from aios.hardware.cost import CostModel, IterationCost
from aios.hardware.specs import (DTYPE_BYTES, Device, ModelSpec, get_device, get_model, load_devices,
                                 load_models)

__all__ = ["DTYPE_BYTES", "CostModel", "Device", "IterationCost", "ModelSpec", "get_device", "get_model",
           "load_devices", "load_models"]
