"""API keys: one tenant per key name, keys shown once and stored as SHA-256 digests.

Keys are 256-bit random tokens, so a fast hash is enough: a slow password hash (bcrypt/argon2)
only protects low-entropy secrets and would cost every request milliseconds.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import ApiKey, Tenant
from core.errors import Unauthorized

KEY_PREFIX = "iq_"
LOCAL_TENANT = "local"


@dataclass(frozen=True)
class CreatedKey:
    tenant_id: int
    name: str
    key: str  # the only time the plaintext exists


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def ensure_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, name: str) -> CreatedKey:
    tenant = ensure_tenant(session, name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, name=name, prefix=key[:10], key_hash=hash_key(key)))
    session.flush()
    return CreatedKey(tenant.id, name, key)


def authenticate(session: Session, presented: str | None) -> int:
    """The tenant id behind a presented key, or Unauthorized."""
    if not presented:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>' or 'X-API-Key'")
    row = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(presented), ApiKey.revoked_at.is_(None))
    )
    if row is None:
        raise Unauthorized("the API key is not valid or has been revoked")
    return row.tenant_id


def local_tenant_id(session: Session) -> int:
    """Embedded mode's single tenant, for callers that present no key."""
    return ensure_tenant(session, LOCAL_TENANT).id
