"""Who may do what: principals (users and service accounts, in privilege groups, some of
them admins), their API tokens, and the audit log.

- A token is `aios_<id>_<secret>`: 128 random bits of secret, shown once when it is made.
  The database keeps only the SHA-256 of the whole token (a token is random, so a fast
  hash is enough: there is nothing to brute-force), its id (to list and revoke it), its
  label, its expiry and when it was revoked or last used.
- `authenticate(token)` returns the principal or raises Unauthorized saying why (unknown,
  malformed, expired, revoked, or its principal disabled), and the attempt is audited.
- A process token (`aios-pid<pid>-<secret>`) is what a subprocess agent finds in
  AIOS_TOKEN: made by the kernel when it starts the agent, held only in the agent's
  environment and the kernel's memory (never in the database, so it never counts as
  "tokens exist"), honoured only while the kernel runs that process and only as that pid
  (aios.server.http). It dies with the process.
- The audit log is append-only: the database itself refuses to update or delete its rows
  (a trigger on SQLite and PostgreSQL), and `query_audit` filters it.

Every method here is synchronous over a SQLAlchemy Engine (the kernel runs them through
`Database.run`; the CLI calls them directly for local administration)."""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import DDL, Engine, event, insert, select, update
from sqlalchemy.exc import IntegrityError

from aios.errors import ConfigError, Conflict, NotFound, Unauthorized
from aios.storage.models import AuditRow, PrincipalRow, TokenRow
from aios.syscall import is_id_prefix, one_by_prefix

Kind = Literal["user", "service"]
Decision = Literal["allow", "deny", "info"]

NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
TOKEN = re.compile(r"^aios_([a-z0-9]{8})_([A-Za-z0-9_-]{22,64})$")
PROCESS_TOKEN = re.compile(r"aios-pid([1-9][0-9]{0,17})-[A-Za-z0-9_-]{32}")
LOCAL = "local"   # the principal of a loopback server without tokens


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    kind: Kind
    groups: tuple[str, ...]
    admin: bool
    created: float
    disabled: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "groups": list(self.groups), "admin": self.admin,
                "created": self.created, "disabled": self.disabled}


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    principal: str
    label: str
    created: float
    expires: float | None
    revoked: float | None
    last_used: float | None

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def to_dict(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "principal": self.principal, "label": self.label, "created": self.created,
                "expires": self.expires, "revoked": self.revoked, "last_used": self.last_used,
                "state": self.state(now)}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    at: float
    principal: str
    action: str
    target: str
    decision: str
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "at": self.at, "principal": self.principal, "action": self.action,
                "target": self.target, "decision": self.decision, "detail": self.detail}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ---- principals

def create_principal(engine: Engine, name: str, now: float, *, kind: Kind = "user", groups: Sequence[str] = (),
                     admin: bool = False, by: str = LOCAL) -> Principal:
    if not NAME.match(name):
        raise ConfigError(f"bad principal name {name!r}", field="name",
                          hint="lower-case letters, digits, _ . - (64 at most), starting with a letter")
    if kind not in ("user", "service"):
        raise ConfigError(f"unknown principal kind {kind!r}", field="kind", hint="user or service")
    bad = [g for g in groups if not NAME.match(g)]
    if bad:
        raise ConfigError(f"bad group name {bad[0]!r}", field="groups", hint="the same rule as principal names")
    if name == LOCAL:
        raise ConfigError(f"{LOCAL!r} is the principal of a server without tokens; choose another name", field="name")
    principal = Principal(name, kind, tuple(sorted(set(groups))), admin, now)
    try:
        with engine.begin() as conn:
            conn.execute(insert(PrincipalRow).values(name=name, kind=kind, groups=list(principal.groups),
                                                     admin=admin, created=now, disabled=None))
            _audit(conn, now, by, "principal.create", name, "info", {"kind": kind, "groups": list(principal.groups),
                                                                     "admin": admin})
    except IntegrityError:
        raise Conflict(f"principal {name!r} already exists", field="name") from None
    return principal


def get_principal(engine: Engine, name: str) -> Principal:
    with engine.connect() as conn:
        row = conn.execute(select(PrincipalRow).where(PrincipalRow.name == name)).first()
    if row is None:
        raise NotFound(f"no principal {name!r}", field="name", hint="aios user list shows them")
    return _principal(row)


def list_principals(engine: Engine) -> list[Principal]:
    with engine.connect() as conn:
        rows = conn.execute(select(PrincipalRow).order_by(PrincipalRow.name)).all()
    return [_principal(r) for r in rows]


def disable_principal(engine: Engine, name: str, now: float, *, by: str = LOCAL) -> Principal:
    """Disables a principal: its tokens stop working (they are kept, for the audit)."""
    get_principal(engine, name)
    with engine.begin() as conn:
        conn.execute(update(PrincipalRow).where(PrincipalRow.name == name, PrincipalRow.disabled.is_(None))
                     .values(disabled=now))
        _audit(conn, now, by, "principal.disable", name, "info", {})
    return get_principal(engine, name)


def _principal(row: PrincipalRow) -> Principal:
    return Principal(row.name, row.kind, tuple(row.groups or ()), bool(row.admin), row.created,  # type: ignore[arg-type]
                     row.disabled)


# ---- tokens

def create_token(engine: Engine, principal: str, now: float, *, label: str = "", expires_in_s: float | None = None,
                 by: str = LOCAL) -> tuple[TokenInfo, str]:
    """A new token of `principal`: (its info, the token itself, to show once)."""
    p = get_principal(engine, principal)
    if p.disabled is not None:
        raise ConfigError(f"principal {principal!r} is disabled", field="principal")
    if expires_in_s is not None and not expires_in_s > 0:
        raise ConfigError("a token's lifetime must be positive", field="expires", hint="for example 30d, 12h, 3600s")
    if len(label) > 200:
        raise ConfigError("a token's label is at most 200 characters", field="label")
    token_id = secrets.token_hex(4)
    token = f"aios_{token_id}_{secrets.token_urlsafe(24)}"
    expires = now + expires_in_s if expires_in_s is not None else None
    with engine.begin() as conn:
        conn.execute(insert(TokenRow).values(id=token_id, principal=principal, digest=digest(token), label=label,
                                             created=now, expires=expires, revoked=None, last_used=None))
        _audit(conn, now, by, "token.create", token_id, "info", {"principal": principal, "label": label,
                                                                 "expires": expires})
    return TokenInfo(token_id, principal, label, now, expires, None, None), token


def list_tokens(engine: Engine, principal: str | None = None) -> list[TokenInfo]:
    query = select(TokenRow).order_by(TokenRow.created)
    if principal is not None:
        query = query.where(TokenRow.principal == principal)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [TokenInfo(r.id, r.principal, r.label, r.created, r.expires, r.revoked, r.last_used) for r in rows]


def revoke_token(engine: Engine, token_id: str, now: float, *, by: str = LOCAL) -> TokenInfo:
    """Revokes the token `token_id` (its id, or any unique prefix of 4 or more digits)."""
    with engine.begin() as conn:
        row = conn.execute(select(TokenRow).where(TokenRow.id == token_id)).first()
        if row is None and is_id_prefix(token_id):
            ids = conn.execute(select(TokenRow.id).where(TokenRow.id.like(f"{token_id}%"))).scalars()
            token_id = one_by_prefix(token_id, ids, "token") or token_id
            row = conn.execute(select(TokenRow).where(TokenRow.id == token_id)).first()
        if row is None:
            raise NotFound(f"no token {token_id!r}", field="id", hint="aios token list shows their ids")
        if row.revoked is None:
            conn.execute(update(TokenRow).where(TokenRow.id == token_id).values(revoked=now))
        _audit(conn, now, by, "token.revoke", token_id, "info", {"principal": row.principal})
    return next(t for t in list_tokens(engine) if t.id == token_id)


def process_token(pid: int) -> str:
    """A new token for the agent process `pid` (see the module's docstring)."""
    return f"aios-pid{pid}-{secrets.token_urlsafe(24)}"


def has_tokens(engine: Engine, now: float) -> bool:
    """Whether some token would be accepted now: not revoked, not expired, of a principal
    that is not disabled. A database whose every token is revoked has none."""
    query = (select(TokenRow.id).join(PrincipalRow, PrincipalRow.name == TokenRow.principal)
             .where(TokenRow.revoked.is_(None), (TokenRow.expires.is_(None)) | (TokenRow.expires > now),
                    PrincipalRow.disabled.is_(None)).limit(1))
    with engine.connect() as conn:
        return conn.execute(query).first() is not None


def authenticate(engine: Engine, token: str, now: float) -> Principal:
    """The principal a token belongs to; Unauthorized says why not. Audited either way (a
    refusal is written and committed before it is raised)."""
    match = TOKEN.match(token)
    refusal: Unauthorized | None = None
    with engine.begin() as conn:
        row = None
        if match:
            row = conn.execute(select(TokenRow).where(TokenRow.id == match.group(1))).first()
        if row is None or not hmac.compare_digest(row.digest, digest(token)):
            _audit(conn, now, "?", "token.use", match.group(1) if match else "", "deny",
                   {"reason": "unknown" if match else "malformed"})
            refusal = Unauthorized("the bearer token is not valid",
                                   hint="check AIOS_TOKEN (aios token create makes one)")
        else:
            prow = conn.execute(select(PrincipalRow).where(PrincipalRow.name == row.principal)).one()
            reason = ("revoked" if row.revoked is not None else
                      "expired" if row.expires is not None and now >= row.expires else
                      "disabled" if prow.disabled is not None else None)
            if reason is None:
                conn.execute(update(TokenRow).where(TokenRow.id == row.id).values(last_used=now))
                _audit(conn, now, row.principal, "token.use", row.id, "allow", {})
                return _principal(prow)
            _audit(conn, now, row.principal, "token.use", row.id, "deny", {"reason": reason})
            refusal = Unauthorized(f"principal {row.principal!r} is disabled" if reason == "disabled"
                                   else f"the bearer token is {reason}", hint="aios token create makes a new one")
    raise refusal


# ---- the audit log

def audit(engine: Engine, now: float, principal: str, action: str, target: str = "", decision: Decision = "info",
          detail: dict[str, Any] | None = None) -> None:
    with engine.begin() as conn:
        _audit(conn, now, principal, action, target, decision, detail or {})


def _audit(conn, now: float, principal: str, action: str, target: str, decision: str,  # noqa: ANN001
           detail: dict[str, Any]) -> None:
    conn.execute(insert(AuditRow).values(at=now, principal=principal, action=action, target=target[:400],
                                         decision=decision, detail=detail))


def query_audit(engine: Engine, *, principal: str | None = None, action: str | None = None,
                decision: str | None = None, since: float | None = None, until: float | None = None,
                limit: int = 100) -> list[AuditEntry]:
    """The newest entries first that match every filter given (`action` matches a prefix:
    "token" finds token.create, token.use and token.revoke)."""
    if not 1 <= limit <= 100_000:
        raise ConfigError("limit must be between 1 and 100000", field="limit")
    if decision is not None and decision not in ("allow", "deny", "info"):
        raise ConfigError(f"unknown decision {decision!r}", field="decision", hint="allow, deny or info")
    query = select(AuditRow).order_by(AuditRow.seq.desc()).limit(limit)
    if principal is not None:
        query = query.where(AuditRow.principal == principal)
    if action is not None:
        query = query.where((AuditRow.action == action) | AuditRow.action.startswith(action + "."))
    if decision is not None:
        query = query.where(AuditRow.decision == decision)
    if since is not None:
        query = query.where(AuditRow.at >= since)
    if until is not None:
        query = query.where(AuditRow.at < until)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [AuditEntry(r.seq, r.at, r.principal, r.action, r.target, r.decision, r.detail or {}) for r in rows]


# The audit log is append-only in the database itself, whoever connects to it.
_NO_CHANGE = "the audit log is append-only"
event.listen(AuditRow.__table__, "after_create", DDL(
    f"CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, '{_NO_CHANGE}'); END"
).execute_if(dialect="sqlite"))
event.listen(AuditRow.__table__, "after_create", DDL(
    f"CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, '{_NO_CHANGE}'); END"
).execute_if(dialect="sqlite"))
event.listen(AuditRow.__table__, "after_create", DDL(
    "CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS "
    f"$$ BEGIN RAISE EXCEPTION '{_NO_CHANGE}'; END $$; "
    "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
    "FOR EACH ROW EXECUTE FUNCTION audit_log_refuse()"
).execute_if(dialect="postgresql"))


def parse_duration(text: str, field: str = "expires", *, allow_zero: bool = False) -> float:
    """Seconds of `30d`, `12h`, `15m`, `3600s` or `3600`; ConfigError (naming `field`)
    otherwise. Zero only when `allow_zero` (`--older-than 0`: everything that has ended)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise ConfigError(f"--{field.replace('_', '-')} is not a duration: {text!r}", field=field,
                          hint="for example 30d, 12h, 15m or 3600s")
    scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}[m.group(2)]
    seconds = float(m.group(1)) * scale
    if seconds <= 0 and not allow_zero:
        raise ConfigError(f"--{field.replace('_', '-')} must be a positive duration", field=field, hint="for example 30d, 12h, 15m or 3600s")
    return seconds
