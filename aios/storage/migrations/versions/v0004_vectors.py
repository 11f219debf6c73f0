"""Memory embeddings: one row per entry and model, the truth the vector index (sqlite-vec
or pgvector, a derived `memory_ann_*` table the code makes) is built from.

Revision ID: 0004_vectors
Revises: 0003_states
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_vectors"
down_revision = "0003_states"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("memory_vectors",
                    sa.Column("entry_id", sa.Integer(), nullable=False),
                    sa.Column("model", sa.String(length=100), nullable=False),
                    sa.Column("pid", sa.Integer(), nullable=False),
                    sa.Column("dim", sa.Integer(), nullable=False),
                    sa.Column("vector", sa.LargeBinary(), nullable=False),
                    sa.ForeignKeyConstraint(["entry_id"], ["memory_entries.id"], ondelete="CASCADE"),
                    sa.PrimaryKeyConstraint("entry_id", "model"))
    with op.batch_alter_table("memory_vectors", schema=None) as batch_op:
        batch_op.create_index("ix_memory_vectors_model_pid", ["model", "pid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("memory_vectors", schema=None) as batch_op:
        batch_op.drop_index("ix_memory_vectors_model_pid")
    op.drop_table("memory_vectors")
