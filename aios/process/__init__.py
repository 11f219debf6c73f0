"""Agent processes: the table of who is running, their state, what they used and how
they ended. The table that keeps them is aios.process.table; the runners that execute
agent programs are in aios.process.runners; starting, signalling and ending them is
aios.process.lifecycle; the in-process transport an in-kernel agent's client speaks is
aios.process.inproc. The process record itself (Process, ProcState, process_json) is a
type of the ground floor, in aios.syscall beside the calls, so that the SDK reads it
without importing this package."""
from __future__ import annotations

from aios.syscall import Process, ProcState, process_json

__all__ = ["Process", "ProcState", "process_json"]
