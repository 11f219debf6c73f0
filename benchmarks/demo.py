"""`aios demo` (and `make demo`): one kernel on SQLite in a fresh temporary directory, the
hardware-model backend on a sped-up wall clock, and the same mixed agent workload run
under each scheduling policy in turn, then compared in one table.

The workload (fixed seed, identical under every policy):
  interactive  chat agents, priority 10: a short user message, a 30-60 token reply, a
               think time, several turns; each turn resends the conversation so far
  batch        agents at priority 0 that each work through a list of long jobs (300-600
               token outputs) back to back, with several workers each; they have the same
               number of jobs but different numbers of workers (calls in flight), and
               together they keep more calls in flight than the backend has slots

Every number is computed from the syscalls' own timestamps (created, finished), in
simulated seconds. The LLM is the simulated hardware-model backend: no API key, no network."""
from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aios.config import HardwareBackendSettings, Settings, load_settings
from aios.benchmarks.stats import jain, percentile
from aios.kernel import Kernel
from aios.syscall import Syscall

POLICIES = ("fifo", "rr", "priority", "fair")
MODEL = "sim-llama-3-8b"
NUM_SLOTS = 8
SEED = 7
INTERACTIVE_PRIORITY = 10
BATCH_PRIORITY = 0
_TOPICS = ("the weather", "a bug in my code", "a recipe", "train times", "a poem", "my budget",
           "a book", "the news", "a trip", "a word")


@dataclass(frozen=True, slots=True)
class Workload:
    num_chat_agents: int
    num_turns: int                   # per chat agent
    think_mean_s: float              # mean of the exponential think time before each turn
    batch_workers: tuple[int, ...]   # one entry per batch agent: its calls in flight
    num_batch_jobs: int              # per batch agent, shared by its workers


FULL = Workload(num_chat_agents=8, num_turns=10, think_mean_s=4.0, batch_workers=(2, 4, 8),
                num_batch_jobs=30)
QUICK = Workload(num_chat_agents=6, num_turns=4, think_mean_s=4.0, batch_workers=(2, 4, 8),
                 num_batch_jobs=10)


@dataclass(frozen=True, slots=True)
class Step:
    text: str
    max_tokens: int
    think_s: float


@dataclass(frozen=True, slots=True)
class AgentPlan:
    name: str
    agent_class: str   # "interactive" | "batch"
    priority: int
    num_workers: int
    steps: tuple[Step, ...]   # in order; a batch agent's workers share them

    @property
    def num_calls(self) -> int:
        return len(self.steps)


@dataclass(frozen=True, slots=True)
class PolicyStats:
    policy: str
    makespan_s: float
    tokens_per_s: float
    calls_per_s: float
    interactive_p50_s: float
    interactive_p99_s: float
    batch_p50_s: float
    batch_p99_s: float
    jain_fairness: float
    num_preemptions: int


# ---- the workload

def make_plans(workload: Workload, seed: int) -> list[AgentPlan]:
    rng = random.Random(seed)
    plans = []
    for i in range(workload.num_chat_agents):
        turns = tuple(Step(f"Chat {i}, turn {t}: a quick question about {rng.choice(_TOPICS)}?",
                           rng.randint(30, 60), rng.expovariate(1 / workload.think_mean_s))
                      for t in range(workload.num_turns))
        plans.append(AgentPlan(f"chat-{i}", "interactive", INTERACTIVE_PRIORITY, 1, turns))
    for i, num_workers in enumerate(workload.batch_workers):
        jobs = tuple(Step(f"Batch {i}, job {j}: summarise this. " + "lorem ipsum " * rng.randint(100, 400),
                          rng.randint(300, 600), think_s=0.0) for j in range(workload.num_batch_jobs))
        plans.append(AgentPlan(f"batch-{i}", "batch", BATCH_PRIORITY, num_workers, jobs))
    return plans


def llm_call(messages: list[dict[str, Any]], max_tokens: int, priority: int) -> dict[str, Any]:
    return {"kind": "llm", "model": MODEL, "messages": messages, "max_tokens": max_tokens,
            "priority": priority}


# ---- the agents: each returns its finished calls

async def chat_agent(k: Kernel, pid: int, plan: AgentPlan, tick: Callable[[], None]) -> list[Syscall]:
    """Think, ask, wait for the reply, keep it in the conversation; one call at a time."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful assistant."}]
    calls = []
    for turn in plan.steps:
        await k.clock.sleep(turn.think_s)
        messages.append({"role": "user", "content": turn.text})
        ticket = await k.submit(llm_call(list(messages), turn.max_tokens, plan.priority), pid=pid)
        reply = await ticket.result()
        messages.append(reply["message"])
        calls.append(ticket.call)
        tick()
    return calls


async def batch_agent(k: Kernel, pid: int, plan: AgentPlan, tick: Callable[[], None]) -> list[Syscall]:
    """`num_workers` workers take jobs from one list and submit them back to back."""
    jobs = iter(plan.steps)
    calls = []

    async def worker() -> None:
        for job in jobs:
            ticket = await k.submit(llm_call([{"role": "user", "content": job.text}], job.max_tokens,
                                             plan.priority), pid=pid)
            await ticket.result()
            calls.append(ticket.call)
            tick()

    async with anyio.create_task_group() as tg:
        for _ in range(plan.num_workers):
            tg.start_soon(worker)
    return calls


AGENTS = {"interactive": chat_agent, "batch": batch_agent}


async def run_policy(k: Kernel, policy: str, plans: list[AgentPlan],
                     tick: Callable[[], None]) -> list[tuple[AgentPlan, list[Syscall]]]:
    """Runs every agent to completion under `policy`, on a kernel with nothing in flight."""
    k.set_policy(policy)
    results: list[tuple[AgentPlan, list[Syscall]]] = []

    async def run_agent(plan: AgentPlan) -> None:
        proc = await k.spawn(f"{policy}/{plan.name}", priority=plan.priority)
        calls = await AGENTS[plan.agent_class](k, proc.pid, plan, tick)
        await k.kill(proc.pid, "exited")   # the agent is done: its process ends
        results.append((plan, calls))

    async with anyio.create_task_group() as tg:
        for plan in plans:
            tg.start_soon(run_agent, plan)
    return results


# ---- statistics, in simulated seconds

def latency_s(call: Syscall) -> float:
    assert call.finished is not None
    return call.finished - call.created


def backlogged_s(calls: list[Syscall]) -> float:
    """Time during which the agent had at least one call in the kernel (queued or running)."""
    total_s, end = 0.0, float("-inf")
    for call in sorted(calls, key=lambda c: c.created):
        assert call.finished is not None
        start = max(call.created, end)
        if call.finished > start:
            total_s += call.finished - start
        end = max(end, call.finished)
    return total_s


def summarize(policy: str, results: list[tuple[AgentPlan, list[Syscall]]]) -> PolicyStats:
    """Jain's index is taken over the batch agents, which always want more: each one's
    tokens per second of backlogged time. An interactive agent's throughput is set by its
    think time, not by the scheduler, so it is left out; its latency tells its story."""
    calls = [c for _, cs in results for c in cs]
    makespan_s = max(c.finished or 0.0 for c in calls) - min(c.created for c in calls)
    by_class = {name: [latency_s(c) for plan, cs in results if plan.agent_class == name for c in cs]
                for name in AGENTS}
    rates = [sum(c.usage.tokens_out for c in cs) / backlogged_s(cs)
             for plan, cs in results if plan.agent_class == "batch"]
    return PolicyStats(
        policy=policy, makespan_s=makespan_s,
        tokens_per_s=sum(c.usage.tokens_out for c in calls) / makespan_s,
        calls_per_s=len(calls) / makespan_s,
        interactive_p50_s=percentile(by_class["interactive"], 0.5),
        interactive_p99_s=percentile(by_class["interactive"], 0.99),
        batch_p50_s=percentile(by_class["batch"], 0.5),
        batch_p99_s=percentile(by_class["batch"], 0.99),
        jain_fairness=jain(rates),
        num_preemptions=sum(c.num_preemptions for c in calls))


# ---- the terminal

def settings_for(home: Path, speed: float) -> Settings:
    """SQLite under `home`, the hardware-model backend, the wall clock sped up `speed` times."""
    return load_settings(env={}, overrides={
        "home": str(home), "clock.mode": "wall", "clock.speed": speed, "scheduler.policy": POLICIES[0],
        "backends": [{"kind": "hardware", "models": [MODEL], "num_slots": NUM_SLOTS}]})


ROWS = (   # (label, PolicyStats field, format)
    ("makespan, first submit to last reply (s)", "makespan_s", "{:.1f}"),
    ("throughput (tokens/s)", "tokens_per_s", "{:.0f}"),
    ("throughput (calls/s)", "calls_per_s", "{:.2f}"),
    ("interactive latency p50 (s)", "interactive_p50_s", "{:.2f}"),
    ("interactive latency p99 (s)", "interactive_p99_s", "{:.2f}"),
    ("batch latency p50 (s)", "batch_p50_s", "{:.1f}"),
    ("batch latency p99 (s)", "batch_p99_s", "{:.1f}"),
    ("Jain fairness, batch agents' tokens/s", "jain_fairness", "{:.3f}"),
    ("preemptions", "num_preemptions", "{}"),
)


def results_table(stats: list[PolicyStats]) -> Table:
    table = Table(title="The same workload under each policy (simulated seconds)", box=box.SIMPLE_HEAD,
                  caption="latency: submit to last token. Jain: of each batch agent's tokens per second "
                          "while it had calls in the kernel; 1 means equal shares.")
    table.add_column("")
    for s in stats:
        table.add_column(s.policy, justify="right")
    for label, field_name, fmt in ROWS:
        table.add_row(label, *(fmt.format(getattr(s, field_name)) for s in stats))
    return table


def grid(rows: list[tuple[str, str]]) -> Table:
    """Two columns, label and text; the text wraps inside its own column."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for row in rows:
        table.add_row(*row)
    return table


def setup_rows(tmp: str, settings: Settings, workload: Workload) -> list[tuple[str, str]]:
    backend = settings.backends[0]
    assert isinstance(backend, HardwareBackendSettings)
    return [
        ("directory", f"{tmp} (fresh and temporary; removed on exit)"),
        ("database", f"{settings.db_url.removeprefix('sqlite:///')} (SQLite, the kernel's journal)"),
        ("LLM", f"the simulated hardware-model backend (no API key, no network): {backend.num_slots} "
                f"slots, " + (f"{backend.model_spec} on {backend.tp * backend.pp}x {backend.device} "
                              f"({backend.scheduler} scheduler, simulated iteration by iteration)"
                              if backend.engine == "simulated" else
                              f"{1000 * backend.decode_s_per_token:g} ms per generated token")),
        ("clock", f"the wall clock sped up {settings.clock.speed:g}x; all times are simulated seconds"),
        ("interactive", f"{workload.num_chat_agents} chat agents at priority {INTERACTIVE_PRIORITY}: "
                        f"{workload.num_turns} turns each, 30-60 token replies, think time "
                        f"~{workload.think_mean_s:g} s"),
        ("batch", f"{len(workload.batch_workers)} agents at priority {BATCH_PRIORITY}: "
                  f"{workload.num_batch_jobs} jobs each of 300-600 tokens, back to back, with "
                  f"{'/'.join(map(str, workload.batch_workers))} calls in flight"),
        ("policies", f"{', '.join(POLICIES)}, in turn, on the same kernel once it is idle; seed {SEED}"),
    ]


def takeaway_rows(stats: list[PolicyStats], settings: Settings, workload: Workload) -> list[tuple[str, str]]:
    by = {s.policy: s for s in stats}
    workers = ", ".join(map(str, workload.batch_workers))
    fifo, rr, prio, fair = by["fifo"], by["rr"], by["priority"], by["fair"]
    return [
        ("priority", f"interactive p99 {prio.interactive_p99_s:.2f} s against {fifo.interactive_p99_s:.2f} s "
                     "under fifo: an urgent call preempts a running batch generation"),
        ("rr", f"{rr.num_preemptions} preemptions: a generation yields its slot after "
               f"{settings.scheduler.rr_slice_tokens} tokens whenever another call waits"),
        ("fair", f"Jain {fair.jain_fairness:.3f} against {fifo.jain_fairness:.3f} under fifo: shares are per "
                 f"agent, not per call, so batch agents with {workers} calls in flight get close to the "
                 "same tokens/s"),
    ]


def run(speed: float = 20.0, quick: bool = False) -> None:
    console = Console()
    workload = QUICK if quick else FULL
    plans = make_plans(workload, SEED)
    num_calls = sum(p.num_calls for p in plans)
    stats: list[PolicyStats] = []
    with tempfile.TemporaryDirectory(prefix="aios-demo-") as tmp:
        settings = settings_for(Path(tmp), speed)
        console.print("[bold]aios demo[/]: one kernel on SQLite in a fresh temporary directory")
        console.print(grid(setup_rows(tmp, settings, workload)))
        t0 = time.perf_counter()
        with Progress(TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("calls"), TimeElapsedColumn(), console=Console(file=sys.stderr)) as progress:

            async def main() -> tuple[int, int]:
                async with Kernel(settings) as k:
                    for policy in POLICIES:
                        task = progress.add_task(policy, total=num_calls)
                        results = await run_policy(k, policy, plans, lambda t=task: progress.advance(t))
                        stats.append(summarize(policy, results))
                return k.journal.num_records, k.journal.num_commits

            num_records, num_commits = anyio.run(main)
        wall_s = time.perf_counter() - t0
    console.print(results_table(stats))
    console.print(grid(takeaway_rows(stats, settings, workload)))
    console.print(f"{len(POLICIES)} x {num_calls} calls in {wall_s:.1f} s of wall time; the journal "
                  f"committed {num_records} records in {num_commits} transactions.")
