"""`aios tools [list|add|remove]`: the tools the kernel offers, and Python tools added to
the running kernel (POST and DELETE /v1/tools), which it keeps across restarts. `aios tools`
alone lists, as `aios tools list` does."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from aios.cli import procs
from aios.cli.connect import kernel_request
from aios.config import ENTRY_FORM, PYTHON_ENTRY
from aios.tools.registry import describe_arguments

app = typer.Typer(help="The tools the kernel offers: list them, add a Python tool, remove one added.")
JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@app.callback(invoke_without_command=True)
def tools(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Lists the tools the kernel offers, with their arguments (--json: full JSON schemas);
    `add` and `remove` change them."""
    if ctx.invoked_subcommand is None:
        procs.tools(as_json)


@app.command("list")
def list_tools(as_json: JsonFlag = False) -> None:
    """Lists the tools the kernel offers, with their arguments (--json: full JSON schemas)."""
    procs.tools(as_json)


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="the name agents call it by")],
    entry: Annotated[str, typer.Argument(help=f"{ENTRY_FORM} (a relative file is taken from here)")],
    description: Annotated[str | None, typer.Option(help="what agents read of it (default: its docstring's "
                                                         "first paragraph)")] = None,
    timeout_s: Annotated[float | None, typer.Option("--timeout-s", help="a call that runs longer fails")] = None,
    irreversible: Annotated[bool | None, typer.Option(
        "--irreversible/--reversible", help="each call an agent makes waits for a principal's confirmation "
                                            "(aios approve) [default: the function's @tool, else reversible]")] = None,
    needs_network: Annotated[bool | None, typer.Option(
        "--needs-network/--no-network", help="it reaches the network (a manifest's `network` must allow it) "
                                             "[default: the function's @tool, else no]")] = None,
    cost_usd: Annotated[float | None, typer.Option("--cost-usd", help="what each call costs, metered")] = None,
    max_concurrency: Annotated[int | None, typer.Option("--max-concurrency", help="calls at once (default: "
                                                                                  "the setting tool_slots)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Adds a Python tool to the running kernel, which imports it with its own Python and
    keeps it across restarts. A function made with @tool keeps its own metadata unless an
    option here says otherwise."""
    body = {"name": name, "entry": _resolved(entry), "description": description, "timeout_s": timeout_s,
            "irreversible": irreversible, "needs_network": needs_network, "cost_usd": cost_usd,
            "max_concurrency": max_concurrency}
    added = kernel_request("POST", "/v1/tools", {k: v for k, v in body.items() if v is not None})
    if as_json:
        typer.echo(json.dumps(added))
        return
    typer.echo(f"added tool {added['name']}({describe_arguments(added['parameters'])})")


@app.command()
def remove(name: Annotated[str, typer.Argument(help="a tool added with aios tools add")]) -> None:
    """Removes a tool added with `aios tools add`, now and for later restarts."""
    removed = kernel_request("DELETE", f"/v1/tools/{quote(name, safe='')}")
    typer.echo(f"removed tool {removed['name']} ({removed['entry']})")


def _resolved(entry: str) -> str:
    """The entry with its file, if it names one, resolved here, where the user named it:
    the kernel's working directory may be elsewhere."""
    found = PYTHON_ENTRY.match(entry)
    if found is None or not found["file"]:
        return entry   # a module, or not an entry: the kernel says what the form is
    return f"{Path(found['file']).expanduser().resolve()}:{found['attr']}"
