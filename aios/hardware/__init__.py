"""The hardware model: a discrete-event simulator of LLM serving. `specs` holds what it
simulates (devices and models, read from the TOML files under `data/`); `cost` times one
engine iteration by a calibrated roofline (`data/calibration.toml`); `workload` makes the
requests; `engine` runs one serving instance; `trace` exports the kernel's own traffic."""
from aios.hardware.cost import CostModel, IterationCost
from aios.hardware.specs import (DTYPE_BYTES, Device, ModelSpec, get_device, get_model, load_devices,
                                 load_models)

__all__ = ["DTYPE_BYTES", "CostModel", "Device", "IterationCost", "ModelSpec", "get_device", "get_model",
           "load_devices", "load_models"]
