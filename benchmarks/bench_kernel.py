"""`aios bench kernel`: the kernel's overhead, and what its scheduling buys.

Sections (each with its baseline in the same run, fixed seed):
  overhead        wall time per syscall, journal on, 64 agents, a backend that answers at once
  unscheduled     64 agents x 10 sequential LLM calls on 8 slots: through the kernel vs calling
                  the backend directly with capped exponential backoff on "busy" (virtual time)
  fairness        agents whose demands differ 10x, under fair share and under FIFO (virtual time)
  priority        interactive agents' p99 latency while batch agents saturate the backend,
                  under priority and under FIFO (virtual time)
  context_switch  round-robin with a short slice: the kernel's cost of a snapshot and restore

The LLM is the simulated hardware-model backend throughout: no API key, no network."""
from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aios.clock import VirtualClock
from aios.config import HardwareBackendSettings, Settings, load_settings
from aios.errors import BackendBusy
from aios.events import EventKind
from aios.benchmarks.stats import jain, percentile
from aios.kernel import Kernel
from aios.syscall import Usage
from aios.llm import Chunk, Request, Response, Resume, collect, count_tokens
from aios.llm.hardware import HardwareBackend

MODEL = "sim-llama-3-8b"
NUM_SLOTS = 8


def settings_for(home: Path, policy: str, *, virtual: bool = True, **backend: Any) -> Settings:
    return load_settings(env={}, overrides={
        "home": str(home), "clock.mode": "virtual" if virtual else "wall", "scheduler.policy": policy,
        "backends": [{"kind": "hardware", "models": [MODEL], "num_slots": NUM_SLOTS, **backend}],
    })


def llm_call(prompt_words: int, max_tokens: int, tag: str, priority: int = 0) -> dict[str, Any]:
    return {"kind": "llm", "model": MODEL, "max_tokens": max_tokens, "priority": priority,
            "messages": [{"role": "user", "content": f"{tag} " + "word " * prompt_words}]}


async def gather(fns: list[Callable[[], Awaitable[None]]]) -> None:
    async with anyio.create_task_group() as tg:
        for fn in fns:
            tg.start_soon(fn)


# ---- overhead: wall time per syscall, durable journal

class InstantBackend:
    """A backend that answers at once with one token: what is left is the kernel's cost."""
    name = "instant"
    models = (MODEL,)
    timeout_s = 60.0
    is_continuable = False

    def __init__(self, num_slots: int):
        self.num_slots = num_slots

    async def stream(self, request: Request, resume: Resume | None = None) -> AsyncIterator[Chunk]:
        yield Chunk("ok", 1)
        yield Chunk(finish_reason="stop", usage=Usage(request.num_prompt_tokens or 0, 1))

    async def complete(self, request: Request) -> Response:
        return await collect(self.stream(request), request.model)

    def save(self, request: Request, resume: Resume) -> None:
        return None

    def discard(self, resume: Resume) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def overhead(home: Path, num_calls: int, num_agents: int, tick: Callable[[int], None],
                   num_rounds: int = 5) -> dict[str, Any]:
    """The calls go in `num_rounds` equal rounds after a warm-up; the headline is the
    median round (the machine is shared: one slow round should not decide it, and every
    round is reported)."""
    settings = load_settings(env={}, overrides={"home": str(home), "clock.mode": "wall"})
    async with Kernel(settings, backends=[InstantBackend(num_agents)]) as k:
        pids = [(await k.spawn(f"agent-{i}")).pid for i in range(num_agents)]
        call = llm_call(4, 1, "ping")

        async def agent(pid: int, n: int) -> None:
            for _ in range(n):
                ticket = await k.submit(call, pid=pid)
                await ticket.wait()
                tick(1)

        await gather([lambda p=p: agent(p, 50) for p in pids])   # warm-up
        per_agent = num_calls // (num_agents * num_rounds)
        n = per_agent * num_agents
        rounds_us = []
        commits = k.journal.num_commits
        for _ in range(num_rounds):
            t0 = time.perf_counter()
            await gather([lambda p=p: agent(p, per_agent) for p in pids])
            rounds_us.append(1e6 * (time.perf_counter() - t0) / n)
        commits = k.journal.num_commits - commits
        submit_us = []
        for _ in range(min(500, num_calls // 10)):
            t = time.perf_counter()
            ticket = await k.submit(call, pid=pids[0])
            submit_us.append(1e6 * (time.perf_counter() - t))
            await ticket.wait()
            tick(1)
    median_us = statistics.median(rounds_us)
    return {"overhead_us_per_syscall": round(median_us, 1), "syscalls_per_s": round(1e6 / median_us),
            "rounds_us_per_syscall": [round(r, 1) for r in rounds_us],
            "num_syscalls": n * num_rounds, "num_agents": num_agents, "journal_commits": commits,
            "submit_latency_p50_us": round(percentile(submit_us, 0.5), 1),
            "submit_latency_p99_us": round(percentile(submit_us, 0.99), 1)}


# ---- scheduled vs unscheduled

def closed_loop_workload(rng: random.Random, num_agents: int, num_calls: int) -> list[list[tuple[int, int]]]:
    """Per agent, its calls as (prompt words, output tokens): chat-like, lognormal outputs."""
    return [[(rng.randint(20, 400), max(8, min(512, int(rng.lognormvariate(4.5, 0.6)))))
             for _ in range(num_calls)] for _ in range(num_agents)]


async def through_kernel(home: Path, work: list[list[tuple[int, int]]], tick: Callable[[int], None]) -> dict[str, Any]:
    async with Kernel(settings_for(home, "fifo")) as k:
        pids = [(await k.spawn(f"agent-{i}")).pid for i in range(len(work))]
        start = k.clock.now()
        service: list[float] = []

        async def agent(pid: int, calls: list[tuple[int, int]]) -> None:
            for i, (words, out) in enumerate(calls):
                done = await (await k.submit(llm_call(words, out, f"a{pid}c{i}"), pid=pid)).wait()
                service.append(done.usage.service_s)
                tick(1)

        await gather([lambda p=p, c=c: agent(p, c) for p, c in zip(pids, work, strict=True)])
        makespan = k.clock.now() - start
    bound = sum(service) / NUM_SLOTS
    return {"makespan_s": makespan, "bound_s": bound}


async def unscheduled(work: list[list[tuple[int, int]]], rng: random.Random,
                      tick: Callable[[int], None]) -> dict[str, Any]:
    """Agents call the backend directly; a full backend answers busy and the agent retries
    with capped exponential backoff and jitter (base 0.1 s, cap 5 s, no retry limit), using
    the delay rule of the OpenAI Python client: min(base * 2^n, cap) * (1 - 0.25 * U)."""
    clock = VirtualClock()
    backend = HardwareBackend(HardwareBackendSettings(models=[MODEL], num_slots=NUM_SLOTS), clock)
    num_busy = 0

    async def agent(a: int, calls: list[tuple[int, int]]) -> None:
        nonlocal num_busy
        for i, (words, out) in enumerate(calls):
            c = llm_call(words, out, f"a{a}c{i}")
            request = Request(MODEL, c["messages"], max_tokens=out)
            attempt = 0
            while True:
                try:
                    await backend.complete(request)
                    break
                except BackendBusy:
                    num_busy += 1
                    await clock.sleep(min(0.1 * 2 ** attempt, 5.0) * (1 - 0.25 * rng.random()))
                    attempt += 1
            tick(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(clock.run)
        start = clock.now()
        await gather([lambda a=a, c=c: agent(a, c) for a, c in enumerate(work)])
        makespan = clock.now() - start
        tg.cancel_scope.cancel()
    return {"makespan_s": makespan, "num_busy_answers": num_busy}


# ---- fairness: demands that differ 10x

async def fairness(home: Path, policy: str, window_s: float, tick: Callable[[int], None]) -> dict[str, Any]:
    """8 light agents (40-token replies) and 8 heavy ones (400-token replies), each keeping
    four calls outstanding (64 calls for 8 slots), so every agent is always backlogged.
    An agent's token throughput in the window counts its service as the fair-share policy
    defines it (VTC): input_weight x prompt tokens (when a call starts) + output_weight x
    generated tokens; the output tokens alone are reported beside it."""
    settings = settings_for(home, policy)
    w_in, w_out = settings.scheduler.fair_input_weight, settings.scheduler.fair_output_weight
    async with Kernel(settings) as k:
        light = [(await k.spawn(f"light-{i}")).pid for i in range(8)]
        heavy = [(await k.spawn(f"heavy-{i}")).pid for i in range(8)]
        num_prompt = count_tokens(llm_call(50, 1, "p0000c000000")["messages"])
        service: defaultdict[int, float] = defaultdict(float)
        output: defaultdict[int, int] = defaultdict(int)
        started: set[str] = set()
        start = k.clock.now()
        sub = k.bus.subscribe({EventKind.CALL_TOKEN, EventKind.CALL_STATE}, max_buffer=1 << 20)

        async def agent(pid: int, out: int, lane: int) -> None:
            i = 0
            while k.clock.now() - start < window_s:
                await (await k.submit(llm_call(50, out, f"p{pid:04d}c{lane}{i:05d}"), pid=pid)).wait()
                i += 1
                tick(1)

        async def count() -> None:
            async for ev in sub:
                if ev.at - start > window_s or ev.pid is None:
                    continue
                if ev.kind is EventKind.CALL_TOKEN:
                    output[ev.pid] += 1
                    service[ev.pid] += w_out
                elif ev.data["state"] == "running" and ev.call_id not in started:
                    started.add(ev.call_id)
                    service[ev.pid] += w_in * num_prompt

        async with anyio.create_task_group() as tg:
            tg.start_soon(count)
            await gather([lambda p=p, o=o, n=n: agent(p, o, n) for pids, o in ((light, 40), (heavy, 400))
                          for p in pids for n in range(4)])
            tg.cancel_scope.cancel()
        sub.close()
        lagging = sub.is_lagging
    rates = [service[p] / window_s for p in light + heavy]
    out_rates = [output[p] / window_s for p in light + heavy]
    return {"jain": jain(rates), "jain_output_tokens": jain(out_rates),
            "light_tokens_per_s": statistics.mean(out_rates[:8]),
            "heavy_tokens_per_s": statistics.mean(out_rates[8:]), "lagging": lagging}


# ---- priority: interactive latency under batch saturation

async def priority(home: Path, policy: str, rng: random.Random, num_turns: int,
                   tick: Callable[[int], None]) -> dict[str, Any]:
    async with Kernel(settings_for(home, policy)) as k:
        batch = [(await k.spawn(f"batch-{i}")).pid for i in range(16)]
        chat = [(await k.spawn(f"chat-{i}", priority=10)).pid for i in range(8)]
        latencies: list[float] = []
        preemptions = 0
        is_running = True
        thinks = {p: [rng.expovariate(1 / 4.0) for _ in range(num_turns)] for p in chat}

        async def batch_agent(pid: int) -> None:
            nonlocal preemptions
            i = 0
            while is_running:
                done = await (await k.submit(llm_call(200, 400, f"b{pid}c{i}"), pid=pid)).wait()
                preemptions += done.num_preemptions
                i += 1

        async def chat_agent(pid: int) -> None:
            for i, think_s in enumerate(thinks[pid]):
                await k.clock.sleep(think_s)
                done = await (await k.submit(llm_call(60, 40, f"c{pid}t{i}", priority=10), pid=pid)).wait()
                latencies.append(done.finished - done.created)
                tick(1)

        async with anyio.create_task_group() as tg:
            for p in batch:
                tg.start_soon(batch_agent, p)
            await k.clock.sleep(30.0)   # the batch agents saturate the backend first
            await gather([lambda p=p: chat_agent(p) for p in chat])
            is_running = False
            tg.cancel_scope.cancel()
        await k.shutdown(drain=False)
    return {"interactive_p50_s": percentile(latencies, 0.5), "interactive_p99_s": percentile(latencies, 0.99),
            "batch_preemptions": preemptions}


# ---- context switch cost

async def context_switch(home: Path, tick: Callable[[int], None]) -> dict[str, Any]:
    settings = load_settings(env={}, overrides={
        "home": str(home), "clock.mode": "virtual", "scheduler.policy": "rr", "scheduler.rr_slice_tokens": 8,
        "backends": [{"kind": "hardware", "models": [MODEL], "num_slots": NUM_SLOTS}]})
    async with Kernel(settings) as k:
        pids = [(await k.spawn(f"rr-{i}")).pid for i in range(32)]

        async def agent(pid: int) -> None:
            for i in range(4):
                await (await k.submit(llm_call(30, 96, f"r{pid}c{i}"), pid=pid)).wait()
                tick(1)

        await gather([lambda p=p: agent(p) for p in pids])
        return {"context_switch_us": round(k.context.switch_us, 2), "num_switches": k.context.num_snapshots}


def python_loop_ms() -> float:
    """The time of a fixed pure-Python loop: how fast the interpreter runs here, now."""
    t = time.perf_counter()
    total = 0
    for i in range(5_000_000):
        total += i
    return round(1e3 * (time.perf_counter() - t), 1)


def run(*, quick: bool = False, seed: int = 7, show_progress: bool = True) -> dict[str, Any]:
    rng = random.Random(seed)
    num_calls = 2_000 if quick else 20_000
    turns = 4 if quick else 12
    window_s = 120.0 if quick else 600.0
    work = closed_loop_workload(rng, 64, 10)
    console = Console(file=sys.stderr, no_color=True) if not show_progress else Console(file=sys.stderr)
    result: dict[str, Any] = {"bench": "kernel", "seed": seed, "quick": quick,
                              "llm": "hardware-model backend (simulated; no API key)"}
    with tempfile.TemporaryDirectory(prefix="aios-bench-") as tmp, \
            Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                     TimeElapsedColumn(), console=console, disable=not show_progress) as progress:
        root = Path(tmp)

        def stage(name: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(name, total=total)
            return lambda n: progress.advance(task, n)

        async def main() -> None:
            before = python_loop_ms()
            result["overhead"] = await overhead(root / "overhead", num_calls, 64,
                                                stage("overhead (64 agents)", num_calls + 64 * 50 + min(500, num_calls // 10)))
            result["machine"] = {"python_loop_ms_before": before, "python_loop_ms_after": python_loop_ms(),
                                 "measure": "a fixed pure-Python loop (5M additions), timed before and after the "
                                            "overhead rounds: the speed of this machine's CPU when they ran, by "
                                            "which the overhead scales"}
            k = await through_kernel(root / "sched", work, stage("64 agents via kernel", 640))
            u = await unscheduled(work, random.Random(seed), stage("64 agents, no scheduler", 640))
            result["unscheduled"] = {"kernel_makespan_s": round(k["makespan_s"], 2),
                                     "direct_makespan_s": round(u["makespan_s"], 2),
                                     "direct_busy_answers": u["num_busy_answers"],
                                     "ideal_makespan_s": round(k["bound_s"], 2),
                                     "speedup_vs_unscheduled": round(u["makespan_s"] / k["makespan_s"], 3),
                                     "makespan_vs_bound": round(k["makespan_s"] / k["bound_s"], 4)}
            fair = await fairness(root / "fair", "fair", window_s, stage("fair share, 10x demands", 0))
            fifo = await fairness(root / "fair-fifo", "fifo", window_s, stage("fifo, 10x demands", 0))
            result["fairness"] = {"jain_fairness_fair_share": round(fair["jain"], 4),
                                  "jain_fairness_fifo": round(fifo["jain"], 4),
                                  "jain_output_tokens_fair_share": round(fair["jain_output_tokens"], 4),
                                  "jain_output_tokens_fifo": round(fifo["jain_output_tokens"], 4),
                                  "measure": "per-agent VTC service: 1 x prompt + 2 x output tokens per second",
                                  "fair_light_tokens_per_s": round(fair["light_tokens_per_s"], 2),
                                  "fair_heavy_tokens_per_s": round(fair["heavy_tokens_per_s"], 2),
                                  "fifo_light_tokens_per_s": round(fifo["light_tokens_per_s"], 2),
                                  "fifo_heavy_tokens_per_s": round(fifo["heavy_tokens_per_s"], 2),
                                  "window_s": window_s}
            pri = await priority(root / "prio", "priority", random.Random(seed), turns,
                                 stage("priority, batch saturating", 8 * turns))
            base = await priority(root / "prio-fifo", "fifo", random.Random(seed), turns,
                                  stage("fifo, batch saturating", 8 * turns))
            result["priority"] = {"high_priority_p99_speedup": round(base["interactive_p99_s"] / pri["interactive_p99_s"], 2),
                                  "priority_interactive_p50_s": round(pri["interactive_p50_s"], 3),
                                  "priority_interactive_p99_s": round(pri["interactive_p99_s"], 3),
                                  "fifo_interactive_p50_s": round(base["interactive_p50_s"], 3),
                                  "fifo_interactive_p99_s": round(base["interactive_p99_s"], 3),
                                  "batch_preemptions": pri["batch_preemptions"]}
            result["context_switch"] = await context_switch(root / "rr", stage("round-robin, slice 8", 128))

        anyio.run(main)
    flat = {"overhead_us_per_syscall": result["overhead"]["overhead_us_per_syscall"],
            "syscalls_per_s": result["overhead"]["syscalls_per_s"],
            "submit_latency_p50_us": result["overhead"]["submit_latency_p50_us"],
            "speedup_vs_unscheduled": result["unscheduled"]["speedup_vs_unscheduled"],
            "makespan_vs_bound": result["unscheduled"]["makespan_vs_bound"],
            "jain_fairness_fair_share": result["fairness"]["jain_fairness_fair_share"],
            "high_priority_p99_speedup": result["priority"]["high_priority_p99_speedup"],
            "context_switch_us": result["context_switch"]["context_switch_us"]}
    return {**{k: v for k, v in result.items() if not isinstance(v, dict)}, **flat,
            "details": {k: v for k, v in result.items() if isinstance(v, dict)}}
