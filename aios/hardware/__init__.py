"""The hardware model: a discrete-event simulator of LLM serving. `specs` holds what it
simulates (devices and models, read from the TOML files under `data/`)."""
from aios.hardware.specs import (DTYPE_BYTES, Device, ModelSpec, get_device, get_model, load_devices,
                                 load_models)

__all__ = ["DTYPE_BYTES", "Device", "ModelSpec", "get_device", "get_model", "load_devices", "load_models"]
