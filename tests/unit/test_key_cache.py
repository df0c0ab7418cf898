"""The API's key cache: an accepted key is trusted for its TTL, a refused key never is.
Real database (migrated SQLite); keys made by the same code as `inferq keys create`."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from core.db.models import ApiKey, utcnow
from core.db.session import Database
from core.errors import Unauthorized
from core.security import KeyCache, create_key


def new_key(db: Database, name: str = "acme") -> tuple[int, str]:
    with db.transaction() as session:
        created = create_key(session, name)
    return created.tenant_id, created.key


def revoke_all(db: Database) -> None:
    with db.transaction() as session:
        session.execute(update(ApiKey).values(revoked_at=utcnow()))


def test_an_accepted_key_is_trusted_until_its_ttl_even_if_revoked_meanwhile(
    sqlite_db: Database,
) -> None:
    tenant_id, key = new_key(sqlite_db)
    keys = KeyCache(ttl_seconds=3600)
    assert keys.tenant_id(sqlite_db, key) == tenant_id

    revoke_all(sqlite_db)

    assert keys.tenant_id(sqlite_db, key) == tenant_id  # from the cache, within the TTL
    with pytest.raises(Unauthorized):
        KeyCache(ttl_seconds=3600).tenant_id(sqlite_db, key)  # a process that had not seen it


def test_with_no_ttl_every_request_checks_the_database(sqlite_db: Database) -> None:
    _, key = new_key(sqlite_db)
    keys = KeyCache(ttl_seconds=0)
    keys.tenant_id(sqlite_db, key)

    revoke_all(sqlite_db)

    with pytest.raises(Unauthorized):
        keys.tenant_id(sqlite_db, key)


def test_a_refused_key_is_not_remembered(sqlite_db: Database) -> None:
    tenant_id, key = new_key(sqlite_db)
    revoke_all(sqlite_db)
    keys = KeyCache(ttl_seconds=3600)
    with pytest.raises(Unauthorized):
        keys.tenant_id(sqlite_db, key)

    with sqlite_db.transaction() as session:  # reinstated
        session.execute(update(ApiKey).values(revoked_at=None))

    assert keys.tenant_id(sqlite_db, key) == tenant_id
