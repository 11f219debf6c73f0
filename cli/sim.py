"""`aios sim run`: a serving simulation from a TOML file (aios.hardware.sim; examples in
docs/sim/), printed as tables or one JSON object, with charts on request."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from aios.hardware.sim import SimReport

app = typer.Typer(help="Serving simulations on the hardware model, described by a TOML file.", no_args_is_help=True)


@app.command("run")
def run(
    config: Annotated[Path, typer.Option("--config", "-c", help="the simulation's TOML file (see docs/sim/)")],
    plot: Annotated[Path | None, typer.Option(help="write CDF and latency-vs-load PNGs into this folder")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object instead of tables")] = False,
    seed: Annotated[int | None, typer.Option(help="the workload's random seed (overrides [workload] seed)")] = None,
) -> None:
    """Simulates the file's workload (and each sweep rate, and the capacity search), then
    reports latencies, throughput and the simulator's own speed."""
    from aios.hardware.sim import describe, load_config, simulate   # numpy and the model only when asked for

    cfg = load_config(config, seed=seed)
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True,
                  disable=as_json and not sys.stderr.isatty()) as bar:
        task = bar.add_task("simulating", total=None)
        # an unknown total (the capacity search's probes) grows one run ahead of the count
        report = simulate(cfg, lambda done, total, label: bar.update(
            task, completed=done, total=total if total is not None else done + 1, description=label))
    written: list[Path] = []
    if plot is not None:
        from aios.hardware.charts import write_charts   # matplotlib only when asked for
        written = write_charts(report, plot)
    if as_json:
        print(json.dumps(report.to_dict() | {"plots": [str(p) for p in written]}))
        return
    console = Console()
    console.print(f"[bold]Simulated:[/bold] {escape(describe(cfg))}")
    console.print(_summary_table(report))
    if report.sweep:
        console.print(_sweep_table(report))
    if report.capacity is not None:
        cap = report.capacity
        console.print(f"capacity: {cap.rate:.3g} requests/s at {cap.attainment:.1%} attainment "
                      f"(target {cfg.slo.attainment:.0%}, {len(cap.probes)} probes)"
                      + (f"; {cap.reason}" if cap.reason else ""))
    for path in written:
        console.print(f"wrote {path}")


def _summary_table(report: SimReport) -> Table:
    s = report.summary()
    table = Table("", "", box=None, show_header=False, title="summary", title_justify="left")
    reasons = [f"{n}: {why}" for why, n in s["unserved_reasons"].items()]
    unserved = reasons[0] if len(reasons) == 1 else f"{s['unserved']}" + (f" ({'; '.join(reasons)})" if reasons else "")
    rows: list[tuple[str, str]] = [
        ("requests", str(s["requests"])), ("finished", str(s["finished"])), ("unserved", unserved),
        ("throughput", f"{s['throughput_tokens_per_s']:,.0f} tokens/s"),
        ("TTFT p50 / p99", f"{_ms(s['ttft_p50_s'])} / {_ms(s['ttft_p99_s'])}"),
        ("TBT p50 / p99", f"{_ms(s['tbt_p50_s'])} / {_ms(s['tbt_p99_s'])}"),
        ("E2E p50", _s(s["e2e_p50_s"])), ("mean batch", f"{s['mean_batch']:.1f}"),
        ("preemptions", str(s["preemptions"])), ("swaps", str(s["swaps"])),
        ("compute / HBM use", f"{_pct(s.get('compute_util'))} / {_pct(s.get('bandwidth_util'))} of peak, per GPU"),
        ("iterations", f"{s['iterations']:,}"), ("makespan", f"{_s(s['makespan_s'])} simulated"),
    ]
    if "slo_attainment" in s:
        rows += [("SLO attainment", f"{s['slo_attainment']:.1%} (target {s['slo_target']:.0%})"),
                 ("goodput", f"{s['goodput_requests_per_s']:.2f} requests/s")]
    rows += [("sim time", f"{report.sim_s:.2f} s wall, {report.num_runs} run(s)"),
             ("sim speed", f"{report.requests_per_s:,.0f} requests/s, {report.iterations_per_s:,.0f} iterations/s")]
    for name, value in rows:
        table.add_row(name, value)
    return table


def _sweep_table(report: SimReport) -> Table:
    with_slo = report.config.slo is not None
    table = Table(title="latency against load (TTFT and TBT in ms, E2E in s)", title_justify="left", box=None,
                  header_style="bold", padding=(0, 1))
    for name in ("req/s", "done", "tok/s", "TTFT p50", "TTFT p99", "TBT p50", "TBT p99", "E2E p50",
                 *(["in SLO"] if with_slo else [])):
        table.add_column(name, justify="right")
    for point in report.sweep:
        s = report.summary(point.result)
        ms = [_num(s[k], 1000) for k in ("ttft_p50_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s")]
        table.add_row(f"{point.rate:g}", str(s["finished"]), f"{s['throughput_tokens_per_s']:.0f}", *ms,
                      _num(s["e2e_p50_s"], 1, 2), *([f"{s['slo_attainment']:.1%}"] if with_slo else []))
    return table


def _num(seconds: Any, scale: float, digits: int = 1) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * scale:.{digits}f}"


def _ms(seconds: Any) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def _s(seconds: Any) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds:.2f} s"


def _pct(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"
