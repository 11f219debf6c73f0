"""`aios sandbox run -- CMD ...`: a command in the sandbox (aios.sandbox), its output
printed as it was, its exit code passed on; a limit that stopped it says so on stderr and
exits 124 (timeout) or 125 (another limit); a sandbox that cannot run here exits 69."""
from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

app = typer.Typer(help="Run untrusted commands isolated: bubblewrap namespaces, rlimits, a timeout.",
                  no_args_is_help=True)


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="wall-clock seconds before it is stopped")] = 30.0,
    memory: Annotated[int, typer.Option(help="address space, MiB")] = 512,
    cpu: Annotated[int | None, typer.Option(help="CPU seconds (default: the timeout)")] = None,
    processes: Annotated[int, typer.Option(help="processes it may have at once")] = 64,
    disk: Annotated[int, typer.Option(help="MiB it may write to its work directory")] = 256,
    file_size: Annotated[int, typer.Option("--file-size", help="the largest file it may write, MiB")] = 64,
    network: Annotated[str, typer.Option(help="none (its own empty network) or host")] = "none",
    mode: Annotated[str, typer.Option(help="bwrap, or rlimits: weaker (no namespaces), only when asked for")] = "bwrap",
    as_json: Annotated[bool, typer.Option("--json", help="print the result as one JSON object")] = False,
) -> None:
    """Runs the command after `--` in the sandbox: `aios sandbox run --timeout 5 -- python3 -c 'print(1)'`."""
    from aios.errors import ConfigError
    from aios.sandbox import EXIT_UNAVAILABLE, Limits, SandboxUnavailable
    from aios.sandbox import run as sandbox_run

    argv = list(ctx.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError("no command to run", field="command", hint="aios sandbox run [options] -- CMD [ARGS...]")
    limits = Limits(timeout_s=timeout, memory_mb=memory, cpu_s=cpu, processes=processes, disk_mb=disk,
                    file_size_mb=file_size)
    try:
        result = sandbox_run(argv, limits=limits, network=network, mode=mode)   # type: ignore[arg-type]
    except SandboxUnavailable as e:
        typer.echo(f"error: {e.message}", err=True)
        if e.hint:
            typer.echo(f"hint: {e.hint}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    if as_json:
        print(json.dumps({"argv": result.argv, "exit_code": result.exit_code, "stopped_by": result.stopped_by,
                          "message": result.message, "stdout": result.stdout, "stderr": result.stderr,
                          "duration_s": round(result.duration_s, 3), "files": result.files, "mode": result.mode,
                          "network": result.network, "truncated": result.truncated}))
    else:
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if result.truncated:
            typer.echo("sandbox: output cut at the output limit", err=True)
        if result.message:
            typer.echo(f"sandbox: {result.message}", err=True)
    raise typer.Exit(result.cli_exit_code)
