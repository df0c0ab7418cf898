"""The audit trail: who created or revoked a key, rotated a secret, changed limits, cancelled a
job or a batch. Written in the transaction that made the change, so it is there exactly when the
change is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import AuditEvent, Tenant


def record(
    session: Session,
    actor: str,
    action: str,
    tenant_id: int | None,
    *,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    session.add(
        AuditEvent(actor=actor, action=action, tenant_id=tenant_id, target=target, details=details)
    )


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    tenant: str | None
    target: str | None
    details: dict[str, Any] | None


def entries(
    session: Session,
    since: datetime | None = None,
    *,
    tenant: str | None = None,
    action: str | None = None,
    limit: int = 1000,
) -> list[AuditEntry]:
    """Oldest first, from ``since``; ``action`` matches a prefix ("key." is every key event)."""
    query = (
        select(
            AuditEvent.at,
            AuditEvent.actor,
            AuditEvent.action,
            Tenant.name,
            AuditEvent.target,
            AuditEvent.details,
        )
        .outerjoin(Tenant, Tenant.id == AuditEvent.tenant_id)
        .order_by(AuditEvent.at, AuditEvent.id)
        .limit(limit)
    )
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if tenant is not None:
        query = query.where(Tenant.name == tenant)
    if action is not None:
        query = query.where(AuditEvent.action.startswith(action))
    return [AuditEntry(*row) for row in session.execute(query)]
