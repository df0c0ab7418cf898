"""Tenants' signing secrets and the signatures a delivery carries (Standard Webhooks).

A secret is ``whsec_`` + base64 of 32 random bytes. It is stored encrypted with AES-GCM under a
key derived from ``INFERQ_SECRET_KEY`` (embedded mode generates and keeps one under the data
directory), bound to its tenant so a row copied to another tenant does not decrypt. After a
rotation the retired secret keeps signing for a day, so every delivery then carries two
``v1,...`` signatures and receivers can roll over.
"""

from __future__ import annotations

import base64
import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import Select, select
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from core.config import Settings
from core.db.models import Tenant, WebhookSecret, utcnow
from core.errors import NotConfigured
from core.security import audit

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32
ROLLOVER = timedelta(hours=24)
_NONCE_BYTES = 12
_KEY_FILE = "secret.key"


class SecretBox:
    """AES-GCM encryption of stored secrets; each ciphertext is bound to its tenant."""

    def __init__(self, passphrase: str) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"inferq secret box v1"
        ).derive(passphrase.encode())
        self._aead = AESGCM(key)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        if settings.secret_key:
            return cls(settings.secret_key)
        if settings.embedded:
            return cls(_embedded_key(settings.data_dir))
        raise NotConfigured(
            "INFERQ_SECRET_KEY is not set: every API and worker process needs the same key to "
            "store and read webhook signing secrets"
        )

    def encrypt(self, plaintext: str, tenant_id: int) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), _aad(tenant_id))
        return base64.b64encode(nonce + sealed).decode()

    def decrypt(self, token: str, tenant_id: int) -> str:
        raw = base64.b64decode(token)
        try:
            opened = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(tenant_id))
        except InvalidTag as exc:
            raise NotConfigured(
                "a stored webhook secret does not decrypt: INFERQ_SECRET_KEY differs from the "
                "key it was stored with"
            ) from exc
        return opened.decode()


def _aad(tenant_id: int) -> bytes:
    return f"webhook-secret:{tenant_id}".encode()


def _embedded_key(data_dir: Path) -> str:
    """Embedded mode's key: made once, readable by this user only, kept beside the database."""
    path = data_dir / _KEY_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def current_secret(session: Session, box: SecretBox, tenant_id: int) -> str:
    """The tenant's signing secret, made on first use."""
    row = _current_row(session, tenant_id)
    if row is None:
        # Lock the tenant so two first requests do not both make a "current" secret.
        session.get(Tenant, tenant_id, with_for_update=True)
        row = _current_row(session, tenant_id) or _add_secret(session, box, tenant_id)
    return box.decrypt(row.ciphertext, tenant_id)


def rotate_secret(session: Session, box: SecretBox, tenant_id: int, actor: str = "system") -> str:
    """A new signing secret; the one it replaces keeps signing for ``ROLLOVER``."""
    session.get(Tenant, tenant_id, with_for_update=True)
    now = utcnow()
    for row in session.scalars(_unretired(tenant_id)):
        row.retired_at = now
    audit.record(session, actor, "webhook_secret.rotated", tenant_id)
    return box.decrypt(_add_secret(session, box, tenant_id).ciphertext, tenant_id)


def signing_secrets(session: Session, box: SecretBox, tenant_id: int) -> list[str]:
    """What signs a delivery now: the current secret first, then any retired within a day."""
    current = current_secret(session, box, tenant_id)
    since = utcnow() - ROLLOVER
    retired = session.scalars(
        select(WebhookSecret)
        .where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.retired_at > since)
        .order_by(WebhookSecret.created_at.desc())
    )
    return [current, *(box.decrypt(row.ciphertext, tenant_id) for row in retired)]


def signature_header(secrets_: list[str], event_id: str, timestamp: datetime, body: str) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` per secret, space-separated."""
    return " ".join(Webhook(secret).sign(event_id, timestamp, body) for secret in secrets_)


def _current_row(session: Session, tenant_id: int) -> WebhookSecret | None:
    return session.scalars(_unretired(tenant_id).order_by(WebhookSecret.id.desc())).first()


def _unretired(tenant_id: int) -> Select[WebhookSecret]:
    return select(WebhookSecret).where(
        WebhookSecret.tenant_id == tenant_id, WebhookSecret.retired_at.is_(None)
    )


def _add_secret(session: Session, box: SecretBox, tenant_id: int) -> WebhookSecret:
    row = WebhookSecret(tenant_id=tenant_id, ciphertext=box.encrypt(new_secret(), tenant_id))
    session.add(row)
    session.flush()
    return row
