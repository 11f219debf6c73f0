"""`aios user ...`, `aios token ...`, `aios audit`: local administration of principals, API
tokens and the audit log, on the database the settings name (aios.access). A token is
printed once, when it is made."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Table

from aios.cli.connect import kernel_request
from aios.cli.procs import describe_call
from aios.clock import utc_text

user_app = typer.Typer(help="Principals: users and service accounts, their groups, admins.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens: create (shown once), list, revoke.", no_args_is_help=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
console = Console()


@contextmanager
def engine() -> Iterator[Any]:
    from aios.clock import WallClock
    from aios.config import load_settings
    from aios.storage.db import Database
    db = Database(load_settings().db_url, WallClock())
    db.open()
    try:
        yield db.engine
    finally:
        db.close()


def _when(t: float | None) -> str:
    return "" if t is None else utc_text(t)


@user_app.command("add")
def user_add(
    name: Annotated[str, typer.Argument(help="lower-case name")],
    service: Annotated[bool, typer.Option("--service", help="a service account, not a person")] = False,
    group: Annotated[list[str] | None, typer.Option("--group", "-g", help="a privilege group (repeat for more)")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="may administer every principal and token")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Adds a user (or, with --service, a service account)."""
    from aios import access
    with engine() as e:
        p = access.create_principal(e, name, time.time(), kind="service" if service else "user",
                                    groups=group or [], admin=admin)
    print(json.dumps(p.to_dict()) if as_json else f"added {p.kind} {p.name}")


@user_app.command("list")
def user_list(as_json: JsonFlag = False) -> None:
    """Lists the principals."""
    from aios import access
    with engine() as e:
        people = access.list_principals(e)
    if as_json:
        print(json.dumps([p.to_dict() for p in people]))
        return
    table = Table("name", "kind", "groups", "admin", "created", "disabled")
    for p in people:
        table.add_row(p.name, p.kind, ",".join(p.groups), "yes" if p.admin else "", _when(p.created), _when(p.disabled))
    console.print(table)


@user_app.command("disable")
def user_disable(name: Annotated[str, typer.Argument(help="the principal")]) -> None:
    """Disables a principal: its tokens stop working at once."""
    from aios import access
    with engine() as e:
        access.disable_principal(e, name, time.time())
    print(f"disabled {name}")


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", "-u", help="the principal the token acts as")],
    label: Annotated[str, typer.Option(help="what the token is for")] = "",
    expires: Annotated[str | None, typer.Option(help="lifetime: 30d, 12h, 15m, 3600s [default: none]")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Makes a token and prints it once: keep it, it cannot be shown again."""
    from aios import access
    lifetime = access.parse_duration(expires) if expires is not None else None
    with engine() as e:
        info, token = access.create_token(e, user, time.time(), label=label, expires_in_s=lifetime)
    if as_json:
        print(json.dumps(info.to_dict(time.time()) | {"token": token}))
        return
    print(token)
    typer.echo(f"token {info.id} for {user}" + (f", expires {_when(info.expires)} UTC" if info.expires else "")
               + ": shown once, keep it", err=True)


@token_app.command("list")
def token_list(user: Annotated[str | None, typer.Option("--user", "-u", help="only this principal's")] = None,
               as_json: JsonFlag = False) -> None:
    """Lists tokens (ids and states; never the tokens themselves)."""
    from aios import access
    now = time.time()
    with engine() as e:
        tokens = access.list_tokens(e, user)
    if as_json:
        print(json.dumps([t.to_dict(now) for t in tokens]))
        return
    table = Table("id", "principal", "label", "state", "created", "expires", "last used")
    for t in tokens:
        table.add_row(t.id, t.principal, t.label, t.state(now), _when(t.created), _when(t.expires), _when(t.last_used))
    console.print(table)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="the token's id, or a unique prefix of it "
                                                                "(aios token list)")]) -> None:
    """Revokes a token: it stops working at once."""
    from aios import access
    with engine() as e:
        revoked = access.revoke_token(e, token_id, time.time())
    print(f"revoked {revoked.id}")


def audit(
    principal: Annotated[str | None, typer.Option(help="only this principal's entries")] = None,
    action: Annotated[str | None, typer.Option(help="an action or its prefix: token, token.use, ...")] = None,
    decision: Annotated[str | None, typer.Option(help="allow, deny or info")] = None,
    since: Annotated[str | None, typer.Option(help="only the last ... (30m, 2h, 7d)")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """The audit log: permission decisions, confirmations, token uses, admin actions."""
    from aios import access
    start = time.time() - access.parse_duration(since, "since") if since is not None else None
    with engine() as e:
        entries = access.query_audit(e, principal=principal, action=action, decision=decision, since=start,
                                     limit=limit)
    if as_json:
        print(json.dumps([x.to_dict() for x in entries]))
        return
    table = Table("seq", "when (UTC)", "principal", "action", "target", "decision", "detail")
    for x in entries:
        table.add_row(str(x.seq), _when(x.at), x.principal, x.action, x.target, x.decision,
                      json.dumps(x.detail) if x.detail else "")
    console.print(table)




# ---- confirmation of irreversible actions, through the running kernel

def confirmations(as_json: JsonFlag = False) -> None:
    """Irreversible actions of agents waiting for your yes or no."""
    held = kernel_request("GET", "/v1/confirmations")
    if as_json:
        print(json.dumps(held))
        return
    from aios.syscall import shortest_prefixes
    short = shortest_prefixes(c["id"] for c in held)   # what `aios approve` takes back, and fits a terminal
    table = Table("id", "pid", "principal", "kind", "what", "since (UTC)")
    for c in held:
        p = c.get("payload") or {}
        args = p.get("arguments")
        table.add_row(short[c["id"]], str(c["pid"]), c["principal"], c["kind"],
                      describe_call(c) + (f" {json.dumps(args)}" if args else ""), _when(c.get("created")))
    console.print(table if held else "nothing is waiting for a confirmation")


HELD_ID = "the held call's id, or a unique prefix of it (aios confirmations)"


def approve(call_id: Annotated[str, typer.Argument(help=HELD_ID)]) -> None:
    """Approves a held irreversible action: it runs."""
    call = kernel_request("POST", f"/v1/confirmations/{quote(call_id, safe='')}", {"approve": True})
    print(f"approved {call['id']}")


def deny(call_id: Annotated[str, typer.Argument(help=HELD_ID)]) -> None:
    """Denies a held irreversible action: it fails as denied."""
    call = kernel_request("POST", f"/v1/confirmations/{quote(call_id, safe='')}", {"approve": False})
    print(f"denied {call['id']}")


def install(app: typer.Typer) -> None:
    app.add_typer(user_app, name="user")
    app.add_typer(token_app, name="token")
    app.command("audit")(audit)
    app.command("confirmations")(confirmations)
    app.command("approve")(approve)
    app.command("deny")(deny)

