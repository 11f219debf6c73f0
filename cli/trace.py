"""`aios trace export`: the kernel journal's LLM calls as a simulator trace."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aios.cli.kernel import settings_from

app = typer.Typer(help="Traces of the kernel's LLM traffic, for the hardware simulator.", no_args_is_help=True)


@app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="where to write: .csv, else JSON lines")] = Path("trace.jsonl"),
    config: Annotated[Path | None, typer.Option(help="the kernel's config file (default $AIOS_HOME/config.toml)")] = None,
    db: Annotated[str | None, typer.Option(help="the database URL (default: the kernel's)")] = None,
    include_unfinished: Annotated[bool, typer.Option("--all", help="also calls that did not finish")] = False,
) -> None:
    """Writes every LLM syscall in the journal as a request (arrival, prompt and output
    tokens, process as session, priority)."""
    from aios.storage.trace import export_journal
    from aios.hardware.workload import save_trace
    settings = settings_from(config, {"database_url": db})
    workload = export_journal(settings.db_url, include_unfinished=include_unfinished)
    save_trace(workload, out)
    typer.echo(f"wrote {len(workload)} requests over {workload.duration_s:.1f} s to {out}")
