"""Tenants and their own limits (over the settings' defaults): `inferq tenants set-limits`."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import Tenant
from core.errors import InvalidInput, NotFound
from core.security import audit
from core.security.ratelimit import parse_rate_limits

KEEP = object()  # set_limits: leave this limit as it is


def ensure_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


@dataclass(frozen=True)
class TenantLimits:
    name: str
    rate_limits: str | None  # None: INFERQ_RATE_LIMITS
    max_pending_inputs: int | None  # None: INFERQ_MAX_PENDING_INPUTS_PER_TENANT


def set_limits(
    session: Session,
    name: str,
    *,
    rate_limits: str | object | None = KEEP,
    max_pending_inputs: int | object | None = KEEP,
    actor: str = "system",
) -> TenantLimits:
    """Change a tenant's own limits; None returns one to the default. Takes effect on each API
    process within INFERQ_API_KEY_CACHE_SECONDS."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name).with_for_update())
    if tenant is None:
        raise NotFound(f"no tenant {name!r}; tenants are made by `inferq keys create NAME`")
    before = {"rate_limits": tenant.rate_limits, "max_pending_inputs": tenant.max_pending_inputs}
    if rate_limits is not KEEP:
        if isinstance(rate_limits, str):
            parse_rate_limits(rate_limits)  # InvalidInput names what is wrong
        tenant.rate_limits = rate_limits if isinstance(rate_limits, str) else None
    if max_pending_inputs is not KEEP:
        if isinstance(max_pending_inputs, int) and max_pending_inputs < 1:
            raise InvalidInput("max pending inputs must be at least 1")
        tenant.max_pending_inputs = (
            max_pending_inputs if isinstance(max_pending_inputs, int) else None
        )
    after = {"rate_limits": tenant.rate_limits, "max_pending_inputs": tenant.max_pending_inputs}
    details = {"before": before, "after": after}
    audit.record(session, actor, "tenant.limits_changed", tenant.id, target=name, details=details)
    session.flush()
    return TenantLimits(name, tenant.rate_limits, tenant.max_pending_inputs)


def list_limits(session: Session) -> list[TenantLimits]:
    rows = session.execute(
        select(Tenant.name, Tenant.rate_limits, Tenant.max_pending_inputs).order_by(Tenant.name)
    )
    return [TenantLimits(*row) for row in rows]
