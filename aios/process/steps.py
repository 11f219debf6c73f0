"""What an agent process says it is doing, as it does it: its steps (a plan line, a
thought, an action, an observation, the answer, the error it failed with). An agent
reports them through its client (`os.step(...)`); the kernel numbers them, publishes each
on the event bus (EventKind.STEP) for `aios run`, the SDK and REST to follow, and keeps
them in the process's trace file beside its log (`logs/proc-N.trace.jsonl`), which
`aios logs N --trace` reads and retention removes with the log.

Invariant: a process's steps are numbered from 0 without gaps, in the order the kernel
received them, and the trace file holds them in that order (each is appended before the
next is taken: the file is written synchronously, a line at a time)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aios.errors import InvalidSyscall, JournalUnavailable, QuotaExceeded
from aios.syscall import Step

KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_TEXT_CHARS = 16384    # a longer text is cut (data["cut"] says how much went)
MAX_DATA_BYTES = 65536    # its JSON (a traceback is the largest usual field)
MAX_STEPS = 10_000        # per process


def checked(kind: Any, text: Any, data: Any) -> tuple[str, str, dict[str, Any]]:
    """The step as it is kept: the kind a short lowercase word, the text a string (cut at
    MAX_TEXT_CHARS), the data a JSON object of at most MAX_DATA_BYTES; InvalidSyscall
    naming the field otherwise."""
    if not isinstance(kind, str) or not KIND.fullmatch(kind):
        raise InvalidSyscall(f"a step's kind must be a lowercase word of 1 to 32 characters, not {kind!r}",
                             field="kind", hint="for example plan, thought, action, observation, answer")
    if not isinstance(text, str):
        raise InvalidSyscall(f"a step's text must be a string, not {type(text).__name__}", field="text")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise InvalidSyscall(f"a step's data must be a JSON object, not {type(data).__name__}", field="data")
    try:
        size = len(json.dumps(data, ensure_ascii=False).encode())
    except (TypeError, ValueError) as e:
        raise InvalidSyscall(f"a step's data must be JSON: {e}", field="data") from None
    if size > MAX_DATA_BYTES:
        raise InvalidSyscall(f"a step's data is {size} bytes, over the limit of {MAX_DATA_BYTES}", field="data",
                             hint="keep large results in storage and name them in the step")
    if len(text) > MAX_TEXT_CHARS:
        data = {**data, "cut": len(text) - MAX_TEXT_CHARS}
        text = text[:MAX_TEXT_CHARS]
    return kind, text, data


class Steps:
    """Every process's steps: those of live processes in memory, all in trace files."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.live: dict[int, list[Step]] = {}

    def path(self, pid: int) -> Path:
        return self.logs / f"proc-{pid}.trace.jsonl"

    def add(self, pid: int, at: float, kind: str, text: str, data: dict[str, Any]) -> Step:
        """Records a step of a live process (checked already); QuotaExceeded past MAX_STEPS,
        JournalUnavailable if its trace file cannot be written."""
        steps = self.live.setdefault(pid, [])
        if len(steps) >= MAX_STEPS:
            raise QuotaExceeded(f"process {pid} has reported {MAX_STEPS} steps, the most one may",
                                hint="report fewer, larger steps")
        step = Step(len(steps), at, kind, text, data)
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            with open(self.path(pid), "a", encoding="utf-8") as f:
                f.write(json.dumps(step.to_json(), ensure_ascii=False) + "\n")
        except OSError as e:   # a full or read-only disk: refused, and not kept in memory either
            raise JournalUnavailable(f"cannot write the trace of process {pid}: {e.strerror}",
                                     hint=f"check that {self.logs} is writable and has room") from None
        steps.append(step)
        return step

    def since(self, pid: int, seq: int = 0) -> list[Step]:
        """The process's steps numbered `seq` and after: from memory while it lives, else
        from its trace file (none if retention removed it)."""
        steps = self.live.get(pid)
        return steps[seq:] if steps is not None else read(self.path(pid))[seq:]

    def last(self, pid: int, kind: str) -> Step | None:
        return next((s for s in reversed(self.live.get(pid, ())) if s.kind == kind), None)

    def close(self, pid: int) -> None:
        """The process has exited: its steps are read from the file from now on."""
        self.live.pop(pid, None)


def read(path: Path) -> list[Step]:
    """A trace file's steps; a torn last line (a crash while writing) is left out."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            steps.append(Step.from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return steps
