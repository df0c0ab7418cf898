"""kafka records keyed by message id too: a broker that lost its log reuses offsets

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 17:17:45.653216
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db.models


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('kafka_records', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_kafka_records_position'), type_='unique')
        batch_op.create_unique_constraint('uq_kafka_records_record', ['topic', 'partition', 'offset', 'message_id'])



def downgrade() -> None:
    with op.batch_alter_table('kafka_records', schema=None) as batch_op:
        batch_op.drop_constraint('uq_kafka_records_record', type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_kafka_records_position'), ['topic', 'partition', 'offset'])

