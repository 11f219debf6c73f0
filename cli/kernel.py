"""`aios kernel start|status|stop`: the daemon's lifecycle. Decodes flags and calls
aios.server.daemon; prints."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from aios.config import Settings, load_settings
from aios.server import daemon

app = typer.Typer(help="Start, inspect and stop the kernel daemon.", no_args_is_help=True)


def settings_from(config: Path | None, overrides: dict[str, object]):
    """--config FILE, else $AIOS_HOME/config.toml when it exists, then AIOS_* and flags."""
    if config is None:
        default = load_settings().home / "config.toml"
        config = default if default.is_file() else None
    return load_settings(config, overrides={k: v for k, v in overrides.items() if v is not None})


@app.command()
def start(
    host: Annotated[str | None, typer.Option(help="address to listen on [default: 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on [default: 8642]")] = None,
    db: Annotated[str | None, typer.Option(help="database URL [default: sqlite:///$AIOS_HOME/aios.db]")] = None,
    config: Annotated[Path | None, typer.Option(help="a TOML settings file [default: $AIOS_HOME/config.toml]")] = None,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="also serve this real model, by its litellm name (openai/gpt-4o-mini, ollama/llama3, "
                        "...); the key comes from the provider's usual variable; repeat for more")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="run in the background")] = False,
) -> None:
    """Starts the kernel and its REST endpoint. With no configuration it serves the
    simulated hardware-model backend, so everything works with no API key; --model (or
    [[backends]] in the config file) adds real models."""
    settings = settings_from(config, {"server.host": host, "server.port": port, "database_url": db})
    if model:
        settings = with_models(settings, model)
    warn_of_credentials(settings)
    warn_of_python_tools(settings)
    host, port = settings.server.host, settings.server.port
    if detach:
        daemon.check_free(settings)   # said here, not in the log of a child that exits at once
        argv = ["kernel", "start", "--host", host, "--port", str(port)]
        argv += ["--db", db] if db else []
        argv += ["--config", str(config)] if config else []
        for name in model or ():
            argv += ["--model", name]
        os.environ.setdefault("AIOS_HOME", str(settings.home))
        info = daemon.start_detached(argv, settings.home)
        typer.echo(f"aios kernel started: {info.url} (pid {info.pid}); logs in {settings.home / 'logs'}")
        return
    daemon.serve(settings, host, port)


def with_models(settings: Settings, models: list[str]) -> Settings:
    """The settings with a litellm backend for `models` first (ConfigError for a name
    litellm routes nowhere); the configured backends stay, the simulated models too."""
    from aios.config import LiteLLMBackendSettings, validate
    from aios.llm.provider import check_model
    for name in models:
        check_model(name)
    backend = LiteLLMBackendSettings(name="cli-models", models=list(dict.fromkeys(models)))
    return validate({**settings.model_dump(), "backends": [backend.model_dump(),
                                                           *(b.model_dump() for b in settings.backends)]})


def warn_of_credentials(settings: Settings) -> None:
    """Says at start what a real backend lacks, without refusing it: a key not set, an
    endpoint that does not answer (all tried at once, a few seconds at most)."""
    from aios.config import LiteLLMBackendSettings
    backends = [b for b in settings.backends if isinstance(b, LiteLLMBackendSettings)]
    if not backends:
        return   # litellm is not even imported: the simulated default starts at once
    from aios.llm.provider import missing_credentials, unreachable
    for b in backends:
        for warning in missing_credentials(b) + unreachable(b):
            typer.echo(f"warning: {warning}", err=True)


def warn_of_python_tools(settings: Settings) -> None:
    """Says at start, one line each, which [tools.python] entries the kernel will leave out
    (they do not import, or no schema describes them); it starts without them."""
    if not settings.tools.python:
        return   # nothing to import: the default starts at once
    from aios.tools.entries import problems
    for problem in problems(settings.tools.python):
        typer.echo(f"warning: {problem}", err=True)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Whether a kernel is running, where, and how busy it is."""
    settings = load_settings()
    info, health = daemon.status(settings.home)
    if as_json:
        typer.echo(json.dumps({"pid": info.pid, "url": info.url, "started": info.started, **health}))
        return
    typer.echo(f"running: {info.url} (pid {info.pid}), {health['status']}, "
               f"{health['num_in_flight']} calls in flight, models: {', '.join(health['models'])}")


@app.command()
def stop(
    cancel: Annotated[bool, typer.Option("--cancel", help="cancel calls in flight instead of finishing them")] = False,
) -> None:
    """Stops the kernel gracefully: calls in flight are drained (or cancelled)."""
    settings = load_settings()
    info = daemon.stop(settings.home, drain=not cancel, token=os.environ.get("AIOS_TOKEN"))
    typer.echo(f"aios kernel (pid {info.pid}) stopped{' (calls cancelled)' if cancel else ''}")
    sys.stdout.flush()


def gc(
    older_than: Annotated[str | None, typer.Option(
        "--older-than", help="remove history that ended this long ago: 7d, 12h, 0 (all that has ended) "
                             "[default: retention_days of the settings]")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="count what would go, remove nothing")] = False,
    config: Annotated[Path | None, typer.Option(help="a TOML settings file [default: $AIOS_HOME/config.toml]")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Applies retention now: the history of ended calls and exited processes (their logs
    too) older than the cutoff goes; the files and memory agents left stay. Through the
    running kernel, or on the database itself when none runs."""
    from aios.access import parse_duration
    from aios.cli.connect import kernel_request
    older_than_s = parse_duration(older_than, "older_than", allow_zero=True) if older_than is not None else None
    settings = settings_from(config, {})
    if daemon.read_info(settings.home) is not None or os.environ.get("AIOS_URL"):
        done = kernel_request("POST", "/v1/kernel/gc", {"older_than_s": older_than_s, "dry_run": dry_run})
    else:
        done = _collect_offline(settings, older_than_s, dry_run)
    if as_json:
        typer.echo(json.dumps(done))
        return
    from aios.clock import utc_text
    verb = "would remove" if dry_run else "removed"
    typer.echo(f"{verb} the history that ended before {utc_text(done['cutoff'])}: {done['num_syscalls']} calls, "
               f"{done['num_processes']} processes, {done['num_logs']} logs ({done['log_bytes']} bytes); "
               f"{done['remaining']['syscalls']} calls and {done['remaining']['processes']} processes remain"
               f"{' (before this removal)' if dry_run else ''}")


def _collect_offline(settings: Settings, older_than_s: float | None, dry_run: bool) -> dict[str, object]:
    """`aios gc` with no kernel running: retention applied to the database directly."""
    import time

    from aios.clock import WallClock
    from aios.storage import Database, retention
    before = retention.cutoff(time.time(), settings.retention_days, older_than_s)
    db = Database(settings.db_url, WallClock())
    db.open()
    try:
        assert db.engine is not None
        return retention.collect(db.engine, settings.home / "logs", before, dry_run=dry_run).to_dict()
    finally:
        db.close()
