"""`python -m aios.agents.run PROGRAM TASK`: how the subprocess runner starts an agent.
Loads PROGRAM (a .py file or a module), connects to the kernel named by AIOS_URL,
AIOS_TOKEN and AIOS_PID, calls `main(task, os)`, prints what it returns, and exits 0;
an exception prints its traceback and exits 1."""
from __future__ import annotations

import inspect
import sys

import anyio

from aios.process.runners import ProgramError, load_main, resolve
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
        async def run_async() -> object:
            async with connect_async() as client:
                return await agent_main(task, client)
        result = anyio.run(run_async)
    else:
        with connect() as client:
            result = agent_main(task, client)
    if result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
