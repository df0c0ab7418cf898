"""what each job used: inputs, cached inputs, tokens, model seconds, tiers

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 17:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Jobs finished before usage was recorded read as zero (unknown), not as NULL.
COLUMNS = (
    ("usage_inputs", sa.Integer()),
    ("usage_cached", sa.Integer()),
    ("usage_tokens", sa.BigInteger()),
    ("usage_model_seconds", sa.Float()),
    ("usage_gpu_seconds", sa.Float()),
    ("usage_primary", sa.Integer()),
    ("usage_fallback", sa.Integer()),
    ("usage_rules", sa.Integer()),
)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as table:
        for name, type_ in COLUMNS:
            table.add_column(sa.Column(name, type_, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as table:
        for name, _ in reversed(COLUMNS):
            table.drop_column(name)
