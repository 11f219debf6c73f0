"""`python -m aios.agents.run PROGRAM TASK`: how the subprocess runner starts an agent.
Loads PROGRAM (a .py file or a module), connects to the kernel named by AIOS_URL,
AIOS_TOKEN and AIOS_PID, calls `main(task, os)`, prints what it returns, and exits 0.

A program that raises exits 1. Why goes to the kernel as the process's last step, an
`error` step of one line with the traceback in its data: the process's exit reason says
it (`aios run` prints it on its stderr) and `aios logs PID --trace` shows the traceback.
If the kernel cannot take it, the line and the traceback are printed to the log instead."""
from __future__ import annotations

import inspect
import sys
import traceback
from typing import Any

import anyio

from aios.errors import AiosError
from aios.process.runners import ProgramError, failure_line, load_main, resolve
from aios.sdk import connect, connect_async


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m aios.agents.run PROGRAM TASK", file=sys.stderr)
        return 2
    program, task = argv
    try:
        agent_main = load_main(resolve(program, {}))
    except (ProgramError, LookupError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if inspect.iscoroutinefunction(agent_main):
        async def run_async() -> tuple[Any, str | None]:
            async with connect_async() as client:
                try:
                    return await agent_main(task, client), None
                except Exception as e:
                    return None, await _failed(e, client.step)
        result, failure = anyio.run(run_async)
    else:
        with connect() as client:
            try:
                result, failure = agent_main(task, client), None
            except Exception as e:
                failure = _report(e, client.step)
    if failure is not None:
        return 1
    if result is not None:
        print(result)
    return 0


def _report(e: Exception, step: Any) -> str:
    """Sends the failure to the kernel as an error step (the traceback in its data), or
    prints it if it cannot; -> the one line that says why."""
    line, trace = failure_line(e), "".join(traceback.format_exception(e))
    try:
        step("error", line, traceback=trace)
    except AiosError:
        print(f"{trace}error: {line}", file=sys.stderr)
    return line


async def _failed(e: Exception, step: Any) -> str:
    """_report, for an async client."""
    line, trace = failure_line(e), "".join(traceback.format_exception(e))
    try:
        await step("error", line, traceback=trace)
    except AiosError:
        print(f"{trace}error: {line}", file=sys.stderr)
    return line


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
