"""The kernel's lease: who holds the database (aios.storage.lease), recorded on PostgreSQL,
whose advisory lock names no holder itself.

Revision ID: 0005_leases
Revises: 0004_vectors
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_leases"
down_revision = "0004_vectors"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("kernel_leases",
                    sa.Column("name", sa.String(length=64), nullable=False),
                    sa.Column("epoch", sa.Integer(), nullable=False),
                    sa.Column("pid", sa.Integer(), nullable=True),
                    sa.Column("host", sa.String(length=255), nullable=True),
                    sa.Column("started", sa.Float(), nullable=True),
                    sa.Column("endpoint", sa.String(length=400), nullable=True),
                    sa.PrimaryKeyConstraint("name"))


def downgrade() -> None:
    op.drop_table("kernel_leases")
