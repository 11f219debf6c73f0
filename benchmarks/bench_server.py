"""`aios bench server`: what the daemon and its HTTP layer cost, against a real daemon
(`python -m aios.cli.main kernel start`) run as a subprocess on loopback.

Sections (fixed seed, a warm-up before each timed part, the in-process baseline in the same run):
  start       cold start to the first 200 from /healthz (fresh AIOS_HOME each time), and idle RSS
  throughput  32 concurrent SDK clients over HTTP vs 32 in-process clients, a backend that answers at once
  overhead    one client, sequential calls: latency over HTTP minus latency in-process
  spawn       spawn request to the recorded exit of a trivial agent, per runner
  agents      the daemon's RSS with 1,000 in-process agents alive, each with an LLM call in flight

The LLM is the simulated hardware-model backend throughout: no API key, no network."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aios.benchmarks.stats import percentile
from aios.config import load_settings
from aios.kernel import Kernel
from aios.process.inproc import KernelTransport
from aios.sdk import AsyncClient

MODEL = "sim-llama-3-8b"
NUM_CLIENTS = 32
NUM_AGENTS = 1_000
SECTION_TIMEOUT_S = 120.0   # no section waits longer on a daemon that stopped answering

# a backend that answers at once: what is left is the kernel's and the HTTP layer's cost
# (the fixed-rate engine, whose costs can be set to zero)
INSTANT_CONFIG = f"""
[[backends]]
kind = "hardware"
engine = "fixed"
models = ["{MODEL}"]
num_slots = 64
ttft_base_s = 0
decode_s_per_token = 0
prefill_tokens_per_s = 1e12
"""

# a backend so slow that every call stays in flight for the whole measurement (64 tokens x 10 s),
# with a slot for each agent, so every call is running (holding backend state), none only queued
SLOW_CONFIG = f"""
[[backends]]
kind = "hardware"
engine = "fixed"
models = ["{MODEL}"]
num_slots = 1024
timeout_s = 3600
decode_s_per_token = 10
"""

TRIVIAL_AGENT = 'def main(task, os):\n    return "ok"\n'
CALLING_AGENT = (f'async def main(task, os):\n'
                 f'    await os.llm.chat("hello from " + task, model="{MODEL}", max_tokens=64)\n'
                 f'    return "ok"\n')


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a live process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def mib(kib: float) -> float:
    return round(kib / 1024, 1)


# ---- the daemon under test

class Daemon:
    """`python -m aios.cli.main kernel start` in a subprocess, with its own AIOS_HOME and a
    free port; `stop` runs `kernel stop --cancel`, and `close` kills whatever is still alive."""

    def __init__(self, root: Path, config: Path):
        self.home = root / "home"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config
        self.log_path = root / "daemon.out"
        root.mkdir(parents=True, exist_ok=True)
        # no AIOS_* settings leak in from the caller's environment
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIOS_")} | {"AIOS_HOME": str(self.home)}
        self.proc: subprocess.Popen[bytes] | None = None
        self.is_stopping = False

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "aios.cli.main", *args]

    def start(self, timeout_s: float = 20.0) -> float:
        """-> seconds from launch to the first 200 from /healthz (polled every 10 ms)."""
        with open(self.log_path, "ab") as log:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(self._cli("kernel", "start", "--port", str(self.port),
                                                   "--config", str(self.config)),
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        with httpx.Client(timeout=1.0) as http:
            while (elapsed := time.perf_counter() - t0) < timeout_s:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited at start (code {self.proc.returncode}): {self.tail()}")
                try:
                    if http.get(f"{self.url}/healthz").status_code == 200:
                        return elapsed
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
        raise RuntimeError(f"the daemon did not answer /healthz within {timeout_s:g} s: {self.tail()}")

    def tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return ""

    def memory_kib(self) -> dict[str, int]:
        assert self.proc is not None
        return proc_status_kib(self.proc.pid)

    def stop(self, timeout_s: float = 30.0) -> float:
        """`aios kernel stop --cancel`; -> seconds until the daemon has exited (and is reaped:
        it is our child)."""
        assert self.proc is not None
        self.is_stopping = True
        t0 = time.perf_counter()
        stopper = subprocess.Popen(self._cli("kernel", "stop", "--cancel"), env=self.env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            while self.proc.poll() is None:
                if stopper.poll() not in (None, 0):
                    err = stopper.stderr.read().decode(errors="replace").strip() if stopper.stderr else ""
                    raise RuntimeError(f"`aios kernel stop --cancel` failed: {err}")
                if time.perf_counter() - t0 > timeout_s:
                    raise RuntimeError(f"the daemon was still running {timeout_s:g} s after `aios kernel stop`")
                time.sleep(0.01)
            elapsed = time.perf_counter() - t0
            stopper.wait(10)
        finally:
            if stopper.poll() is None:
                stopper.kill()
                stopper.wait()
        return elapsed

    def close(self) -> None:
        """Whatever happened: a daemon still running is stopped (once), else killed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if not self.is_stopping:
            try:
                self.stop(timeout_s=15.0)
            except (RuntimeError, subprocess.TimeoutExpired, OSError):
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    try:
        yield daemon
    finally:
        daemon.close()


async def gather(fns: list[Callable[[], Awaitable[None]]]) -> None:
    async with anyio.create_task_group() as tg:
        for fn in fns:
            tg.start_soon(fn)


def llm_call(rng: random.Random) -> dict[str, Any]:
    return {"kind": "llm", "model": MODEL, "max_tokens": 1,
            "messages": [{"role": "user", "content": "ping " + "word " * rng.randint(2, 16)}]}


async def checked(client: AsyncClient, call: dict[str, Any]) -> None:
    info = await client.syscall(call, wait=True)
    if info.state.value != "done":
        raise RuntimeError(f"a benchmark call ended {info.state.value}: {info.error}")


# ---- throughput: 32 concurrent clients

async def throughput(clients: list[AsyncClient], rng: random.Random, num_calls: int, tick: Callable[[int], None],
                     num_rounds: int = 3) -> dict[str, Any]:
    """Closed loop: each client makes its next call when the last one answers. The calls go in
    `num_rounds` equal rounds after a warm-up; the headline is the median round."""
    calls = [llm_call(rng) for _ in range(64)]

    async def client_loop(c: AsyncClient, i: int, n: int) -> None:
        for j in range(n):
            await checked(c, calls[(i + j) % len(calls)])
            tick(1)

    await gather([lambda c=c, i=i: client_loop(c, i, 10) for i, c in enumerate(clients)])   # warm-up
    per_client = max(1, num_calls // (len(clients) * num_rounds))
    rates = []
    for _ in range(num_rounds):
        t0 = time.perf_counter()
        await gather([lambda c=c, i=i: client_loop(c, i, per_client) for i, c in enumerate(clients)])
        rates.append(per_client * len(clients) / (time.perf_counter() - t0))
    return {"syscalls_per_s": round(statistics.median(rates)), "rounds_per_s": [round(r) for r in rates],
            "num_syscalls": per_client * len(clients) * num_rounds}


# ---- overhead: one client, sequential, HTTP vs in-process, interleaved

async def overhead(http: AsyncClient, inproc: AsyncClient, rng: random.Random, num_calls: int,
                   tick: Callable[[int], None], block: int = 50) -> dict[str, Any]:
    """Blocks of `block` calls alternate between the two paths, so drift on a shared machine
    falls on both alike."""
    calls = [llm_call(rng) for _ in range(64)]
    latencies: dict[str, list[float]] = {"http": [], "inproc": []}

    async def one_block(path: str, client: AsyncClient, record: bool) -> None:
        for j in range(block):
            t = time.perf_counter()
            await checked(client, calls[j % len(calls)])
            if record:
                latencies[path].append(1e3 * (time.perf_counter() - t))
            tick(1)

    for path, client in (("inproc", inproc), ("http", http)):   # warm-up
        await one_block(path, client, False)
    for _ in range(max(1, num_calls // block)):
        await one_block("inproc", inproc, True)
        await one_block("http", http, True)
    out: dict[str, Any] = {}
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        h, i = percentile(latencies["http"], q), percentile(latencies["inproc"], q)
        out[f"http_{name}_ms"], out[f"inproc_{name}_ms"] = round(h, 3), round(i, 3)
        out[f"overhead_{name}_ms"] = round(h - i, 3)
    out["ratio_p50"] = round(out["http_p50_ms"] / out["inproc_p50_ms"], 2) if out["inproc_p50_ms"] else None
    out["num_calls_per_path"] = len(latencies["http"])
    return out


# ---- spawn: request to recorded exit of a trivial agent

async def spawn_to_exit(client: AsyncClient, http: httpx.AsyncClient, program: Path, runner: str, n: int,
                        tick: Callable[[int], None], timeout_s: float = 30.0) -> list[float]:
    """Per run: POST /v1/processes, then GET /v1/processes/{pid}/logs?follow=true, which ends
    once the process's exit is recorded; checks it exited 0 and said "ok". One warm-up run."""
    times = []
    for i in range(n + 1):
        with anyio.fail_after(timeout_s):
            t0 = time.perf_counter()
            proc = await client.processes.spawn(f"bench-{runner}-{i}", program=str(program), task="", runner=runner)
            async with http.stream("GET", f"/v1/processes/{proc.pid}/logs", params={"follow": "true"}) as resp:
                output = b"".join([chunk async for chunk in resp.aiter_bytes()])
            elapsed = time.perf_counter() - t0
        info = await client.processes.get(proc.pid)
        if info.state.value != "exited" or info.exit_code != 0 or output.strip() != b"ok":
            raise RuntimeError(f"the trivial agent ({runner}) ended {info.state.value}, code {info.exit_code}, "
                               f"reason {info.exit_reason!r}, output {output[:200]!r}")
        if i > 0:
            times.append(1e3 * elapsed)
        tick(1)
    return times


# ---- 1,000 agents, each with a call in flight

async def many_agents(daemon: Daemon, program: Path, num_agents: int, tick: Callable[[int], None],
                      timeout_s: float = 60.0) -> dict[str, Any]:
    idle = daemon.memory_kib()
    async with AsyncClient(daemon.url) as client, httpx.AsyncClient(base_url=daemon.url, timeout=10.0) as http:
        t0 = time.perf_counter()
        pending = iter(range(num_agents))

        async def spawner() -> None:
            for i in pending:
                await client.processes.spawn(f"agent-{i}", program=str(program), task=str(i), runner="inproc")
                tick(1)

        with anyio.fail_after(timeout_s):
            await gather([spawner for _ in range(16)])
        spawned_s = time.perf_counter() - t0
        in_flight, deadline = 0, time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            stats = (await http.get("/v1/kernel/stats")).json()
            if (in_flight := stats["num_in_flight"]) >= num_agents:
                break
            await anyio.sleep(0.05)
        else:
            raise RuntimeError(f"only {in_flight} of {num_agents} calls in flight after {timeout_s:g} s")
        alive = sum(p["state"] != "exited" for p in stats["processes"])
        ready_s = time.perf_counter() - t0
    await anyio.sleep(0.5)   # settle: whatever the daemon allocates once they are all waiting
    loaded = daemon.memory_kib()
    return {"num_agents": num_agents, "num_alive": alive, "num_in_flight": in_flight,
            "spawn_all_s": round(spawned_s, 2), "all_in_flight_s": round(ready_s, 2),
            "rss_before_mib": mib(idle["VmRSS"]), "rss_mib": mib(loaded["VmRSS"]),
            "peak_rss_mib": mib(loaded["VmHWM"]),
            "kib_per_agent": round((loaded["VmRSS"] - idle["VmRSS"]) / num_agents, 1)}


async def over_http(url: str, config: Path, home: Path, seed: int, num_throughput: int, num_overhead: int,
                    spawn_runs: dict[str, int], trivial: Path,
                    stage: Callable[[str, int], Callable[[int], None]]) -> dict[str, Any]:
    """The throughput, overhead and spawn sections against the daemon at `url`, with their
    in-process baseline on a Kernel in this process with the same settings."""
    out: dict[str, Any] = {}
    async with Kernel(load_settings(config, env={}, overrides={"home": str(home)})) as k:
        http_clients = [AsyncClient(url) for _ in range(NUM_CLIENTS)]
        inproc_clients = [AsyncClient(transport=KernelTransport(k)) for _ in range(NUM_CLIENTS)]
        try:
            per_path = num_throughput + NUM_CLIENTS * 10
            with anyio.fail_after(SECTION_TIMEOUT_S):
                h = await throughput(http_clients, random.Random(seed), num_throughput,
                                     stage(f"{NUM_CLIENTS} clients over HTTP", per_path))
            with anyio.fail_after(SECTION_TIMEOUT_S):
                i = await throughput(inproc_clients, random.Random(seed), num_throughput,
                                     stage(f"{NUM_CLIENTS} clients in-process", per_path))
            out["throughput"] = {"http_syscalls_per_s": h["syscalls_per_s"],
                                 "inproc_syscalls_per_s": i["syscalls_per_s"],
                                 "http_rounds_per_s": h["rounds_per_s"], "inproc_rounds_per_s": i["rounds_per_s"],
                                 "ratio_inproc_over_http": round(i["syscalls_per_s"] / h["syscalls_per_s"], 2),
                                 "num_syscalls_per_path": h["num_syscalls"], "num_clients": NUM_CLIENTS}
            with anyio.fail_after(SECTION_TIMEOUT_S):
                out["overhead"] = await overhead(http_clients[0], inproc_clients[0], random.Random(seed),
                                                 num_overhead, stage("1 client, HTTP vs in-process",
                                                                     2 * (num_overhead // 50 * 50 + 50)))
        finally:
            for c in http_clients:
                await c.aclose()
    async with AsyncClient(url) as client, httpx.AsyncClient(base_url=url, timeout=30.0) as http:
        out["spawn"] = {}
        for runner, n in spawn_runs.items():
            times = await spawn_to_exit(client, http, trivial, runner, n, stage(f"spawn to exit, {runner}", n + 1))
            out["spawn"][f"{runner}_ms"] = round(statistics.median(times), 1)
            out["spawn"][f"{runner}_each_ms"] = [round(t, 1) for t in times]
    return out


def run(*, quick: bool = False, seed: int = 7, show_progress: bool = True) -> dict[str, Any]:
    num_throughput = 1_920 if quick else 9_600
    num_overhead = 500 if quick else 1_500
    num_starts = 3
    spawn_runs = {"inproc": 5 if quick else 15, "subprocess": 3 if quick else 7}
    console = Console(file=sys.stderr, no_color=True) if not show_progress else Console(file=sys.stderr)
    result: dict[str, Any] = {"bench": "server", "seed": seed, "quick": quick,
                              "llm": "hardware-model backend (simulated; no API key)"}
    with tempfile.TemporaryDirectory(prefix="aios-bench-server-") as tmp, \
            Progress(TextColumn("{task.description:<30}"), BarColumn(), MofNCompleteColumn(),
                     TimeElapsedColumn(), console=console, disable=not show_progress) as progress:
        root = Path(tmp)
        instant, slow = root / "instant.toml", root / "slow.toml"
        instant.write_text(INSTANT_CONFIG)
        slow.write_text(SLOW_CONFIG)
        trivial, calling = root / "trivial_agent.py", root / "calling_agent.py"
        trivial.write_text(TRIVIAL_AGENT)
        calling.write_text(CALLING_AGENT)

        def stage(name: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(name, total=total)
            return lambda n: progress.advance(task, n)

        # cold starts, each with a fresh AIOS_HOME; the last daemon then serves the HTTP sections
        tick = stage("daemon cold start", num_starts)
        starts, idle_rss, stops = [], [], []
        for i in range(num_starts):
            with running(Daemon(root / f"start-{i}", instant)) as d:
                starts.append(d.start())
                time.sleep(0.5)   # idle: let the start settle
                idle_rss.append(d.memory_kib()["VmRSS"])
                tick(1)
                if i == num_starts - 1:
                    result |= anyio.run(over_http, d.url, instant, root / "inproc", seed, num_throughput,
                                        num_overhead, spawn_runs, trivial, stage)
                stops.append(d.stop())
        result["start"] = {"start_s": round(statistics.median(starts), 3), "starts_s": [round(s, 3) for s in starts],
                           "idle_rss_mib": mib(statistics.median(idle_rss)),
                           "idle_rss_each_mib": [mib(r) for r in idle_rss], "stop_s": [round(s, 3) for s in stops]}

        with running(Daemon(root / "agents", slow)) as d:
            d.start()
            time.sleep(0.5)
            result["agents"] = anyio.run(many_agents, d, calling, NUM_AGENTS,
                                         stage(f"{NUM_AGENTS} agents, calls in flight", NUM_AGENTS))
            result["agents"]["stop_cancel_s"] = round(d.stop(), 3)

    ov, tp, sp, ag, st = result["overhead"], result["throughput"], result["spawn"], result["agents"], result["start"]
    flat = {"http_syscalls_per_s": tp["http_syscalls_per_s"],
            "inproc_syscalls_per_s": tp["inproc_syscalls_per_s"],
            "http_overhead_p50_ms": ov["overhead_p50_ms"], "http_overhead_p99_ms": ov["overhead_p99_ms"],
            "http_overhead_ratio": ov["ratio_p50"],
            "spawn_subprocess_ms": sp["subprocess_ms"], "spawn_inproc_ms": sp["inproc_ms"],
            "daemon_rss_mib_1000_agents": ag["peak_rss_mib"],
            "daemon_start_s": st["start_s"], "daemon_idle_rss_mib": st["idle_rss_mib"]}
    notes = {
        "http_syscalls_per_s": f"median of 3 rounds: {NUM_CLIENTS} AsyncClients over HTTP to a daemon subprocess "
                               "on loopback, each making its next llm call (max_tokens 1, wait=true) as the last "
                               "answers, against a hardware backend that answers at once; inproc_syscalls_per_s is "
                               f"the same with {NUM_CLIENTS} AsyncClient(transport=KernelTransport(k)) on a Kernel in this process",
        "http_overhead": "one client, sequential calls, blocks of 50 alternating between HTTP (to the daemon) "
                         "and in-process (a Kernel with the same settings in this process); overhead pNN is "
                         "pNN(http latency) - pNN(in-process latency), not a percentile of differences; "
                         "http_overhead_ratio is p50(http) / p50(in-process)",
        "spawn": "median time from POST /v1/processes to the end of GET /v1/processes/{pid}/logs?follow=true, "
                 "i.e. until the exit of a trivial agent (def main(task, os): return 'ok') is recorded; "
                 "one warm-up run per runner is left out",
        "daemon_rss_mib_1000_agents": f"peak RSS (VmHWM) of the daemon with {NUM_AGENTS} inproc agents spawned "
                                      "over HTTP, each an async main with one llm call in flight on a backend "
                                      "slow enough to hold them all (64 tokens x 10 s, a slot each)",
        "daemon_start_s": "median of 3 cold starts (fresh AIOS_HOME) from launching `python -m aios.cli.main "
                          "kernel start` to the first 200 from /healthz, polled every 10 ms",
        "daemon_idle_rss_mib": "VmRSS of the daemon 0.5 s after its first 200 from /healthz, median of the starts",
        "stop_s": "from launching `python -m aios.cli.main kernel stop --cancel` to the daemon's exit; most of it "
                  "is that command's own start (it imports the whole aios.server package)",
    }
    return {**{k: v for k, v in result.items() if not isinstance(v, dict)}, **flat, "notes": notes,
            "details": {k: v for k, v in result.items() if isinstance(v, dict)}}
