"""GET /metrics in the Prometheus text format: queue depths and busy slots per resource,
syscall latency histograms, tokens, and usage per process. Counters are fed by the
kernel's event bus, so the kernel does not know that metrics exist."""
from __future__ import annotations

import bisect
from collections import defaultdict

from aios.events import EventKind, Subscription
from aios.kernel import Kernel
from aios.process import Process

BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self, kernel: Kernel):
        self.kernel = kernel
        # guarded by the event loop; keyed by (kind, final state)
        self.num_calls: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.latency_buckets: defaultdict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS_S) + 1))
        self.latency_sum_s: defaultdict[str, float] = defaultdict(float)
        self.num_tokens: defaultdict[str, int] = defaultdict(int)   # "in" | "out"

    async def run(self, sub: Subscription) -> None:
        """Consumes terminal state events until the subscription closes."""
        async for ev in sub:
            data = ev.data
            if "latency_s" not in data:
                continue
            kind = data["kind"]
            self.num_calls[(kind, data["state"])] += 1
            self.latency_buckets[kind][bisect.bisect_left(BUCKETS_S, data["latency_s"])] += 1
            self.latency_sum_s[kind] += data["latency_s"]
            self.num_tokens["in"] += data["tokens_in"]
            self.num_tokens["out"] += data["tokens_out"]

    def subscribe(self) -> Subscription:
        return self.kernel.bus.subscribe({EventKind.CALL_STATE}, max_buffer=65536)

    def render(self) -> str:
        k = self.kernel
        out: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        family("aios_queue_depth", "gauge", "calls waiting per resource")
        for res in k.scheduler:
            out.append(f'aios_queue_depth{{resource="{res.name}",policy="{res.policy.name}"}} {len(res.policy)}')
        family("aios_slots_busy", "gauge", "slots in use per resource")
        for res in k.scheduler:
            out.append(f'aios_slots_busy{{resource="{res.name}"}} {len(res.running)}')
        family("aios_slots", "gauge", "slots per resource")
        for res in k.scheduler:
            out.append(f'aios_slots{{resource="{res.name}"}} {res.num_slots}')
        family("aios_syscalls_in_flight", "gauge", "calls accepted and not over")
        out.append(f"aios_syscalls_in_flight {len(k.tickets)}")
        family("aios_syscalls_total", "counter", "finished calls by kind and final state")
        for (kind, state), n in sorted(self.num_calls.items()):
            out.append(f'aios_syscalls_total{{kind="{kind}",state="{state}"}} {n}')
        family("aios_syscall_latency_seconds", "histogram", "submit to end, per kind")
        for kind, counts in sorted(self.latency_buckets.items()):
            running = 0
            for bound, n in zip((*BUCKETS_S, float("inf")), counts, strict=True):
                running += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(f'aios_syscall_latency_seconds_bucket{{kind="{kind}",le="{le}"}} {running}')
            out.append(f'aios_syscall_latency_seconds_sum{{kind="{kind}"}} {self.latency_sum_s[kind]:.6f}')
            out.append(f'aios_syscall_latency_seconds_count{{kind="{kind}"}} {running}')
        family("aios_tokens_total", "counter", "LLM tokens, prompt (in) and generated (out)")
        for direction in ("in", "out"):
            out.append(f'aios_tokens_total{{direction="{direction}"}} {self.num_tokens[direction]}')
        procs = list(k.processes.procs.values())
        family("aios_process_tokens_total", "counter", "tokens used per process")
        for p in procs:
            for direction, n in (("in", p.usage.tokens_in), ("out", p.usage.tokens_out)):
                out.append(f'aios_process_tokens_total{{{_labels(p)},direction="{direction}"}} {n}')
        family("aios_process_cost_usd_total", "counter", "provider cost per process")
        for p in procs:
            out.append(f'aios_process_cost_usd_total{{{_labels(p)}}} {p.usage.cost_usd:.6f}')
        return "\n".join(out) + "\n"


def _labels(p: Process) -> str:
    return f'pid="{p.pid}",name="{_escape(p.name)}",principal="{_escape(p.principal)}"'


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
