"""A chat agent: answers the task in one LLM call, remembering the exchange.

    aios run agents/examples/chat.py "What does a kernel do?"
"""
from __future__ import annotations

from aios.sdk import Client


def main(task: str, os: Client) -> str:
    reply = os.llm.chat([{"role": "system", "content": "You are a concise assistant."},
                         {"role": "user", "content": task}], max_tokens=48)
    os.memory.add(f"Q: {task}\nA: {reply.text}")
    return reply.text
