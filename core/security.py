"""API keys: one tenant per key name, keys shown once and stored as SHA-256 digests.

Keys are 256-bit random tokens, so a fast hash is enough: a slow password hash (bcrypt/argon2)
only protects low-entropy secrets and would cost every request milliseconds.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime

from cachetools import TTLCache
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db.models import ApiKey, Tenant, utcnow
from core.db.session import Database
from core.errors import InvalidInput, Unauthorized

KEY_PREFIX = "iq_"
KEPT_CHARS = 10  # of each key, stored in the clear so operators can tell keys apart
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
    session.add(
        ApiKey(tenant_id=tenant.id, name=name, prefix=key[:KEPT_CHARS], key_hash=hash_key(key))
    )
    session.flush()
    return CreatedKey(tenant.id, name, key)


@dataclass(frozen=True)
class KeyInfo:
    """What is kept of a key: never the key itself, only its first characters."""

    prefix: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None


def list_keys(session: Session) -> list[KeyInfo]:
    rows = session.execute(
        select(ApiKey.prefix, Tenant.name, ApiKey.created_at, ApiKey.revoked_at)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .order_by(ApiKey.created_at, ApiKey.id)
    )
    return [KeyInfo(*row) for row in rows]


def revoke_key(session: Session, prefix: str) -> KeyInfo:
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
    session.flush()
    return KeyInfo(
        key.prefix, session.get_one(Tenant, key.tenant_id).name, key.created_at, key.revoked_at
    )


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
