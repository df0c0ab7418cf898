"""kafka records: the Kafka record (topic, partition, offset) each Kafka job came from

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 06:15:29.620983
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db.models


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('kafka_records',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('topic', sa.String(length=255), nullable=False),
    sa.Column('partition', sa.Integer(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('message_id', sa.String(length=200), nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('created_at', core.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('topic', 'partition', 'offset', name='uq_kafka_records_position')
    )
    with op.batch_alter_table('kafka_records', schema=None) as batch_op:
        batch_op.create_index('ix_kafka_records_job', ['job_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('kafka_records', schema=None) as batch_op:
        batch_op.drop_index('ix_kafka_records_job')

    op.drop_table('kafka_records')
