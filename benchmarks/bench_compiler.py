"""`aios bench compiler`: LLMCompiler against ReAct and parallel function calling, on
workloads shaped like the LLMCompiler paper's (see aios.benchmarks.compiler_workloads).

Every question is answered by each agent in turn, each in its own kernel process, on one
kernel: tools are tool syscalls with latencies from stated distributions, LLM calls go to
the simulated hardware-model backend. With no model named, the LLM is the replay model
(what a correct model would say, with thoughts of stated lengths); the JSON says so. With
`--model NAME` (a litellm model, its API key in the environment) the same questions go to
a real model on the wall clock, and accuracy means something.

Per workload: mean latency of each agent, `latency_speedup_vs_react` and
`latency_speedup_vs_parallel_fc` (ratios of the means), `tokens_ratio_vs_react` (LLM tokens,
prompt plus output, as the kernel metered the processes), accuracy, and
`critical_path_ratio`: LLMCompiler's makespan over its lower bound. The bound replays the
run with no overhead at all: each action starts as soon as its line was read and its
dependencies' bounds are done, lasts what its tool call lasted, and the joiner starts once
the plan and the last action are over, lasting what it lasted; rounds follow each other.
"""
from __future__ import annotations

import os
import random
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aios.agents.compiler import CompilerConfig, LLMCompiler
from aios.agents.react import ReAct, ReactConfig
from aios.agents.react.parallel import ParallelFC, ParallelFCConfig
from aios.agents.trace import Outcome, Span
from aios.benchmarks.compiler_workloads import (HAS_DEPENDENCIES, PAPER_SPEEDUP_VS_REACT, THOUGHT_WORDS,
                                                TOOL_LATENCY, Question, ReplayModel, World, lognormal,
                                                make_questions, make_world, matches)
from aios.clock import WallClock
from aios.config import HardwareBackendSettings, load_settings
from aios.errors import ConfigError
from aios.kernel import Kernel
from aios.llm.hardware import HardwareBackend
from aios.process.inproc import KernelTransport
from aios.sdk import AsyncClient
from aios.tools import tool
from aios.tools.calculator import calculator as calc

AGENTS = ("compiler", "react", "parallel_fc")
TOOLS = ["search", "get_fact", "calculator"]
REPLAY_MODEL = "replay-gpt-3.5-turbo"
# the simulated deployment of the replay model: an API-served model like the paper's
# gpt-3.5-turbo (stated assumptions, not fitted): time to first token of a short prompt,
# prompt processing rate, output rate
LLM_PROFILE = {"ttft_base_s": 0.35, "prefill_tokens_per_s": 6000.0, "decode_s_per_token": 1 / 60}


@dataclass
class Run:
    agent: str
    question: Question
    outcome: Outcome
    latency_s: float
    tokens: int
    start: float
    bound_s: float | None = None

    @property
    def correct(self) -> bool:
        return matches(self.outcome.answer, self.question.gold())


def bench_tools(world: World, clock: Any, seed: int) -> list[Any]:
    """The three tools, each sleeping (on the kernel's clock) a latency drawn from its
    stated distribution before it answers."""
    async def delay(name: str, *args: Any) -> None:
        # the same call takes the same time whichever agent makes it (common random numbers)
        draw = random.Random(f"{seed}:{name}:{args!r}")
        await clock.sleep(lognormal(draw, *TOOL_LATENCY[name]))

    @tool(timeout_s=30)
    async def search(query: str) -> str:
        """Searches the encyclopedia and returns the best matching article.

        Args:
            query: an entity's name, or words to look for
        """
        await delay("search", query)
        return world.search(query)

    @tool(timeout_s=30)
    async def get_fact(entity: str, fact: str) -> Any:
        """One fact about an entity (a person, a film or a country), from the knowledge graph.
        Facts: people have born, born_in, occupation; films have year, genres, director, lead;
        countries have population (millions) and area (thousand square km).

        Args:
            entity: the entity's exact name
            fact: the fact's name
        """
        await delay("get_fact", entity, fact)
        return world.get_fact(entity, fact)

    @tool(timeout_s=30)
    async def calculator(expression: str) -> float | int:
        """Evaluates an arithmetic expression: numbers, + - * / // % ** and parentheses.

        Args:
            expression: the expression
        """
        await delay("calculator", expression)
        return calc(expression)

    return [search, get_fact, calculator]


def critical_path_bound(spans: list[Span]) -> float:
    """The fastest the run could have been with its own LLM and tool times and no
    overhead (module docstring)."""
    total = 0.0
    for rnd in sorted({s.round for s in spans}):
        here = [s for s in spans if s.round == rnd]
        planner = next((s for s in here if s.name == "planner"), None)
        if planner is None:
            continue
        finish: dict[int, float] = {}
        for s in sorted((s for s in here if s.kind == "tool" and s.idx is not None), key=lambda s: s.idx or 0):
            released = (s.released if s.released is not None else planner.start) - planner.start
            ready = max([released] + [finish[d] for d in s.deps if d in finish])
            finish[s.idx] = ready + (s.run_s if s.run_s is not None else s.duration)   # type: ignore[index]
        joiner = next((s for s in here if s.name == "joiner"), None)
        total += max([planner.duration] + list(finish.values())) + (joiner.duration if joiner else 0.0)
    return total


async def answer(k: Kernel, agent: str, q: Question, model: str, timeout_s: float) -> Run:
    proc = await k.spawn(f"{agent}:{q.workload}")
    os = AsyncClient(transport=KernelTransport(k, pid=proc.pid))
    now = k.clock.now
    runner: Any
    if agent == "compiler":
        runner = LLMCompiler(os, CompilerConfig(model=model, tools=TOOLS), now=now)
    elif agent == "react":
        runner = ReAct(os, ReactConfig(model=model, tools=TOOLS), now=now)
    else:
        runner = ParallelFC(os, ParallelFCConfig(model=model, tools=TOOLS), now=now)
    start = now()
    with anyio.fail_after(timeout_s):
        outcome = await runner.run(q.text)
    latency = now() - start
    usage = k.processes.get(proc.pid).usage
    await k.kill(proc.pid, "finished")
    run = Run(agent, q, outcome, latency, usage.tokens_in + usage.tokens_out, start)
    if agent == "compiler":
        run.bound_s = critical_path_bound(outcome.trace.spans)
    return run


def summarize(name: str, runs: list[Run]) -> dict[str, Any]:
    by = {a: [r for r in runs if r.agent == a] for a in AGENTS}
    mean = {a: sum(r.latency_s for r in rs) / len(rs) for a, rs in by.items()}
    tokens = {a: sum(r.tokens for r in rs) / len(rs) for a, rs in by.items()}
    compiler = by["compiler"]
    out: dict[str, Any] = {
        "questions": len(compiler),
        "latency_s": {a: round(v, 3) for a, v in mean.items()},
        "latency_speedup_vs_react": round(mean["react"] / mean["compiler"], 3),
        "latency_speedup_vs_parallel_fc": round(mean["parallel_fc"] / mean["compiler"], 3),
        "tokens_per_question": {a: round(v, 1) for a, v in tokens.items()},
        "tokens_ratio_vs_react": round(tokens["compiler"] / tokens["react"], 3),
        "critical_path_ratio": round(sum(r.latency_s for r in compiler) / sum(r.bound_s or 0 for r in compiler), 4),
        "critical_path_ratio_worst_question": round(max(r.latency_s / (r.bound_s or 1) for r in compiler), 4),
        "accuracy": {a: round(sum(r.correct for r in rs) / len(rs), 3) for a, rs in by.items()},
        "compiler_rounds_mean": round(sum(r.outcome.num_rounds for r in compiler) / len(compiler), 2),
        "has_dependencies": HAS_DEPENDENCIES[name],
    }
    if name in PAPER_SPEEDUP_VS_REACT:
        out["paper_speedup_vs_react"] = PAPER_SPEEDUP_VS_REACT[name]
    if HAS_DEPENDENCIES[name]:
        out["paper_speedup_vs_parallel_fc"] = 1.35
    return out


def run(*, quick: bool = False, seed: int = 7, show_progress: bool = True, plot: str | None = None,
        model: str | None = None, speed: float = 10.0, per_workload: int | None = None) -> dict[str, Any]:
    check_model(model)
    per_workload = per_workload or (3 if quick else 20)
    if model is not None:
        speed = 1.0   # a real model answers in real time
    world = make_world(random.Random(seed))
    questions = make_questions(world, random.Random(seed + 1), per_workload)
    flat = [q for qs in questions.values() for q in qs]
    console = Console(file=sys.stderr, no_color=not show_progress)
    result: dict[str, Any] = {
        "bench": "compiler", "seed": seed, "quick": quick,
        "llm": (f"{model} through litellm (real model; accuracy is measured)" if model else
                "replay model on the hardware-model backend (simulated; no API key): it replies what a "
                "correct model would, so accuracy is 1 by construction"),
        "clock": f"wall clock x{speed:g} (simulated seconds; real overheads are counted, scaled)",
        "assumptions": {"tool_latency_lognormal_median_s_sigma": TOOL_LATENCY,
                        "thought_words_lognormal_median_sigma": THOUGHT_WORDS,
                        "llm_profile": None if model else LLM_PROFILE,
                        "output_tokens": "text in pieces of up to 4 characters (the kernel's prompt rule)"},
    }
    runs: dict[str, list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="aios-bench-compiler-") as tmp, \
            Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                     console=console, disable=not show_progress) as progress:
        async def main() -> None:
            clock = WallClock(speed)
            if model is None:
                settings = load_settings(env={}, overrides={"home": tmp, "clock.mode": "wall", "clock.speed": speed})
                backend = HardwareBackend(HardwareBackendSettings(name="replay", models=[REPLAY_MODEL], num_slots=8,
                                                                  **LLM_PROFILE),
                                          clock, ReplayModel(flat, seed))
                kernel = Kernel(settings, clock=clock, backends=[backend])
            else:
                settings = load_settings(env={}, overrides={
                    "home": tmp, "backends": [{"kind": "litellm", "models": [model]}]})
                kernel = Kernel(settings, clock=clock)
            async with kernel as k:
                for t in bench_tools(world, k.clock, seed):
                    k.register_tool(t)
                for name, qs in questions.items():
                    task = progress.add_task(name, total=len(qs) * len(AGENTS))
                    runs[name] = []
                    for q in qs:
                        for agent in AGENTS:
                            runs[name].append(await answer(k, agent, q, model or REPLAY_MODEL,
                                                           timeout_s=600 if model else 120))
                            progress.advance(task)
        anyio.run(main)
    result["workloads"] = {name: summarize(name, rs) for name, rs in runs.items()}
    if plot:
        from aios.benchmarks.gantt import gantt
        movie = [r for r in runs["movie"] if r.question is runs["movie"][0].question]
        result["plot"] = gantt(movie, plot)
    if show_progress:
        console.print(table(result["workloads"]))
        console.print(f"LLM: {result['llm']}")
    return result


def table(workloads: dict[str, Any]) -> Table:
    t = Table("workload", "LLMCompiler s", "ReAct s", "parallel FC s", "vs ReAct", "(paper)", "vs FC",
              "tokens vs ReAct", "critical path ratio", title="aios bench compiler (mean latency per question)")
    for name, w in workloads.items():
        lat = w["latency_s"]
        t.add_row(name, f"{lat['compiler']:.2f}", f"{lat['react']:.2f}", f"{lat['parallel_fc']:.2f}",
                  f"{w['latency_speedup_vs_react']:.2f}x", f"{w.get('paper_speedup_vs_react', '-')}",
                  f"{w['latency_speedup_vs_parallel_fc']:.2f}x", f"{w['tokens_ratio_vs_react']:.2f}",
                  f"{w['critical_path_ratio']:.3f}")
    return t


def check_model(model: str | None) -> None:
    if model is not None and not any(k.endswith("_API_KEY") and v for k, v in os.environ.items()):
        raise ConfigError(f"--model {model} needs the provider's API key in the environment",
                          hint="e.g. OPENAI_API_KEY=...; without --model the replay model runs, no key needed")

