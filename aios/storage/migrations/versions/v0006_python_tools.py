"""Python tools added to a running kernel (`aios tools add`): each one's entry and
metadata, registered again at every boot.

Revision ID: 0006_python_tools
Revises: 0005_leases
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_python_tools"
down_revision = "0005_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("python_tools",
                    sa.Column("name", sa.String(length=64), nullable=False),
                    sa.Column("entry", sa.Text(), nullable=False),
                    sa.Column("meta", sa.JSON(), nullable=False),
                    sa.Column("principal", sa.String(length=200), nullable=False),
                    sa.Column("created", sa.Float(), nullable=False),
                    sa.PrimaryKeyConstraint("name"))


def downgrade() -> None:
    op.drop_table("python_tools")
