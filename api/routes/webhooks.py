"""/v1/webhooks/secret: the caller's Standard Webhooks signing secret, and its rotation."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SessionDep, SettingsDep, WebhooksAdmin
from api.routes.jobs import PROBLEMS
from core.webhooks.signing import SecretBox, current_secret, rotate_secret
from schemas.webhooks import WebhookSecretOut

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.get("/secret", response_model=WebhookSecretOut, responses=PROBLEMS)
def read_secret(
    session: SessionDep, settings: SettingsDep, caller: WebhooksAdmin
) -> WebhookSecretOut:
    """The secret that signs your webhooks (made on first use): verify deliveries with it."""
    box = SecretBox.from_settings(settings)
    return WebhookSecretOut(secret=current_secret(session, box, caller.tenant_id))


@router.post("/secret/rotate", response_model=WebhookSecretOut, responses=PROBLEMS)
def rotate(session: SessionDep, settings: SettingsDep, caller: WebhooksAdmin) -> WebhookSecretOut:
    """A new secret. For 24 hours deliveries carry signatures by both the new and the old one."""
    box = SecretBox.from_settings(settings)
    secret = rotate_secret(session, box, caller.tenant_id, actor=caller.actor)
    return WebhookSecretOut(secret=secret)
