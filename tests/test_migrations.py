"""Schema migrations (Alembic, aios/storage/migrations): a new database is built by them
and matches the models exactly; a database made before migrations existed is completed,
stamped and upgraded without losing a row; the audit log's append-only triggers come with
the schema."""
from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.exc import DBAPIError

from aios.clock import WallClock
from aios.storage.db import Database
from aios.storage.models import Base, ProcessRow, managed


def opened(path: Path | str) -> Database:
    db = Database(path if isinstance(path, str) else f"sqlite:///{path}", WallClock())
    db.open()
    return db


def newest() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from aios.storage.db import MIGRATIONS
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()   # type: ignore[return-value]


def head(db: Database) -> str:
    with db.engine.connect() as conn:   # type: ignore[union-attr]
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()


def test_a_new_database_is_built_by_the_migrations_and_matches_the_models(database_url: str):
    db = opened(database_url)
    try:
        assert head(db) == newest()
        with db.engine.connect() as conn:   # type: ignore[union-attr]
            diff = compare_metadata(MigrationContext.configure(conn, opts={"include_name": managed}), Base.metadata)
        assert diff == [], f"the models and the migrations differ; add a revision: {diff}"
        with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as conn:   # type: ignore[union-attr]
            conn.execute(text("INSERT INTO audit_log (at, principal, action, target, decision, detail) "
                              "VALUES (1, 'a', 'b', '', 'info', '{}')"))
            conn.execute(text("DELETE FROM audit_log"))
    finally:
        db.close()
    db = opened(database_url)   # opening again changes nothing
    assert head(db) == newest()
    db.close()


def test_a_database_made_before_migrations_is_stamped_and_keeps_its_rows(tmp_path: Path):
    path = tmp_path / "old.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine, tables=[ProcessRow.__table__,
                                             Base.metadata.tables["syscalls"], Base.metadata.tables["files"]])
    with engine.begin() as conn:
        conn.execute(insert(ProcessRow).values(pid=7, name="old", principal="local", state="exited", created=1.0,
                                               priority=0, tokens_in=0, tokens_out=0, cost_usd=0.0, service_s=0.0,
                                               cpu_s=0.0, max_rss_kib=0))
    engine.dispose()
    db = opened(path)
    try:
        assert head(db) == newest()
        with db.engine.connect() as conn:   # type: ignore[union-attr]
            assert conn.execute(select(ProcessRow.name).where(ProcessRow.pid == 7)).scalar_one() == "old"
            assert "audit_log" in {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master"))}
    finally:
        db.close()


def test_every_revision_downgrades_and_upgrades_again(database_url: str):
    """Each revision's downgrade undoes its upgrade: from the newest down to nothing, one
    step at a time, and back up to a schema that matches the models."""
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from aios.storage.db import MIGRATIONS
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    revisions = [r.revision for r in ScriptDirectory.from_config(cfg).walk_revisions()]   # newest first
    assert len(revisions) >= 4
    db = opened(database_url)
    try:
        for below in [*revisions[1:], "base"]:
            with db.engine.begin() as conn:   # type: ignore[union-attr]
                cfg.attributes["connection"] = conn
                command.downgrade(cfg, below)
            with db.engine.connect() as conn:   # type: ignore[union-attr]
                version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            assert version == (None if below == "base" else below)
        with db.engine.connect() as conn:   # type: ignore[union-attr]
            left = set(conn.dialect.get_table_names(conn)) - {"alembic_version"}
        assert left == set(), f"a downgrade left tables behind: {left}"
    finally:
        db.close()
    db = opened(database_url)   # opening upgrades it to the newest again
    try:
        assert head(db) == newest()
        with db.engine.connect() as conn:   # type: ignore[union-attr]
            assert compare_metadata(MigrationContext.configure(conn, opts={"include_name": managed}), Base.metadata) == []
    finally:
        db.close()
