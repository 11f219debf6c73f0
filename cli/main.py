"""The `aios` command. Decodes arguments, calls the kernel or a benchmark, prints; holds
no policy.

Errors print one `error:` line and one `hint:` line and exit non-zero: 2 for an
AiosError (the input, the state, a resource), 1 for anything else (a bug: the hint says
how to see its traceback), 130 for Ctrl-C. A traceback is shown only with `--debug` or
AIOS_DEBUG=1."""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import logging
import os
import sys
import traceback
from typing import Annotated

import typer

from aios.cli import access as access_cli
from aios.cli import fs as fs_cli
from aios.cli import memory as memory_cli
from aios.cli import kernel as kernel_cli
from aios.cli import mcp as mcp_cli
from aios.cli import procs
from aios.cli import sandbox as sandbox_cli
from aios.cli import sim as sim_cli
from aios.cli import trace as trace_cli
from aios.cli import tools as tools_cli
from aios.errors import AiosError, ConfigError

app = typer.Typer(name="aios", help="aios: an operating system for LLM agents.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})   # subcommands inherit it
bench_app = typer.Typer(help="Benchmarks; each prints one JSON object on stdout.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(kernel_cli.app, name="kernel")
app.add_typer(mcp_cli.app, name="mcp")
app.add_typer(trace_cli.app, name="trace")
app.add_typer(sim_cli.app, name="sim")
app.add_typer(sandbox_cli.app, name="sandbox")
app.add_typer(fs_cli.app, name="fs")
app.add_typer(memory_cli.app, name="memory")
app.add_typer(tools_cli.app, name="tools")
procs.install(app)
app.command("gc")(kernel_cli.gc)
access_cli.install(app)

DEBUG = "AIOS_DEBUG"   # set to 1: errors print their traceback too


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aios {importlib.metadata.version('aios')}")
        raise typer.Exit()


@app.callback()
def options(
    debug: Annotated[bool, typer.Option("--debug", help="on an error, print the traceback too (or AIOS_DEBUG=1)")]
    = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """aios: an operating system for LLM agents."""
    if debug:
        os.environ[DEBUG] = "1"   # also for the agents and daemons this command starts


@app.command()
def shell() -> None:
    """An interactive shell: built-in commands and plain-language tasks for the default agent."""
    from aios.cli.shell import run_shell   # readline is only for the interactive face
    run_shell()


BENCHES = {
    "kernel": "Kernel overhead, scheduling speedup, fairness, priority latency, context switch cost.",
    "server": "The daemon over HTTP: throughput, HTTP overhead, spawn latency, start time, memory.",
    "compiler": "LLMCompiler vs ReAct vs parallel function calling: latency, tokens, critical path (--plot: Gantt).",
    "hardware": "The serving papers' comparisons on the simulator, and its speed (--plot: published vs simulated).",
    "memory": "Paging policies against Belady's optimum, the predictor's error, memory search recall, versioned "
              "storage writes (--plot: the three).",
}


def _bench_command(name: str, help_text: str) -> None:
    """Registers `aios bench NAME`, which runs aios.benchmarks.bench_NAME.run and prints its
    JSON. --plot and --model go to the benchmarks whose run takes them."""
    @bench_app.command(name, help=help_text)
    def command(
        as_json: Annotated[bool, typer.Option("--json", help="print only the JSON object on stdout")] = False,
        quick: Annotated[bool, typer.Option("--quick", help="smaller workloads, for a smoke test")] = False,
        seed: Annotated[int, typer.Option(help="random seed of the workloads")] = 7,
        plot: Annotated[str | None, typer.Option(help="write the benchmark's chart to this file (.png, .svg, .pdf)")] = None,
        model: Annotated[str | None, typer.Option(help="a real model (litellm name) instead of the simulated one")] = None,
    ) -> None:
        run = importlib.import_module(f"aios.benchmarks.bench_{name}").run   # loaded only when asked for
        extra = {k: v for k, v in (("plot", plot), ("model", model)) if v is not None}
        accepted = inspect.signature(run).parameters
        for option in extra:
            if option not in accepted:
                raise ConfigError(f"aios bench {name} has no --{option}", field=option,
                                  hint=f"see aios bench {name} --help")
        result = run(quick=quick, seed=seed, show_progress=not as_json or sys.stderr.isatty(), **extra)
        print(json.dumps(result, indent=None if as_json else 2))


for _name, _help in BENCHES.items():
    _bench_command(_name, _help)


@app.command()
def demo(
    speed: Annotated[float, typer.Option(help="simulated seconds per wall second")] = 20.0,
    quick: Annotated[bool, typer.Option("--quick", help="a smaller workload")] = False,
) -> None:
    """Boots a kernel on SQLite with the hardware-model backend and runs a mixed agent
    workload under each scheduling policy, then compares them."""
    from aios.benchmarks.demo import run
    run(speed=speed, quick=quick)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:   # noqa: BLE001 (the command's last word: one line, not a traceback)
        sys.exit(report(e))


def report(e: BaseException) -> int:
    """Prints what went wrong as `error:` and `hint:` (and the traceback under --debug or
    AIOS_DEBUG=1); returns the exit code."""
    if os.environ.get(DEBUG, "") not in ("", "0"):
        traceback.print_exception(e, file=sys.stderr)
    error = the_error(e)
    if isinstance(error, AiosError):
        typer.echo(f"error: {error.message}", err=True)
        if error.hint:
            typer.echo(f"hint: {error.hint}", err=True)
        return 2
    typer.echo(f"error: {type(error).__name__}: {error}", err=True)
    typer.echo("hint: this is a bug in aios; run the command again with --debug (or AIOS_DEBUG=1) for the "
               "traceback, and report it", err=True)
    return 1


def the_error(e: BaseException) -> BaseException:
    """The error that says what went wrong: an AiosError inside a group of errors (anyio's
    task groups raise ExceptionGroup), else the first leaf of the group, else `e`."""
    if isinstance(e, BaseExceptionGroup):
        leaves = [the_error(x) for x in e.exceptions]
        return next((x for x in leaves if isinstance(x, AiosError)), leaves[0] if leaves else e)
    return e


if __name__ == "__main__":   # `python -m aios.cli.main`: how the detached daemon is started
    main()
