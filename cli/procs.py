"""`aios run`, `ps`, `top`, `kill`, `suspend`, `resume`, `logs`, `models`, `tools`: the
docker-like face of the kernel. Each decodes its flags, asks the kernel through the SDK
(or, for streams, its REST endpoint) and prints; `--json` on every listing."""
from __future__ import annotations

import contextlib
import json
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from aios.cli.connect import auth_headers, client, kernel_request, kernel_url
from aios.clock import utc_text
from aios.sdk import ProcessInfo
from aios.sdk._http import TIMEOUT, read_response, unreachable
from aios.tools.registry import describe_arguments

console = Console()
JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def process_name(program: str) -> str:
    """The name a process gets from its program: a file's stem (notes.py: notes), a
    module's last part (aios.agents.examples.chat: chat), a registered name as it is."""
    if program.endswith(".py") or "/" in program:
        return Path(program).stem or program
    return program.rsplit(".", 1)[-1] or program


def program_path(program: str) -> str:
    """A file the user names is resolved here, where they named it; the daemon's own
    working directory may be elsewhere."""
    path = Path(program).expanduser()
    return str(path.resolve()) if path.is_file() else program


def follow_logs(pid: int, follow: bool) -> int:
    """Prints the process's log as it comes; returns how many bytes it had."""
    url = kernel_url()
    size = 0
    try:
        with httpx.stream("GET", f"{url}/v1/processes/{pid}/logs", params={"follow": follow},
                          headers=auth_headers(), timeout=TIMEOUT) as r:
            if r.status_code >= 400:
                read_response(url, r.status_code, r.read())
            for chunk in r.iter_bytes():
                size += len(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
    except httpx.TransportError as e:
        raise unreachable(url, e) from None
    return size


def run(
    program: Annotated[str, typer.Argument(help="a .py file, a module, or a registered agent name")],
    task: Annotated[str, typer.Argument(help="what the agent is asked to do")] = "",
    priority: Annotated[int, typer.Option(help="0 (lowest) to 99")] = 0,
    runner: Annotated[str, typer.Option(help="inproc (a task in the kernel) or subprocess")] = "subprocess",
    name: Annotated[str | None, typer.Option(help="process name [default: the program's]")] = None,
    model: Annotated[str | None, typer.Option(help="the model its LLM calls use (one the kernel serves: aios "
                                                   "models) [default: the first the kernel serves]")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="print the pid and return")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print its output only, not the steps it "
                                                            "reports")] = False,
) -> None:
    """Runs an agent as a kernel process, streams its output (stdout) and the steps it
    reports (stderr: plan lines, thoughts, actions, observations) as they happen, and exits
    with its exit code. A failed run ends with one line saying why."""
    with client() as os:
        proc = os.processes.spawn(name or process_name(program), priority=priority,
                                  program=program_path(program), task=task, runner=runner, model=model)
        if detach:
            typer.echo(proc.pid)
            return
        steps = None if quiet else threading.Thread(target=show_steps, args=(proc.pid,), daemon=True)
        if steps is not None:
            steps.start()
        try:
            follow_logs(proc.pid, follow=True)
        except KeyboardInterrupt:
            os.processes.kill(proc.pid)
            typer.echo(f"\naios: killed process {proc.pid}", err=True)
            raise typer.Exit(130) from None
        if steps is not None:
            steps.join(timeout=5)   # its stream ends as the process does
        ended = os.processes.get(proc.pid)
    code = ended.exit_code if ended.exit_code is not None else 0
    if code != 0:
        typer.echo(f"error: {why_it_failed(ended)}", err=True)
        typer.echo(f"hint: aios logs {proc.pid} --trace shows what it did, and the traceback", err=True)
    raise typer.Exit(code if 0 <= code < 256 else 1)


def why_it_failed(proc: ProcessInfo) -> str:
    """The reason an agent gave for failing, as it gave it; else what happened to it."""
    reason = proc.exit_reason or f"exited with code {proc.exit_code}"
    return reason.removeprefix("failed: ") if reason.startswith("failed: ") else f"process {proc.pid} {reason}"


def show_steps(pid: int) -> None:
    """Prints a running process's steps on stderr, one line each, as they come (the
    answer and the error are left to its output, which says them)."""
    err = Console(stderr=True, highlight=False)
    with contextlib.suppress(Exception), client() as os:   # the steps are a view: never the run's failure
        for step in os.processes.steps(pid, follow=True):
            if step.kind in ("answer", "error"):
                continue
            text = " ".join(step.text.split())
            room = max(20, err.width - 14)
            text = text if len(text) <= room else text[:room - 1] + "…"
            err.print(f"[dim]{step.kind:>11}[/dim]  {escape(text)}", soft_wrap=True)


def _row(p: ProcessInfo) -> list[str]:
    exit_ = "" if p.exit_code is None else str(p.exit_code)
    return [str(p.pid), "" if p.parent_pid is None else str(p.parent_pid), p.name, p.state.value,
            str(p.priority), p.runner or "-", f"{p.usage.tokens_in}/{p.usage.tokens_out}", exit_,
            (p.program or "").replace(str(Path.home()), "~", 1)]


def ps(
    all_: Annotated[bool, typer.Option("--all", "-a", help="exited processes too")] = False,
    tree: Annotated[bool, typer.Option("--tree", help="show who spawned whom")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Lists processes."""
    with client() as os:
        procs = os.processes.list(include_exited=all_)
    if as_json:
        typer.echo(json.dumps([_json(p) for p in procs]))
        return
    if tree:
        console.print(_tree(procs))
        return
    headers = ("PID", "PPID", "NAME", "STATE", "PRI", "RUNNER", "TOKENS in/out", "EXIT", "PROGRAM")
    rows = [_row(p) for p in procs]
    # in a narrow terminal only the program is cut short, and at its start: a path's useful
    # end is the file (…/agents/notes.py), as ps cuts a command line
    fixed = sum(max([len(h)] + [len(r[i]) for r in rows]) + 2 for i, h in enumerate(headers[:-1]))
    room = max(console.width - fixed - 2, 4)
    table = Table(box=None, header_style="bold")
    for header in headers[:-1]:
        table.add_column(header, no_wrap=True)
    table.add_column(headers[-1], no_wrap=True, max_width=room)
    for row in rows:
        table.add_row(*row[:-1], _tail(row[-1], room))
    console.print(table)


def _tail(text: str, width: int) -> str:
    """`text` in `width` characters, cut at its start (…) if it is longer."""
    return text if len(text) <= width else "…" + text[len(text) - width + 1:]


def _json(p: ProcessInfo) -> dict[str, Any]:
    d = asdict(p)
    d["state"] = p.state.value
    return d


def _tree(procs: list[ProcessInfo]) -> Tree:
    root = Tree("[bold]processes")
    nodes: dict[int, Tree] = {}
    pids = {p.pid for p in procs}
    for p in sorted(procs, key=lambda p: p.pid):
        parent = nodes.get(p.parent_pid) if p.parent_pid in pids else root
        nodes[p.pid] = (parent or root).add(f"{p.pid} {p.name} [dim]{p.state.value}[/]")
    return root


def _signal(pid: int, verb: str) -> None:
    with client() as os:
        proc = getattr(os.processes, verb)(pid)
    typer.echo(f"{proc.pid} {proc.state.value}")


def kill(pid: Annotated[int, typer.Argument()]) -> None:
    """Stops a process: its program and its calls in flight."""
    _signal(pid, "kill")


def suspend(pid: Annotated[int, typer.Argument()]) -> None:
    """Stops scheduling a process's calls (and stops its OS process)."""
    _signal(pid, "suspend")


def resume(pid: Annotated[int, typer.Argument()]) -> None:
    """Resumes a suspended process."""
    _signal(pid, "resume")


def logs(pid: Annotated[int, typer.Argument()],
         follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until it exits")] = False,
         trace: Annotated[bool, typer.Option("--trace", help="then the steps it reported, with their times, "
                                                          "and the traceback it failed with")] = False,
         ) -> None:
    """Prints a process's output (and, with --trace, what it did)."""
    printed = follow_logs(pid, follow)
    if trace:
        print_trace(pid)
        return
    with client() as os:
        proc = os.processes.get(pid)
    if proc.exit_code:
        typer.echo(f"aios: {why_it_failed(proc)} (exit code {proc.exit_code}); aios logs {pid} --trace shows "
                   "what it did", err=True)
    elif not printed:
        typer.echo(f"process {pid} has no log: it printed nothing, or its log was older than the retention "
                   "(retention_days; aios gc) and was removed", err=True)


def print_trace(pid: int) -> None:
    """The steps a process reported, each with its time, in full; the traceback of an error."""
    with client() as os:
        steps = list(os.processes.steps(pid))
        proc = os.processes.get(pid)
    console.rule(f"trace of process {pid}: {len(steps)} steps", style="dim")
    for step in steps:
        console.print(f"[dim]{utc_text(step.at, ms=True)}[/dim] [bold]{step.kind}[/bold]  {escape(step.text)}",
                      soft_wrap=True, highlight=False)
        if step.data.get("traceback"):
            console.print(escape(step.data["traceback"].rstrip()), highlight=False, soft_wrap=True)
    if proc.exited is not None:
        console.print(f"[dim]{utc_text(proc.exited, ms=True)}[/dim] [bold]exit[/bold]  {proc.exit_code}: "
                      f"{escape(proc.exit_reason or '')}", highlight=False, soft_wrap=True)


def models(as_json: JsonFlag = False) -> None:
    """Lists the models the kernel serves."""
    with client() as os:
        names = os.models()
    typer.echo(json.dumps(names) if as_json else "\n".join(names))


def tools(as_json: JsonFlag = False) -> None:
    """Lists the tools the kernel offers, with their arguments (--json: full JSON schemas)."""
    with client() as os:
        found = os.tools.list()
    if as_json:
        typer.echo(json.dumps([asdict(t) for t in found]))
        return
    table = Table("TOOL", "ARGUMENTS", "DESCRIPTION", "FLAGS", "SLOTS", "TIMEOUT (s)", box=None,
                  header_style="bold")
    for t in found:
        flags = [f for f, on in (("irreversible", t.irreversible), ("network", t.needs_network)) if on]
        if t.cost_usd:
            flags.append(f"${t.cost_usd:g}/call")
        if t.source != "python":
            flags.append(t.source)
        table.add_row(t.name, describe_arguments(t.parameters), _first_sentence(t.description), " ".join(flags), str(t.max_concurrency),
                      "-" if t.timeout_s is None else f"{t.timeout_s:g}")
    console.print(table if found else "no tools registered")



def _first_sentence(text: str) -> str:
    """The table shows a tool's first sentence; --json has the whole description."""
    head, dot, _ = text.partition(". ")
    return head + dot.strip() if dot else text


def top(
    interval_s: Annotated[float, typer.Option("--interval", help="seconds between refreshes")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="print one frame and exit")] = False,
    as_json: JsonFlag = False,
) -> None:
    """A live view of the kernel: processes, queues, slots, tokens per second."""
    def snapshot() -> dict[str, Any]:
        return kernel_request("GET", "/v1/kernel/stats", timeout=5.0)

    if as_json:
        typer.echo(json.dumps(snapshot()))
        return
    last = snapshot()
    last_t = time.monotonic()
    if once:
        console.print(_frame(last, 0.0))
        return
    with _keys() as pressed, Live(_frame(last, 0.0), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while "q" not in pressed(interval_s):   # q (or Ctrl-C) leaves, as in top
                now, now_t = snapshot(), time.monotonic()
                rate = (now["tokens_out"] - last["tokens_out"]) / max(1e-9, now_t - last_t)
                live.update(_frame(now, rate))
                last, last_t = now, now_t
        except KeyboardInterrupt:
            pass


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """A function that waits up to its timeout for keys pressed and returns them (lower
    case): the terminal in cbreak mode (keys come without Enter, Ctrl-C still works), put
    back as it was on the way out. Where stdin is no terminal it only waits."""
    if not sys.stdin.isatty():
        yield lambda timeout: time.sleep(timeout) or ""
        return
    import termios
    import tty
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def pressed(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 64).decode(errors="replace").lower() if ready else ""
    try:
        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _frame(stats: dict[str, Any], tokens_per_s: float) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_row(f"[bold]aios[/]  policy {stats['policy']}  in flight {stats['num_in_flight']}  "
                 f"tokens {stats['tokens_in']} in / {stats['tokens_out']} out  {tokens_per_s:.1f} tok/s  "
                 "[dim](q quits)[/]")
    res = Table("RESOURCE", "POLICY", "SLOTS BUSY", "QUEUED", "HELD", box=None, header_style="bold")
    for r in stats["resources"]:
        res.add_row(r["name"], r["policy"], f"{r['num_running']}/{r['num_slots']}", str(r["num_queued"]),
                    str(r["num_held"]))
    procs = Table("PID", "NAME", "STATE", "PRI", "RUNNER", "TOKENS in/out", box=None, header_style="bold")
    for p in stats["processes"]:
        procs.add_row(str(p["pid"]), p["name"], p["state"], str(p["priority"]), p["runner"] or "-",
                      f"{p['usage']['tokens_in']}/{p['usage']['tokens_out']}")
    grid.add_row(res)
    grid.add_row(procs)
    return grid


def history(
    pid: Annotated[int | None, typer.Option(help="of this process (0: your own account's calls)")] = None,
    state: Annotated[str | None, typer.Option(help="in this state: queued, running, done, failed, cancelled, ...")]
    = None,
    since: Annotated[str | None, typer.Option(help="made in the last 10m, 2h, 1d, ...")] = None,
    limit: Annotated[int, typer.Option(help="calls per page")] = 50,
    before: Annotated[str | None, typer.Option(help="the page older than this call (what the last page ends "
                                                    "with)")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The syscalls you made, newest first, those of exited processes and of earlier runs of
    the daemon too (the journal keeps them)."""
    from aios.access import parse_duration
    from aios.syscall import shortest_prefixes
    params: dict[str, Any] = {"limit": limit}
    for key, value in (("pid", pid), ("state", state), ("before", before)):
        if value is not None:
            params[key] = value
    if since is not None:
        params["since"] = time.time() - parse_duration(since, "since")
    page = kernel_request("GET", "/v1/syscalls", params=params)
    if as_json:
        typer.echo(json.dumps(page))
        return
    short = shortest_prefixes(c["id"] for c in page["data"])
    table = Table("ID", "PID", "KIND", "STATE", "MADE (UTC)", "TOOK", "WHAT", box=None, header_style="bold")
    for c in page["data"]:
        took = f"{c['finished'] - c['created']:.2f}s" if c.get("finished") is not None else ""
        table.add_row(short[c["id"]], str(c["pid"]), c["kind"], c["state"],
                      utc_text(c["created"]), took, describe_call(c))
    console.print(table if page["data"] else "no syscalls")
    if page["next"]:
        console.print(f"older: aios history --before {page['next']}" + "".join(
            f" --{k} {v}" for k, v in (("pid", pid), ("state", state), ("limit", limit if limit != 50 else None))
            if v is not None))


def describe_call(call: dict[str, Any]) -> str:
    """A call's payload in a few words: the model, the tool, the op and its path or key."""
    p = call.get("payload") or {}
    words = [p.get("model") or p.get("tool") or p.get("op") or "", p.get("path") or p.get("key") or ""]
    if p.get("target_pid") is not None:
        words.append(str(p["target_pid"]))
    return " ".join(w for w in words if w)


def install(app: typer.Typer) -> None:
    for command in (run, ps, top, kill, suspend, resume, logs, models, history):   # tools: aios.cli.tools
        app.command()(command)
