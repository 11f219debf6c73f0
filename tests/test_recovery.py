"""Real crash recovery: a kernel in a subprocess acknowledges calls, is SIGKILLed with
calls queued and running, and a new kernel on the same database finds every one of them."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from anyio.streams.text import TextReceiveStream

from aios.config import load_settings
from aios.kernel import Kernel
from aios.llm import Request
from aios.syscall import CallState, LLMSyscall
from tests.conftest import query

pytestmark = pytest.mark.slow

NUM_AGENTS = 3
CALLS_PER_AGENT = 4
MAX_TOKENS = 20

# The crashing kernel: a wall clock 10x faster than real time, and a slow decode (0.2 s
# of wall time a token) on 2 slots, so calls stay queued and running until the kill.
CRASHING_KERNEL = textwrap.dedent(f"""
    import sys
    import anyio
    from aios.config import load_settings
    from aios.kernel import Kernel

    async def main(home, database_url):
        settings = load_settings(env={{}}, overrides={{
            "home": home, "clock.mode": "wall", "clock.speed": 10.0, "database_url": database_url,
            "backends": [{{"kind": "hardware", "engine": "fixed", "num_slots": 2, "decode_s_per_token": 2.0}}]}})

        async def slow_tool(seconds):
            print("tool-running", flush=True)   # its running state is durable by now
            await anyio.sleep(seconds)
            return "acted"

        async with Kernel(settings) as k:
            k.register_tool("slow", slow_tool)

            async def agent(n):
                proc = await k.spawn(f"agent-{{n}}")
                for i in range(4):
                    ticket = await k.submit({{
                        "kind": "llm", "model": "sim-llama-3-8b", "max_tokens": {MAX_TOKENS},
                        "messages": [{{"role": "user", "content": f"agent {{n}} call {{i}}"}}]}}, pid=proc.pid)
                    print("llm", ticket.id, flush=True)   # the acknowledgement

            async def tool_user():
                proc = await k.spawn("tool-user")
                ticket = await k.submit({{"kind": "tool", "tool": "slow", "arguments": {{"seconds": 3600}}}},
                                        pid=proc.pid)
                print("tool", ticket.id, flush=True)

            async with anyio.create_task_group() as tg:
                for n in range({NUM_AGENTS}):
                    tg.start_soon(agent, n)
                tg.start_soon(tool_user)
            await anyio.sleep_forever()

    anyio.run(main, sys.argv[1], sys.argv[2])
""")


async def run_until_acknowledged(script: Path, home: Path, stderr_path: Path,
                                 database_url: str) -> tuple[list[str], str]:
    """Runs the crashing kernel until it has acknowledged every call and the tool runs,
    then SIGKILLs it. Returns the acknowledged LLM call ids and the tool call id."""
    llm_ids: list[str] = []
    tool_id = None
    is_tool_running = False
    with stderr_path.open("wb") as stderr:
        process = await anyio.open_process([sys.executable, str(script), str(home), database_url],
                                           stdout=subprocess.PIPE, stderr=stderr)
        try:
            assert process.stdout is not None
            buffer = ""
            with anyio.fail_after(60):
                async for text in TextReceiveStream(process.stdout):
                    buffer += text
                    *lines, buffer = buffer.split("\n")
                    for line in lines:
                        match line.split():
                            case ["llm", call_id]:
                                llm_ids.append(call_id)
                            case ["tool", call_id]:
                                tool_id = call_id
                            case ["tool-running"]:
                                is_tool_running = True
                    if len(llm_ids) == NUM_AGENTS * CALLS_PER_AGENT and tool_id and is_tool_running:
                        break
            assert process.returncode is None, "the kernel exited before the kill"
        finally:
            process.send_signal(signal.SIGKILL)
            with anyio.fail_after(10):
                await process.wait()
    assert process.returncode == -signal.SIGKILL
    assert tool_id is not None and is_tool_running, stderr_path.read_text()[-3000:]
    assert len(llm_ids) == NUM_AGENTS * CALLS_PER_AGENT, stderr_path.read_text()[-3000:]
    return llm_ids, tool_id


@pytest.mark.anyio
async def test_sigkill_loses_nothing_acknowledged(tmp_path: Path, database_url: str) -> None:
    """On SQLite and on a real PostgreSQL server."""
    home = tmp_path / "home"
    script = tmp_path / "crashing_kernel.py"
    script.write_text(CRASHING_KERNEL)
    llm_ids, tool_id = await run_until_acknowledged(script, home, tmp_path / "stderr.txt", database_url)

    # what the dead kernel left in the database: every acknowledged call, none of them finished
    path = database_url
    on_disk = dict(query(path, "SELECT id, state FROM syscalls"))
    assert set(llm_ids) | {tool_id} <= set(on_disk)
    assert on_disk[tool_id] == "running"
    live = [i for i in llm_ids if on_disk[i] in ("queued", "running", "preempted")]
    assert len(live) == len(llm_ids), on_disk   # the decode is slow: nothing had finished
    assert {on_disk[i] for i in llm_ids} == {"queued", "running"}   # both paths of the rule
    assert {s for (s,) in query(path, "SELECT state FROM processes")} == {"running"}

    # a new kernel on the same database, with a fast decode this time
    settings = load_settings(env={}, overrides={
        "home": str(home), "clock.mode": "wall", "clock.speed": 10.0, "database_url": database_url,
        "backends": [{"kind": "hardware", "engine": "fixed", "num_slots": 2, "decode_s_per_token": 0.001}]})
    async with Kernel(settings) as k:
        assert set(k.tickets) == set(live)   # re-queued; the tool call is not
        with anyio.fail_after(20):
            for ticket in list(k.tickets.values()):
                await ticket.wait()
        calls = {i: await k.lookup(i) for i in llm_ids}
        tool_call = await k.lookup(tool_id)
        backend = k.router.route("sim-llama-3-8b")

    for call in calls.values():
        assert isinstance(call, LLMSyscall)
        assert call.state is CallState.DONE, call
        # a generation restarted from scratch gives the reply an uninterrupted run gives
        expected = "".join(backend.responder.reply(Request.of(call)).tokens)   # type: ignore[attr-defined]
        assert call.result["message"]["content"] == expected
        assert call.result["usage"]["completion_tokens"] == MAX_TOKENS
    assert tool_call.state is CallState.FAILED
    assert tool_call.error["code"] == "interrupted"
    assert query(path, "SELECT state, count(*) FROM processes GROUP BY state") == [
        ("exited", NUM_AGENTS + 1)]
    assert {r for (r,) in query(path, "SELECT exit_reason FROM processes")} == {"kernel restarted"}
    assert query(path, "SELECT num_requeued, num_failed FROM kernel_boots ORDER BY id DESC LIMIT 1") == [
        (len(live), 1)]
    for i in llm_ids:   # every move of a recovered call is in the journal, ending in done
        moves = [s for (s,) in query(path, "SELECT state FROM syscall_transitions WHERE call_id = ? "
                                           "ORDER BY id", i)]
        assert moves[0] == "queued" and moves[-1] == "done"
