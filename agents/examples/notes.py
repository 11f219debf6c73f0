"""A note-taking agent: plans with the LLM, then uses the kernel's storage and memory
syscalls as its tools: it writes a note file, indexes it in memory, and reads it back.

    aios run agents/examples/notes.py "plan a trip to Lisbon" --runner subprocess
"""
from __future__ import annotations

from aios.sdk import AsyncClient


async def main(task: str, os: AsyncClient) -> str:
    plan = await os.llm.chat([{"role": "user", "content": f"Write three short steps to {task}."}],
                             max_tokens=32)
    path = "notes/" + "-".join(task.lower().split()[:4]) + ".md"
    await os.storage.write(path, f"# {task}\n\n{plan.text}\n")
    await os.memory.add(f"note {path}: {task}")
    found = await os.memory.search(task.split()[-1])
    stored = await os.storage.read(path)
    return f"wrote {path} ({len(stored)} chars); memory has {len(found)} matching note(s)"
