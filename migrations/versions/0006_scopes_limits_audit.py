"""scopes and expiry on API keys, per-tenant limits, the audit trail

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 16:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import core.db.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Keys made before scopes existed could do everything but administer (there was no admin).
EARLIER_KEYS_SCOPES = "jobs:write jobs:read batches:write batches:read models:read webhooks:admin"
PENDING = "status IN ('queued', 'running')"


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as table:
        table.add_column(
            sa.Column("scopes", sa.Text(), nullable=False, server_default=EARLIER_KEYS_SCOPES)
        )
        table.add_column(
            sa.Column("expires_at", core.db.models.UTCDateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("api_keys") as table:
        table.alter_column("scopes", server_default=None)
    with op.batch_alter_table("tenants") as table:
        table.add_column(sa.Column("rate_limits", sa.Text(), nullable=True))
        table.add_column(sa.Column("max_pending_inputs", sa.BigInteger(), nullable=True))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", core.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("target", sa.String(length=200), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at", "id"])
    op.create_index(
        "ix_jobs_tenant_pending",
        "jobs",
        ["tenant_id"],
        postgresql_include=["total_items"],
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_pending", table_name="jobs")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_table("audit_events")
    with op.batch_alter_table("tenants") as table:
        table.drop_column("max_pending_inputs")
        table.drop_column("rate_limits")
    with op.batch_alter_table("api_keys") as table:
        table.drop_column("expires_at")
        table.drop_column("scopes")
