"""`inferq keys list` and `inferq keys revoke` on a real (migrated SQLite) database: a revoked key
is refused by the API's own check, and a prefix that is unknown or ambiguous revokes nothing."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import app
from core.db.models import ApiKey
from core.db.session import Database
from core.errors import InvalidInput, Unauthorized
from core.security.keys import authenticate, create_key, hash_key, list_keys, revoke_key


def new_key(db: Database, name: str) -> str:
    with db.transaction() as session:
        return create_key(session, name).key


def test_a_key_revoked_by_its_prefix_is_refused_and_the_others_still_work(
    sqlite_db: Database,
) -> None:
    gone, kept = new_key(sqlite_db, "acme"), new_key(sqlite_db, "globex")

    with sqlite_db.transaction() as session:
        revoked = revoke_key(session, gone[:10])

    assert revoked.tenant == "acme" and revoked.revoked_at is not None
    with sqlite_db.transaction() as session:
        with pytest.raises(Unauthorized):
            authenticate(session, gone)
        assert authenticate(session, kept)
        listed = {key.prefix: key for key in list_keys(session)}
    assert listed[gone[:10]].revoked_at is not None and listed[kept[:10]].revoked_at is None


def test_the_whole_key_revokes_it_but_a_wrong_key_with_its_prefix_does_not(
    sqlite_db: Database,
) -> None:
    key = new_key(sqlite_db, "acme")
    with sqlite_db.transaction() as session, pytest.raises(InvalidInput, match="no active key"):
        revoke_key(session, key[:10] + "not-the-rest")

    with sqlite_db.transaction() as session:
        revoke_key(session, key)
    with sqlite_db.transaction() as session, pytest.raises(InvalidInput, match="no active key"):
        revoke_key(session, key)  # already revoked


def test_a_prefix_too_short_to_name_one_key_is_refused(sqlite_db: Database) -> None:
    key = new_key(sqlite_db, "acme")
    with sqlite_db.transaction() as session, pytest.raises(InvalidInput, match="at least"):
        revoke_key(session, key[:5])
    with sqlite_db.transaction() as session:
        assert authenticate(session, key)


def test_the_cli_lists_and_revokes(sqlite_db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERQ_DATABASE_URL", sqlite_db.url)
    key = new_key(sqlite_db, "acme")
    runner = CliRunner()

    listed = runner.invoke(app, ["keys", "list"])
    assert listed.exit_code == 0 and key[:10] in listed.output and "acme" in listed.output
    assert key not in listed.output  # never the key itself

    assert runner.invoke(app, ["keys", "revoke", key[:10]]).exit_code == 0
    again = runner.invoke(app, ["keys", "revoke", key[:10]])
    assert again.exit_code == 1 and "no active key" in again.output


def test_a_prefix_two_active_keys_share_revokes_neither_but_the_whole_key_picks_one(
    sqlite_db: Database,
) -> None:
    key = new_key(sqlite_db, "acme")
    twin = key[:10] + "another-secret"
    with sqlite_db.transaction() as session:  # a second key whose first characters collide
        tenant_id = authenticate(session, key).tenant_id
        session.add(
            ApiKey(
                tenant_id=tenant_id,
                name="acme",
                prefix=key[:10],
                key_hash=hash_key(twin),
                scopes="jobs:read",
            )
        )

    with sqlite_db.transaction() as session, pytest.raises(InvalidInput, match="2 active keys"):
        revoke_key(session, key[:10])

    with sqlite_db.transaction() as session:
        revoke_key(session, key)
    with sqlite_db.transaction() as session:
        assert authenticate(session, twin).tenant_id == tenant_id
        with pytest.raises(Unauthorized):
            authenticate(session, key)
