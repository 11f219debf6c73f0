"""The REST syscall endpoint: /v1 syscalls, processes, models, tools, the
OpenAI-compatible chat endpoint, /healthz and /metrics, over one kernel (aios.server.app);
and the daemon that serves it (aios.server.daemon).

`create_app` is loaded on first use (PEP 562), so the `aios` commands that only talk to a
running daemon do not import the web framework and the kernel."""
from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from aios.server.app import create_app
        return create_app
    raise AttributeError(f"module 'aios.server' has no attribute {name!r}")
