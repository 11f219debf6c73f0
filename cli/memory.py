"""`aios memory ...`: an agent's memory (yours, the principal's own, or with --pid one of
your agents'): ls, add, get, search (by meaning: embeddings, or BM25 where no model
loads, as the output says), rm, and stats (its working memory: budget, hits, faults)."""
from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Memory: entries, search by meaning, working-memory stats (yours, or an agent's with --pid).",
                  no_args_is_help=True)
Pid = Annotated[int | None, typer.Option("--pid", help="one of your agent processes' memory [default: your own]")]
JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON")]
console = Console()


def _client(pid: int | None):
    from aios.cli.connect import client
    return client(pid)


def _call(pid: int | None, **body) -> dict:
    with _client(pid) as c:
        return c.syscall({"kind": "memory", **body}).raise_for_error().result


@app.command("ls")
def ls(pid: Pid = None, as_json: JsonFlag = False) -> None:
    """Lists the entries, oldest first."""
    entries = _call(pid, op="list")["entries"]
    if as_json:
        print(json.dumps(entries))
        return
    table = Table("key", "content")
    for e in entries:
        table.add_row(e["key"], e["content"])
    console.print(table)


@app.command("add")
def add(content: str, key: Annotated[str | None, typer.Option(help="its key [default: a new one]")] = None,
        pid: Pid = None) -> None:
    """Adds an entry."""
    print(_call(pid, op="add", content=content, key=key)["key"])


@app.command("get")
def get(key: str, pid: Pid = None) -> None:
    """Prints an entry."""
    print(_call(pid, op="get", key=key)["content"])


@app.command("search")
def search(query: str, k: Annotated[int, typer.Option("-k", help="how many")] = 5, pid: Pid = None,
           as_json: JsonFlag = False) -> None:
    """The entries nearest the query's meaning."""
    found = _call(pid, op="search", query=query, k=k)
    if as_json:
        print(json.dumps(found))
        return
    how = (f"by embeddings ({found['model']}, {found['index']})" if found["retrieval"] == "embedding"
           else "by BM25 (words)")
    table = Table("score", "key", "content", title=f"{query!r}: {how}")
    for e in found["entries"]:
        table.add_row(f"{e['score']:.3f}", e["key"], e["content"])
    console.print(table)
    if found.get("note"):
        console.print(f"[yellow]note:[/yellow] {found['note']}")


@app.command("rm")
def rm(key: str, pid: Pid = None) -> None:
    """Deletes an entry."""
    _call(pid, op="delete", key=key)
    print(f"deleted {key}")


@app.command("stats")
def stats(pid: Pid = None, as_json: JsonFlag = False) -> None:
    """The working memory: policy, budget and use in tokens, hits, faults, evictions."""
    s = _call(pid, op="stats")
    if as_json:
        print(json.dumps(s))
        return
    rate = "-" if s["hit_rate"] is None else f"{s['hit_rate']:.3f}"
    print(f"policy {s['policy']}, {s['used_tokens']} of {s['budget_tokens']} tokens, {len(s['resident'])} "
          f"{'entry' if len(s['resident']) == 1 else 'entries'} "
          f"resident; hits {s['hits']}, faults {s['faults']}, evictions {s['evictions']}, hit rate {rate}")
