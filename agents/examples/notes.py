"""A tool-using agent: it plans with the LLM, works out a budget with the calculator tool,
and keeps the result with the kernel's storage and memory syscalls.

    aios run agents/examples/notes.py "plan a trip to Lisbon"
"""
from __future__ import annotations

from aios.sdk import AsyncClient


async def main(task: str, os: AsyncClient) -> str:
    plan = await os.llm.chat([{"role": "user", "content": f"Write three short steps to {task}."}],
                             max_tokens=32)
    budget = await os.tools.call("calculator", expression="3 * (120 + 45.5) + 80")
    path = "notes/" + "-".join(task.lower().split()[:4]) + ".md"
    await os.storage.write(path, f"# {task}\n\n{plan.text}\n\nbudget: {budget}\n")
    await os.memory.add(f"note {path}: {task}")
    found = await os.memory.search(task.split()[-1])
    stored = await os.storage.read(path)
    return f"wrote {path} ({len(stored)} chars, budget {budget}); memory has {len(found)} matching note(s)"
