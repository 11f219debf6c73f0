"""Shared fixtures: a kernel on SQLite in tmp_path, on a virtual clock by default, with
the hardware-model backend as the fake LLM."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aios.config import Settings, load_settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """make_settings(**{"scheduler.policy": "rr"}) -> Settings rooted in tmp_path."""
    def make(**overrides: Any) -> Settings:
        base = {"home": str(tmp_path), "clock.mode": "virtual"}
        return load_settings(env={}, overrides={**base, **overrides})
    return make


def llm(prompt: str = "hello", max_tokens: int = 8, **extra: Any) -> dict[str, Any]:
    """An LLM syscall dict for the default simulated model."""
    return {"kind": "llm", "model": "sim-llama-3-8b", "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, **extra}
