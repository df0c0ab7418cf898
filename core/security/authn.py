"""Who is calling: an API key or a JWT in ``Authorization: Bearer`` (or a key in ``X-API-Key``)
becomes a Principal. API keys start with ``iq_``; anything else in the bearer slot is read as a
JWT when INFERQ_JWT_* configures a key to verify it.

Principals are kept ``ttl_seconds`` per API process so a request does not open a transaction
just to authenticate (about 10 % of a 256-input submit's CPU): a key revoked, or a tenant's
limits changed, in the database takes effect within ``ttl_seconds`` on a process that has just
accepted the key. Expiry is checked on every request. Refused credentials are never kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from cachetools import TTLCache

from core.db.session import Database
from core.errors import Unauthorized
from core.security.keys import KEY_PREFIX, authenticate, check_unexpired, hash_key
from core.security.scopes import Principal
from core.security.tenants import ensure_tenant
from core.security.tokens import TokenVerifier
from core.telemetry.metrics import AUTH_FAILURES


class Authenticator:
    def __init__(
        self,
        database: Database,
        ttl_seconds: float,
        tokens: TokenVerifier | None = None,
        max_entries: int = 10_000,
    ) -> None:
        self.database = database
        self.ttl_seconds = ttl_seconds
        self.tokens = tokens
        self._kept: TTLCache[str, Principal] = TTLCache(max_entries, ttl_seconds or 1)
        self._lock = threading.Lock()  # routes run in a thread pool; TTLCache is not thread-safe

    def principal(self, presented: str | None) -> Principal:
        try:
            if presented and not presented.startswith(KEY_PREFIX) and presented.count(".") == 2:
                return self._from_token(presented)
            return self._from_key(presented)
        except Unauthorized:
            AUTH_FAILURES.labels("unauthenticated").inc()
            raise

    def _from_key(self, presented: str | None) -> Principal:
        if not presented:
            return self._read(authenticate, presented)
        digest = hash_key(presented)
        principal = self._kept_or(f"key:{digest}", lambda: self._read(authenticate, presented))
        check_unexpired(principal)
        return principal

    def _from_token(self, token: str) -> Principal:
        if self.tokens is None:
            raise Unauthorized(
                "JWTs are not accepted here (no INFERQ_JWT_PUBLIC_KEYS or INFERQ_JWT_SECRET); "
                "send an API key"
            )
        verified = self.tokens.verify(token)  # every request: signature, exp, nbf, iss, aud
        tenant = self._kept_or(f"tenant:{verified.tenant}", lambda: self._tenant(verified.tenant))
        return replace(
            tenant,
            actor=f"jwt:{verified.subject}"[:200],
            scopes=verified.scopes,
            expires_at=verified.expires_at,
        )

    def _tenant(self, name: str) -> Principal:
        with self.database.transaction() as session:
            row = ensure_tenant(session, name)
            return Principal(
                row.id,
                row.name,
                actor="",
                scopes=frozenset(),
                rate_limits=row.rate_limits,
                max_pending_inputs=row.max_pending_inputs,
            )

    def _kept_or(self, key: str, load: Callable[[], Principal]) -> Principal:
        if self.ttl_seconds <= 0:
            return load()
        with self._lock:
            principal = self._kept.get(key)
        if principal is None:
            principal = load()
            with self._lock:
                self._kept[key] = principal
        return principal

    def _read(self, read: Callable[..., Principal], presented: str | None) -> Principal:
        with self.database.transaction() as session:
            return read(session, presented)
