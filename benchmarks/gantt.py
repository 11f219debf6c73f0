"""A Gantt chart of agent runs: one panel per agent, one row per LLM or tool call, time
from the start of each run (matplotlib, written to a file)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

LABELS = {"compiler": "LLMCompiler", "react": "ReAct", "parallel_fc": "parallel function calling"}
COLORS = {"llm": "#4c72b0", "tool": "#dd8452"}


def gantt(runs: list[Any], path: str) -> str:
    """Draws `runs` (each with .agent, .start, .latency_s and .outcome.trace.spans) to
    `path`; returns the path written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path).expanduser()
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        from aios.errors import ConfigError
        raise ConfigError(f"cannot write a chart to {path}: use a .png, .svg or .pdf name", field="plot")
    out.parent.mkdir(parents=True, exist_ok=True)
    span_max = max(r.latency_s for r in runs)
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 2.2 + 0.28 * sum(len(r.outcome.trace.spans) for r in runs)),
                             sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [max(2, len(r.outcome.trace.spans)) for r in runs]})
    for ax, r in zip(axes[:, 0], runs, strict=True):
        spans = r.outcome.trace.spans
        for row, s in enumerate(spans):
            end = s.end if s.end is not None else s.start
            ax.barh(row, end - s.start, left=s.start - r.start, color=COLORS[s.kind],
                    edgecolor="black" if s.error else "none", hatch="//" if s.error else None)
            if s.released is not None:
                ax.plot([s.released - r.start], [row], marker="|", color="black", markersize=10)
        ax.set_yticks(range(len(spans)))
        ax.set_yticklabels([f"{s.name}" + (f" #{s.idx}" if s.idx is not None else "") for s in spans], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{LABELS.get(r.agent, r.agent)}: {r.latency_s:.2f} s", fontsize=9, loc="left")
        ax.set_xlim(0, span_max * 1.02)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds from the question (simulated time; | marks when a plan line was read)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLORS.values()]
    fig.legend(handles, ["LLM call", "tool call"], loc="upper right", fontsize=8)
    fig.suptitle(runs[0].question.text[:110], fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return str(out.resolve())
