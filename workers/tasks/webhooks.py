"""Webhook tasks: one delivery attempt (``webhooks`` queue) and the periodic dispatcher (beat,
``maintenance`` queue), thin wrappers around ``core.webhooks``."""

from __future__ import annotations

from core.broker import DELIVER_WEBHOOK, DISPATCH_WEBHOOKS
from core.webhooks import deliveries, send
from workers import runtime
from workers.app import celery_app


@celery_app.task(name=DELIVER_WEBHOOK)  # type: ignore[untyped-decorator]
def deliver_webhook(delivery_id: int) -> str | None:
    return send.deliver(runtime.database(), runtime.settings(), delivery_id)


@celery_app.task(name=DISPATCH_WEBHOOKS)  # type: ignore[untyped-decorator]
def dispatch_webhooks() -> int:
    with runtime.database().transaction() as session:
        return deliveries.dispatch_due(session, runtime.settings())
