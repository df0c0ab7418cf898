"""jobs and batches asking several tasks of each input: a parent job (batch) and one child job
(batch) per task

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 00:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as table:
        table.add_column(sa.Column("tasks", sa.JSON(), nullable=True))
        table.add_column(sa.Column("parent_id", sa.Uuid(), nullable=True))
        table.create_foreign_key(
            "fk_jobs_parent", "jobs", ["parent_id"], ["id"], ondelete="CASCADE"
        )
        table.create_index("ix_jobs_parent_id", ["parent_id"])
    with op.batch_alter_table("batches") as table:
        table.add_column(sa.Column("tasks", sa.JSON(), nullable=True))
        table.add_column(sa.Column("parent_id", sa.Uuid(), nullable=True))
        table.create_foreign_key(
            "fk_batches_parent", "batches", ["parent_id"], ["id"], ondelete="CASCADE"
        )
        table.create_index("ix_batches_parent_id", ["parent_id"])


def downgrade() -> None:
    with op.batch_alter_table("batches") as table:
        table.drop_index("ix_batches_parent_id")
        table.drop_constraint("fk_batches_parent", type_="foreignkey")
        table.drop_column("parent_id")
        table.drop_column("tasks")
    with op.batch_alter_table("jobs") as table:
        table.drop_index("ix_jobs_parent_id")
        table.drop_constraint("fk_jobs_parent", type_="foreignkey")
        table.drop_column("parent_id")
        table.drop_column("tasks")
