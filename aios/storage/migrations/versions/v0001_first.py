"""The first schema: processes, the syscall journal and its transitions, kernel boots,
memory entries, files, principals, API tokens, the audit log (append-only: triggers refuse
updates and deletes) and process manifests.

Revision ID: 0001_first
Revises: (none)
Create Date: 2026-11-28
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001_first'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audit_log',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('principal', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=400), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_log_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_audit_log_principal'), ['principal'], unique=False)

    op.create_table('files',
    sa.Column('pid', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('data', sa.Text(), nullable=False),
    sa.Column('updated', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('pid', 'path')
    )
    op.create_table('kernel_boots',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('started', sa.Float(), nullable=False),
    sa.Column('num_requeued', sa.Integer(), nullable=False),
    sa.Column('num_failed', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('memory_entries',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('memory_entries', schema=None) as batch_op:
        batch_op.create_index('ix_memory_pid_key', ['pid', 'key'], unique=True)

    op.create_table('principals',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('groups', sa.JSON(), nullable=False),
    sa.Column('admin', sa.Boolean(), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('disabled', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('process_manifests',
    sa.Column('pid', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('declared', sa.JSON(), nullable=False),
    sa.Column('effective', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('pid')
    )
    op.create_table('processes',
    sa.Column('pid', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('principal', sa.String(length=200), nullable=False),
    sa.Column('parent_pid', sa.Integer(), nullable=True),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('exited', sa.Float(), nullable=True),
    sa.Column('exit_reason', sa.Text(), nullable=True),
    sa.Column('tokens_in', sa.Integer(), nullable=False),
    sa.Column('tokens_out', sa.Integer(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.Column('service_s', sa.Float(), nullable=False),
    sa.Column('program', sa.Text(), nullable=True),
    sa.Column('runner', sa.String(length=16), nullable=True),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('cpu_s', sa.Float(), nullable=False),
    sa.Column('max_rss_kib', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('pid')
    )
    with op.batch_alter_table('processes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_processes_state'), ['state'], unique=False)

    op.create_table('syscalls',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('principal', sa.String(length=200), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('deadline', sa.Float(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('started', sa.Float(), nullable=True),
    sa.Column('finished', sa.Float(), nullable=True),
    sa.Column('tokens_in', sa.Integer(), nullable=False),
    sa.Column('tokens_out', sa.Integer(), nullable=False),
    sa.Column('cost_usd', sa.Float(), nullable=False),
    sa.Column('service_s', sa.Float(), nullable=False),
    sa.Column('num_preemptions', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('syscalls', schema=None) as batch_op:
        batch_op.create_index('ix_syscalls_live', ['state'], unique=False, sqlite_where=sa.text("state IN ('queued', 'running', 'preempted')"), postgresql_where=sa.text("state IN ('queued', 'running', 'preempted')"))
        batch_op.create_index(batch_op.f('ix_syscalls_pid'), ['pid'], unique=False)

    op.create_table('api_tokens',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('principal', sa.String(length=200), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('created', sa.Float(), nullable=False),
    sa.Column('expires', sa.Float(), nullable=True),
    sa.Column('revoked', sa.Float(), nullable=True),
    sa.Column('last_used', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['principal'], ['principals.name'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('digest')
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_principal'), ['principal'], unique=False)

    op.create_table('syscall_transitions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('call_id', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.ForeignKeyConstraint(['call_id'], ['syscalls.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('syscall_transitions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_syscall_transitions_call_id'), ['call_id'], unique=False)



    _append_only()


_REFUSE = "the audit log is append-only"


def _append_only() -> None:
    """The audit log refuses updates and deletes, whoever connects to the database."""
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                       f"BEGIN SELECT RAISE(ABORT, '{_REFUSE}'); END")
    elif dialect == "postgresql":
        op.execute("CREATE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS "
                   f"$$ BEGIN RAISE EXCEPTION '{_REFUSE}'; END $$")
        op.execute("CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
                   "FOR EACH ROW EXECUTE FUNCTION audit_log_refuse()")


def downgrade() -> None:
    with op.batch_alter_table('syscall_transitions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_syscall_transitions_call_id'))

    op.drop_table('syscall_transitions')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_principal'))

    op.drop_table('api_tokens')
    with op.batch_alter_table('syscalls', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_syscalls_pid'))
        batch_op.drop_index('ix_syscalls_live', sqlite_where=sa.text("state IN ('queued', 'running', 'preempted')"), postgresql_where=sa.text("state IN ('queued', 'running', 'preempted')"))

    op.drop_table('syscalls')
    with op.batch_alter_table('processes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_processes_state'))

    op.drop_table('processes')
    op.drop_table('process_manifests')
    op.drop_table('principals')
    with op.batch_alter_table('memory_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_memory_pid_key')

    op.drop_table('memory_entries')
    op.drop_table('kernel_boots')
    op.drop_table('files')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_log_principal'))
        batch_op.drop_index(batch_op.f('ix_audit_log_at'))
        batch_op.drop_index(batch_op.f('ix_audit_log_action'))

    op.drop_table('audit_log')
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_log_refuse()")
