"""Principals, API tokens and the audit log (aios.access): tokens are kept hashed, shown
once, expire and are revoked at once; a forged, expired or revoked token and a disabled
principal are refused and audited; the audit log is append-only in the database; the
server asks for a token once any exists; the CLI administers all of it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.exc import DBAPIError

from aios import access
from aios.config import Settings
from aios.errors import ConfigError, Conflict, NotFound, Unauthorized
from aios.kernel import Kernel
from aios.server import create_app
from aios.storage.models import Base, TokenRow
from tests.conftest import serve

AIOS = Path(sys.executable).with_name("aios")


@pytest.fixture
def engine():
    e = create_engine("sqlite://")
    Base.metadata.create_all(e)
    yield e
    e.dispose()


def test_principals_are_made_listed_and_disabled(engine):
    alice = access.create_principal(engine, "alice", 1.0, groups=["dev", "dev", "ops"])
    access.create_principal(engine, "ci-bot", 2.0, kind="service", admin=True)
    assert alice.groups == ("dev", "ops") and not alice.admin and alice.kind == "user"
    assert [p.name for p in access.list_principals(engine)] == ["alice", "ci-bot"]
    assert access.get_principal(engine, "ci-bot").admin
    assert access.disable_principal(engine, "alice", 3.0).disabled == 3.0
    with pytest.raises(Conflict, match="already exists"):
        access.create_principal(engine, "alice", 4.0)
    with pytest.raises(NotFound, match="no principal"):
        access.get_principal(engine, "mallory")
    for bad, field in (("Alice", "name"), ("a b", "name"), ("", "name"), (access.LOCAL, "name")):
        with pytest.raises(ConfigError) as err:
            access.create_principal(engine, bad, 5.0)
        assert err.value.field == field
    with pytest.raises(ConfigError, match="group"):
        access.create_principal(engine, "bob", 5.0, groups=["Bad Group"])
    with pytest.raises(ConfigError, match="kind"):
        access.create_principal(engine, "bob", 5.0, kind="robot")   # type: ignore[arg-type]


def test_a_token_is_shown_once_and_only_its_hash_is_kept(engine):
    access.create_principal(engine, "alice", 1.0)
    info, token = access.create_token(engine, "alice", 2.0, label="laptop")
    assert token.startswith(f"aios_{info.id}_") and len(token) > 40
    with engine.connect() as conn:
        rows = conn.execute(select(TokenRow)).all()
    assert len(rows) == 1 and rows[0].digest == access.digest(token) and token not in repr(tuple(rows[0]))
    assert access.authenticate(engine, token, 3.0).name == "alice"
    listed = access.list_tokens(engine, "alice")
    assert [t.id for t in listed] == [info.id] and listed[0].last_used == 3.0
    assert "token" not in listed[0].to_dict(3.0)


def test_forged_expired_revoked_and_disabled_tokens_are_refused_and_audited(engine):
    access.create_principal(engine, "alice", 1.0)
    access.create_principal(engine, "bob", 1.0)
    info, token = access.create_token(engine, "alice", 2.0, expires_in_s=100)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")   # the right id, a guessed secret
    cases = [(forged, 3.0, "not valid"), ("aios_zzzzzzzz_" + "x" * 32, 3.0, "not valid"), ("Bearer nonsense", 3.0,
             "not valid"), (token, 102.0, "expired")]
    for bad, now, words in cases:
        with pytest.raises(Unauthorized, match=words):
            access.authenticate(engine, bad, now)
    b_info, b_token = access.create_token(engine, "bob", 2.0)
    access.revoke_token(engine, b_info.id, 4.0)
    with pytest.raises(Unauthorized, match="revoked"):
        access.authenticate(engine, b_token, 5.0)
    _, c_token = access.create_token(engine, "alice", 6.0)
    access.disable_principal(engine, "alice", 7.0)
    with pytest.raises(Unauthorized, match="disabled"):
        access.authenticate(engine, c_token, 8.0)
    with pytest.raises(ConfigError, match="disabled"):
        access.create_token(engine, "alice", 9.0)
    denials = access.query_audit(engine, action="token.use", decision="deny")
    reasons = sorted(d.detail["reason"] for d in denials)
    assert reasons == ["disabled", "expired", "malformed", "revoked", "unknown", "unknown"]
    with pytest.raises(NotFound):
        access.revoke_token(engine, "nope", 10.0)
    with pytest.raises(ConfigError, match="positive"):
        access.create_token(engine, "bob", 10.0, expires_in_s=0)


def test_the_audit_log_is_append_only_and_filters(engine):
    access.create_principal(engine, "alice", 1.0)
    _, token = access.create_token(engine, "alice", 2.0)
    access.authenticate(engine, token, 3.0)
    access.audit(engine, 4.0, "alice", "tool.call", "python", "deny", {"missing": "tools:python"})
    for statement in ("UPDATE audit_log SET decision = 'allow'", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    everything = access.query_audit(engine)
    assert [x.action for x in everything] == ["tool.call", "token.use", "token.create", "principal.create"]
    assert [x.action for x in access.query_audit(engine, action="token")] == ["token.use", "token.create"]
    assert [x.action for x in access.query_audit(engine, principal="alice")] == ["tool.call", "token.use"]
    assert [x.seq for x in access.query_audit(engine, since=2.0, until=4.0)] == [3, 2]
    assert len(access.query_audit(engine, limit=1)) == 1
    assert access.query_audit(engine, decision="deny")[0].detail == {"missing": "tools:python"}
    with pytest.raises(ConfigError):
        access.query_audit(engine, limit=0)
    with pytest.raises(ConfigError):
        access.query_audit(engine, decision="maybe")


def test_durations():
    assert access.parse_duration("30d") == 30 * 86400 and access.parse_duration("90") == 90
    assert access.parse_duration("1.5h") == 5400 and access.parse_duration("2w") == 14 * 86400
    for bad in ("soon", "", "-1h", "0s", "3 days"):
        with pytest.raises(ConfigError):
            access.parse_duration(bad)


# ---- the server

@pytest.mark.anyio
async def test_the_server_asks_for_a_token_once_one_exists(make_settings: Callable[..., Settings]):
    settings = make_settings(**{"clock.mode": "wall"})
    async with Kernel(settings) as k:
        async with serve(create_app(settings, kernel=k)) as url, httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/v1/processes", headers={"Authorization": "Bearer anything"})
            assert r.status_code == 200   # no tokens anywhere: loopback, every caller is local
            await k.db.run(lambda e: access.create_principal(e, "alice", 1.0))
            info, token = await k.db.run(lambda e: access.create_token(e, "alice", 2.0))
            await anyio.sleep(1.1)   # the server's knowledge that tokens exist lasts a second
            r = await c.get("/v1/processes")
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            ok = await c.post("/v1/processes", json={"name": "agent"}, headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code in (200, 201), ok.text
            assert k.processes.procs[ok.json()["pid"]].principal == "alice"
            r = await c.get("/v1/processes", headers={"Authorization": "Bearer aios_00000000_" + "x" * 32})
            assert r.status_code == 401
            await k.db.run(lambda e: access.revoke_token(e, info.id, 3.0))
            r = await c.get("/v1/processes", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
            uses = await k.db.run(lambda e: access.query_audit(e, action="token.use"))
            assert [u.decision for u in uses][:3] == ["deny", "deny", "allow"]


# ---- the command line

def aios(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "AIOS_HOME": str(home)}
    return subprocess.run([str(AIOS), *args], capture_output=True, text=True, timeout=60, env=env)


def test_the_cli_administers_users_tokens_and_reads_the_audit(tmp_path: Path):
    assert aios(tmp_path, "user", "add", "alice", "-g", "dev").returncode == 0
    assert aios(tmp_path, "user", "add", "ci", "--service", "--admin").returncode == 0
    dup = aios(tmp_path, "user", "add", "alice")
    assert dup.returncode == 2 and "already exists" in dup.stderr
    users = json.loads(aios(tmp_path, "user", "list", "--json").stdout)
    assert [(u["name"], u["kind"], u["admin"]) for u in users] == [("alice", "user", False), ("ci", "service", True)]
    made = aios(tmp_path, "token", "create", "--user", "alice", "--label", "laptop", "--expires", "1h")
    token = made.stdout.strip()
    assert made.returncode == 0 and token.startswith("aios_") and "shown once" in made.stderr
    listed = json.loads(aios(tmp_path, "token", "list", "--json").stdout)
    assert len(listed) == 1 and listed[0]["state"] == "active" and token not in json.dumps(listed)
    bad = aios(tmp_path, "token", "create", "--user", "alice", "--expires", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    assert aios(tmp_path, "token", "revoke", listed[0]["id"]).returncode == 0
    assert json.loads(aios(tmp_path, "token", "list", "--json").stdout)[0]["state"] == "revoked"
    missing = aios(tmp_path, "token", "revoke", "nope")
    assert missing.returncode == 2 and "no token" in missing.stderr
    assert aios(tmp_path, "user", "disable", "alice").returncode == 0
    log = json.loads(aios(tmp_path, "audit", "--json").stdout)
    assert [x["action"] for x in log] == ["principal.disable", "token.revoke", "token.create", "principal.create",
                                          "principal.create"]
    assert [x["action"] for x in json.loads(aios(tmp_path, "audit", "--action", "token", "--json").stdout)] == [
        "token.revoke", "token.create"]
