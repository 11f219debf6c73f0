"""Call states up to 32 characters: `waiting_confirmation` did not fit the 16 of the first
schema (SQLite does not enforce the length; PostgreSQL does).

Revision ID: 0003_states
Revises: 0002_versions
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_states"
down_revision = "0002_versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("syscalls", "syscall_transitions"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column("state", existing_type=sa.String(length=16), type_=sa.String(length=32),
                                  existing_nullable=False)


def downgrade() -> None:
    for table in ("syscalls", "syscall_transitions"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column("state", existing_type=sa.String(length=32), type_=sa.String(length=16),
                                  existing_nullable=False)
