"""API keys: one tenant per key name, keys shown once and stored as SHA-256 digests.

Keys are 256-bit random tokens, so a fast hash is enough: a slow password hash (bcrypt/argon2)
only protects low-entropy secrets and would cost every request milliseconds.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import ApiKey, Tenant
from core.db.session import Database
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


class KeyCache:
    """Tenants of recently accepted keys, kept ``ttl_seconds`` per API process so a request does
    not open a transaction just to authenticate (about 10 % of a 256-input submit's CPU). A key
    revoked in the database keeps working for at most ``ttl_seconds`` on a process that has just
    accepted it; refused keys are never kept. ``ttl_seconds=0`` checks every request."""

    def __init__(self, ttl_seconds: float, max_keys: int = 10_000) -> None:
        self.ttl_seconds = ttl_seconds
        self._tenants: TTLCache[str, int] = TTLCache(max_keys, ttl_seconds or 1)
        self._lock = threading.Lock()  # routes run in a thread pool; TTLCache is not thread-safe

    def tenant_id(self, database: Database, presented: str | None) -> int:
        if not presented or self.ttl_seconds <= 0:
            return self._authenticate(database, presented)
        digest = hash_key(presented)
        with self._lock:
            tenant_id = self._tenants.get(digest)
        if tenant_id is None:
            tenant_id = self._authenticate(database, presented)
            with self._lock:
                self._tenants[digest] = tenant_id
        return tenant_id

    @staticmethod
    def _authenticate(database: Database, presented: str | None) -> int:
        with database.transaction() as session:
            return authenticate(session, presented)
