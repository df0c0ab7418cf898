"""The API's authenticator keeps accepted keys: trusted for the TTL, a refused key never is, and
an expiry is checked on every request, kept or not. Real database (migrated SQLite); keys made by
the same code as `inferq keys create`."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from core.db.models import ApiKey, utcnow
from core.db.session import Database
from core.errors import Unauthorized
from core.security.authn import Authenticator
from core.security.keys import create_key


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
    keys = Authenticator(sqlite_db, ttl_seconds=3600)
    assert keys.principal(key).tenant_id == tenant_id

    revoke_all(sqlite_db)

    assert keys.principal(key).tenant_id == tenant_id  # from the cache, within the TTL
    with pytest.raises(Unauthorized, match="revoked"):
        Authenticator(sqlite_db, ttl_seconds=3600).principal(key)  # a process that had not seen it


def test_with_no_ttl_every_request_checks_the_database(sqlite_db: Database) -> None:
    _, key = new_key(sqlite_db)
    keys = Authenticator(sqlite_db, ttl_seconds=0)
    keys.principal(key)

    revoke_all(sqlite_db)

    with pytest.raises(Unauthorized):
        keys.principal(key)


def test_a_refused_key_is_not_remembered(sqlite_db: Database) -> None:
    tenant_id, key = new_key(sqlite_db)
    revoke_all(sqlite_db)
    keys = Authenticator(sqlite_db, ttl_seconds=3600)
    with pytest.raises(Unauthorized):
        keys.principal(key)

    with sqlite_db.transaction() as session:  # reinstated
        session.execute(update(ApiKey).values(revoked_at=None))

    assert keys.principal(key).tenant_id == tenant_id


def test_a_kept_key_is_refused_once_it_expires(sqlite_db: Database) -> None:
    with sqlite_db.transaction() as session:
        created = create_key(session, "acme", expires_at=utcnow() + timedelta(hours=1))
    keys = Authenticator(sqlite_db, ttl_seconds=3600)
    assert keys.principal(created.key).expires_at == created.expires_at

    with sqlite_db.transaction() as session:  # an hour passes
        session.execute(update(ApiKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert keys.principal(created.key)  # kept: the expiry it was read with is still ahead
    with pytest.raises(Unauthorized, match="expired"):
        Authenticator(sqlite_db, ttl_seconds=3600).principal(created.key)
