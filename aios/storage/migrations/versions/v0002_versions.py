"""Versioned files: every write is a new version whose content is a blob stored once by
its SHA-256; a delete is a version without a blob. The files already there become their
first version.

Revision ID: 0002_versions
Revises: 0001_first
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002_versions'
down_revision = '0001_first'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blobs',
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('digest')
    )
    op.create_table('file_versions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=True),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['digest'], ['blobs.digest'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('file_versions', schema=None) as batch_op:
        batch_op.create_index('ix_file_versions_pid_path_version', ['pid', 'path', 'version'], unique=True)
    _first_versions()


def _first_versions() -> None:
    """Each existing file becomes version 1 of itself; equal contents share one blob."""
    import hashlib
    conn = op.get_bind()
    files = conn.execute(sa.text("SELECT pid, path, data, updated FROM files")).all()
    seen: set[str] = set()
    for pid, path, data, updated in files:
        digest = hashlib.sha256(data.encode()).hexdigest()
        size = len(data.encode())
        if digest not in seen:
            seen.add(digest)
            conn.execute(sa.text("INSERT INTO blobs (digest, size, data) VALUES (:d, :s, :x)"),
                         {"d": digest, "s": size, "x": data})
        conn.execute(sa.text("INSERT INTO file_versions (pid, path, version, digest, size, created) "
                             "VALUES (:p, :path, 1, :d, :s, :t)"),
                     {"p": pid, "path": path, "d": digest, "s": size, "t": updated})


def downgrade() -> None:
    with op.batch_alter_table('file_versions', schema=None) as batch_op:
        batch_op.drop_index('ix_file_versions_pid_path_version')

    op.drop_table('file_versions')
    op.drop_table('blobs')
