"""batches: the bulk door

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 18:22:08.864274
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db.models


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('batches',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('content_hash', sa.String(length=64), nullable=True),
    sa.Column('webhook_url', sa.Text(), nullable=True),
    sa.Column('metadata', sa.JSON(), nullable=True),
    sa.Column('completion_window_seconds', sa.Integer(), nullable=False),
    sa.Column('total', sa.BigInteger(), nullable=False),
    sa.Column('completed', sa.BigInteger(), nullable=False),
    sa.Column('failed', sa.BigInteger(), nullable=False),
    sa.Column('cancelled', sa.BigInteger(), nullable=False),
    sa.Column('created_at', core.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('in_progress_at', core.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finalizing_at', core.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('completed_at', core.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('failed_at', core.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expires_at', core.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expired_at', core.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('cancelling_at', core.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('cancelled_at', core.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('dispatched_at', core.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('output_written_at', core.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'idempotency_key', name='uq_batches_tenant_idempotency_key')
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.create_index('ix_batches_status', ['status'], unique=False)
        batch_op.create_index('ix_batches_tenant_created', ['tenant_id', 'created_at', 'id'], unique=False)

    with op.batch_alter_table('job_items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_id', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('line', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('external_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('error_code', sa.String(length=32), nullable=True))
        batch_op.create_index('ix_job_items_batch_external_id', ['batch_id', 'external_id'], unique=False, postgresql_where=sa.text('batch_id IS NOT NULL'), sqlite_where=sa.text('batch_id IS NOT NULL'))
        batch_op.create_index('ix_job_items_batch_line', ['batch_id', 'line'], unique=True, postgresql_where=sa.text('batch_id IS NOT NULL'), sqlite_where=sa.text('batch_id IS NOT NULL'))

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_id', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('batch_seq', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('dispatched_at', core.db.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_jobs_batch_seq', ['batch_id', 'batch_seq'], unique=False, postgresql_where=sa.text('batch_id IS NOT NULL'), sqlite_where=sa.text('batch_id IS NOT NULL'))
        batch_op.create_foreign_key('fk_jobs_batch', 'batches', ['batch_id'], ['id'], ondelete='CASCADE')

    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_id', sa.Uuid(), nullable=True))
        batch_op.create_unique_constraint('uq_webhook_deliveries_batch', ['batch_id'])
        batch_op.create_foreign_key('fk_webhook_deliveries_batch', 'batches', ['batch_id'], ['id'], ondelete='CASCADE')



def downgrade() -> None:
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_constraint('fk_webhook_deliveries_batch', type_='foreignkey')
        batch_op.drop_constraint('uq_webhook_deliveries_batch', type_='unique')
        batch_op.drop_column('batch_id')

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint('fk_jobs_batch', type_='foreignkey')
        batch_op.drop_index('ix_jobs_batch_seq', postgresql_where=sa.text('batch_id IS NOT NULL'), sqlite_where=sa.text('batch_id IS NOT NULL'))
        batch_op.drop_column('dispatched_at')
        batch_op.drop_column('batch_seq')
        batch_op.drop_column('batch_id')

    with op.batch_alter_table('job_items', schema=None) as batch_op:
        batch_op.drop_index('ix_job_items_batch_line', postgresql_where=sa.text('batch_id IS NOT NULL'), sqlite_where=sa.text('batch_id IS NOT NULL'))
        batch_op.drop_index('ix_job_items_batch_external_id', postgresql_where=sa.text('batch_id IS NOT NULL'), sqlite_where=sa.text('batch_id IS NOT NULL'))
        batch_op.drop_column('error_code')
        batch_op.drop_column('external_id')
        batch_op.drop_column('line')
        batch_op.drop_column('batch_id')

    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_index('ix_batches_tenant_created')
        batch_op.drop_index('ix_batches_status')

    op.drop_table('batches')
