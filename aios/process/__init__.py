"""Agent processes: the table of who is running, their state, what they used and how
they ended. The table that keeps them is aios.process.table; the runners that execute
agent programs are in aios.process.runners. This module stays light (no database): the
SDK and agents in subprocesses import it."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aios.syscall import Usage


class ProcState(StrEnum):
    RUNNING = "running"
    SUSPENDED = "suspended"
    EXITED = "exited"


@dataclass(frozen=True, slots=True)
class Process:
    pid: int
    name: str
    principal: str
    parent_pid: int | None
    priority: int
    state: ProcState
    created: float
    exited: float | None = None
    exit_reason: str | None = None
    usage: Usage = Usage()
    program: str | None = None     # what it runs (a file, a module, a registered name); None: a bare account
    runner: str | None = None      # "inproc" | "subprocess"
    exit_code: int | None = None
    cpu_s: float = 0.0             # CPU time of its OS process (subprocess runner)
    max_rss_kib: int = 0


def process_json(p: Process) -> dict[str, Any]:
    """A process as the REST API shows it (GET /v1/processes/{pid}), and the SDK reads it."""
    u = p.usage
    return {"pid": p.pid, "name": p.name, "principal": p.principal, "parent_pid": p.parent_pid,
            "priority": p.priority, "state": p.state.value, "created": p.created, "exited": p.exited,
            "exit_reason": p.exit_reason, "exit_code": p.exit_code, "program": p.program, "runner": p.runner,
            "cpu_s": p.cpu_s, "max_rss_kib": p.max_rss_kib,
            "usage": {"tokens_in": u.tokens_in, "tokens_out": u.tokens_out, "cost_usd": u.cost_usd,
                      "service_s": u.service_s}}
