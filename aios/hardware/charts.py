"""Charts of a simulation report (aios.hardware.sim), drawn with matplotlib to PNG files:
the CDFs of TTFT, time between tokens and end-to-end latency (one curve per run), and for
a sweep the latencies against the arrival rate. Every title says it is a simulation and
of what setup."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aios.hardware.engine import EngineResult
from aios.hardware.sim import SimReport, describe


def write_charts(report: SimReport, folder: str | Path) -> list[Path]:
    """Writes the report's charts into `folder` (made if missing); returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(folder).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    slo = report.config.slo
    runs = _runs(report)
    setup = describe(report.config, [rate for rate, _ in runs if rate is not None] if len(runs) > 1 else None)
    written = []
    cdfs = (("ttft", "time to first token (s)", lambda r: _cdf(r.ttft_s[~np.isnan(r.finish_s)]),
             slo.ttft_s if slo else None, "TTFT SLO"),
            ("tbt", "time between tokens (s)", lambda r: _cdf(r.tbt_s, r.tbt_weight),
             slo.tpot_s if slo else None, "TPOT SLO"),
            ("e2e", "end-to-end latency (s)", lambda r: _cdf(r.e2e_s[~np.isnan(r.finish_s)]), None, ""))
    for name, xlabel, curve, bound, bound_label in cdfs:
        fig, ax = plt.subplots(figsize=(8, 5))
        for rate, result in runs:
            x, y = curve(result)
            if len(x):
                ax.step(x, y, where="post", label="trace" if rate is None else f"{rate:g} req/s")
        if bound is not None:
            ax.axvline(bound, color="black", linestyle="--", linewidth=1, label=f"{bound_label} {bound:g} s")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of tokens" if name == "tbt" else "fraction of finished requests")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title(f"Simulated {name.upper()} CDF\n{setup}", fontsize=9)
        written.append(_save(fig, out / f"{name}_cdf.png"))
    if report.sweep:
        setup = describe(report.config, [p.rate for p in report.sweep])
        written.append(_latency_vs_load(report, out / "latency_vs_load.png", setup))
    return written


def _runs(report: SimReport) -> list[tuple[float | None, EngineResult]]:
    """Each distinct run with its rate (None for a trace), by rate."""
    runs = {report.config.workload.rate: report.result} | {p.rate: p.result for p in report.sweep}
    return sorted(runs.items(), key=lambda run: run[0] or 0.0)


def _cdf(values: np.ndarray, weights: np.ndarray | None = None, num_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """The (weighted) CDF of `values` at no more than `num_points` points, evenly spaced
    in probability."""
    if not len(values):
        return values, values
    order = np.argsort(values)
    cum = np.cumsum(np.ones(len(values)) if weights is None else weights[order])
    cum /= cum[-1]
    at = np.unique(np.searchsorted(cum, np.linspace(0, 1, num_points), side="left").clip(0, len(cum) - 1))
    return values[order][at], cum[at]


def _latency_vs_load(report: SimReport, path: Path, setup: str) -> Path:
    import matplotlib.pyplot as plt

    slo = report.config.slo
    rates = [p.rate for p in report.sweep]
    rows = [report.summary(p.result) for p in report.sweep]
    panels: list[tuple[str, str, float | None]] = [("ttft", "TTFT (s)", slo.ttft_s if slo else None),
                                                   ("tbt", "time between tokens (s)", slo.tpot_s if slo else None)]
    fig, axes = plt.subplots(1, len(panels) + (slo is not None), figsize=(5 * (len(panels) + (slo is not None)), 4.5))
    for ax, (key, ylabel, bound) in zip(axes, panels, strict=False):
        for q, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot(rates, [_nan(r[f"{key}_{q}_s"]) for r in rows], style, label=q)
        if bound is not None:
            ax.axhline(bound, color="black", linestyle="--", linewidth=1, label=f"SLO {bound:g} s")
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
    if slo is not None:
        ax = axes[-1]
        ax.plot(rates, [r["slo_attainment"] for r in rows], "o-", label="attainment")
        ax.axhline(slo.attainment, color="black", linestyle="--", linewidth=1, label=f"target {slo.attainment:.0%}")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("fraction of requests within the SLO")
    for ax in axes:
        if report.capacity is not None and report.capacity.rate:
            ax.axvline(report.capacity.rate, color="grey", linestyle=":", linewidth=1,
                       label=f"capacity {report.capacity.rate:.3g} req/s")
        ax.set_xlabel("arrival rate (requests/s)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"Simulated latency against load\n{setup}", fontsize=9)
    return _save(fig, path)


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
