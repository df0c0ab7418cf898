"""model rollouts: champion, canary and shadow per task, their history and per-version stats

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 20:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db.models

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC = core.db.models.UTCDateTime(timezone=True)


def _state_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("champion", sa.String(length=64), nullable=True),
        sa.Column("canary", sa.String(length=64), nullable=True),
        sa.Column("canary_percent", sa.Float(), nullable=False),
        sa.Column("shadow", sa.String(length=64), nullable=True),
        sa.Column("shadow_percent", sa.Float(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "model_rollouts",
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        *_state_columns(),
        sa.Column("changed_at", UTC, nullable=False),
        sa.Column("changed_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("task"),
    )
    op.create_table(
        "model_rollout_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        *_state_columns(),
        sa.Column("at", UTC, nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_rollout_changes_task", "model_rollout_changes", ["task", "revision"])
    op.create_table(
        "model_rollout_stats",
        sa.Column("task", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("items", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("scored", sa.BigInteger(), nullable=False),
        sa.Column("confidence_sum", sa.Float(), nullable=False),
        sa.Column("compared", sa.BigInteger(), nullable=False),
        sa.Column("agreed", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.PrimaryKeyConstraint("task", "revision", "version", "role"),
    )


def downgrade() -> None:
    op.drop_table("model_rollout_stats")
    op.drop_index("ix_model_rollout_changes_task", table_name="model_rollout_changes")
    op.drop_table("model_rollout_changes")
    op.drop_table("model_rollouts")
