"""The `python` tool: a Python snippet run in the sandbox (aios.sandbox: no network, its
own work directory, rlimits, a timeout), as InterCode-style interactive coding needs.
Returns what it printed, its exit code, and the files it wrote."""
from __future__ import annotations

from typing import Any

from aios.errors import InvalidSyscall
from aios.sandbox import Limits, run

MAX_CODE_CHARS = 100_000
MAX_TIMEOUT_S = 60.0
FILE_TEXT_BYTES = 16 * 1024   # files up to this size come back with their text


def python(code: str, files: dict[str, str] | None = None, timeout_s: float = 10.0, stdin: str | None = None
           ) -> dict[str, Any]:
    """Runs a Python 3 snippet in an isolated sandbox (no network, 512 MiB of memory, 64
    processes, its own empty working directory) and returns its stdout, stderr, exit
    code and the files it wrote there (with their text when small).

    Args:
        code: the program, as a python3 -c argument would be.
        files: text files to put in its working directory first, by relative path.
        timeout_s: wall-clock seconds before it is stopped (at most 60).
        stdin: text for its standard input.
    """
    if len(code) > MAX_CODE_CHARS:
        raise InvalidSyscall(f"the code is over {MAX_CODE_CHARS} characters", field="code")
    if not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise InvalidSyscall(f"timeout_s must be in (0, {MAX_TIMEOUT_S:g}]", field="timeout_s")
    result = run(["python3", "-c", code], limits=Limits(timeout_s=timeout_s), files=files or {},
                 stdin=stdin.encode() if stdin is not None else None, read_back_bytes=FILE_TEXT_BYTES)
    written: dict[str, dict[str, Any]] = {}
    for name, size in result.files.items():
        entry: dict[str, Any] = {"bytes": size}
        data = result.contents.get(name)
        if data is not None:
            try:
                entry["text"] = data.decode("utf-8")
            except UnicodeDecodeError:
                entry["binary"] = True
        written[name] = entry
    return {"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
            "stopped_by": result.stopped_by, "message": result.message, "files": written,
            "truncated": result.truncated, "duration_s": round(result.duration_s, 3)}
