"""Agents that run as kernel processes. `BUILTIN_AGENTS` are the names `aios run NAME`
knows without registration."""
BUILTIN_AGENTS = {
    "chat": "aios.agents.examples.chat",
    "notes": "aios.agents.examples.notes",
    "compiler": "aios.agents.compiler",
    "react": "aios.agents.react",
    "parallel-fc": "aios.agents.react.parallel",
}
