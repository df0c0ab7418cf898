"""API keys: one tenant per key name, keys shown once and stored as SHA-256 digests, each with
its scopes and, if given, an expiry.

Keys are 256-bit random tokens, so a fast hash is enough: a slow password hash (bcrypt/argon2)
only protects low-entropy secrets and would cost every request milliseconds.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import ApiKey, Tenant, utcnow
from core.errors import InvalidInput, Unauthorized
from core.security import audit
from core.security.scopes import DEFAULT_KEY_SCOPES, SCOPES, Principal, parse_scopes, scope_text
from core.security.tenants import ensure_tenant

KEY_PREFIX = "iq_"
KEPT_CHARS = 10  # of each key, stored in the clear so operators can tell keys apart
LOCAL_TENANT = "local"


@dataclass(frozen=True)
class CreatedKey:
    tenant_id: int
    name: str
    key: str  # the only time the plaintext exists
    scopes: str
    expires_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session,
    name: str,
    scopes: Iterable[str] = DEFAULT_KEY_SCOPES,
    expires_at: datetime | None = None,
    actor: str = "system",
) -> CreatedKey:
    held = scope_text(parse_scopes(scopes))
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidInput("the expiry must be in the future")
    tenant = ensure_tenant(session, name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    prefix = key[:KEPT_CHARS]
    session.add(
        ApiKey(
            tenant_id=tenant.id,
            name=name,
            prefix=prefix,
            key_hash=hash_key(key),
            scopes=held,
            expires_at=expires_at,
        )
    )
    details = {"scopes": held, "expires_at": expires_at.isoformat() if expires_at else None}
    audit.record(session, actor, "key.created", tenant.id, target=prefix, details=details)
    session.flush()
    return CreatedKey(tenant.id, name, key, held, expires_at)


@dataclass(frozen=True)
class KeyInfo:
    """What is kept of a key: never the key itself, only its first characters."""

    prefix: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None
    scopes: str = " ".join(DEFAULT_KEY_SCOPES)
    expires_at: datetime | None = None


def list_keys(session: Session) -> list[KeyInfo]:
    rows = session.execute(
        select(
            ApiKey.prefix,
            Tenant.name,
            ApiKey.created_at,
            ApiKey.revoked_at,
            ApiKey.scopes,
            ApiKey.expires_at,
        )
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .order_by(ApiKey.created_at, ApiKey.id)
    )
    return [KeyInfo(*row) for row in rows]


def revoke_key(session: Session, prefix: str, actor: str = "system") -> KeyInfo:
    """Revoke the one active key that starts with ``prefix`` (as ``list_keys`` shows it, or the
    whole key). Refuses a prefix that matches no active key or more than one."""
    if len(prefix) < len(KEY_PREFIX) + 4:
        raise InvalidInput(f"give at least {len(KEY_PREFIX) + 4} characters of the key")
    stored = prefix[:KEPT_CHARS]
    matches = session.scalars(
        select(ApiKey).where(ApiKey.prefix.startswith(stored), ApiKey.revoked_at.is_(None))
    ).all()
    if len(prefix) > len(stored):  # more than the kept prefix: it must be the whole key
        matches = [key for key in matches if key.key_hash == hash_key(prefix)]
    if len(matches) != 1:
        found = "no active key starts" if not matches else f"{len(matches)} active keys start"
        raise InvalidInput(f"{found} with {stored!r}; see `inferq keys list`")
    key = matches[0]
    key.revoked_at = utcnow()
    audit.record(session, actor, "key.revoked", key.tenant_id, target=key.prefix)
    session.flush()
    tenant = session.get_one(Tenant, key.tenant_id).name
    return KeyInfo(key.prefix, tenant, key.created_at, key.revoked_at, key.scopes, key.expires_at)


def authenticate(session: Session, presented: str | None) -> Principal:
    """The caller behind a presented key, or Unauthorized (unknown, revoked or expired)."""
    if not presented:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>' or 'X-API-Key'")
    found = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == hash_key(presented))
    ).one_or_none()
    if found is None:
        raise Unauthorized("the API key is not valid")
    key, tenant = found
    if key.revoked_at is not None:
        raise Unauthorized("the API key has been revoked")
    principal = Principal(
        tenant_id=tenant.id,
        tenant=tenant.name,
        actor=f"key:{key.prefix}",
        scopes=frozenset(key.scopes.split()).intersection(SCOPES),
        expires_at=key.expires_at,
        rate_limits=tenant.rate_limits,
        max_pending_inputs=tenant.max_pending_inputs,
    )
    check_unexpired(principal)
    return principal


def check_unexpired(principal: Principal) -> None:
    if principal.expires_at is not None and principal.expires_at <= utcnow():
        raise Unauthorized(f"the API key expired at {principal.expires_at:%Y-%m-%dT%H:%M:%SZ}")


def local_tenant_id(session: Session) -> int:
    """Embedded mode's single tenant, for callers that present no key."""
    return ensure_tenant(session, LOCAL_TENANT).id


def local_principal(session: Session) -> Principal:
    """Embedded mode's caller that presents no key: the local tenant, allowed everything."""
    tenant = ensure_tenant(session, LOCAL_TENANT)
    return Principal(
        tenant.id,
        tenant.name,
        "local",
        frozenset(SCOPES),
        rate_limits=tenant.rate_limits,
        max_pending_inputs=tenant.max_pending_inputs,
    )
