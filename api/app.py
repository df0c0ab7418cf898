"""The FastAPI app factory. Engines and clients are created in the lifespan, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import structlog
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from fastapi import FastAPI

from api import errors, grouped
from api.middleware import BodySizeLimit
from api.routes import batches, health, jobs, models, webhooks
from core.broker import get_celery
from core.config import Settings, get_settings
from core.db.session import Database
from core.inference.circuit import CircuitPolicy, Circuits
from core.jobs.finished import FinishedJobs
from core.security import KeyCache
from core.telemetry.logging import configure_logging

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_format, extra=[_request_id])
        app.state.settings = settings
        app.state.database = Database(settings.resolved_database_url)
        app.state.submits = grouped.submits(app.state.database, settings)
        app.state.reads = grouped.reads(app.state.database)
        app.state.api_keys = KeyCache(settings.api_key_cache_seconds)
        app.state.celery = get_celery()
        app.state.circuits = Circuits(
            CircuitPolicy.from_settings(settings), settings.resolved_cache_url
        )
        app.state.finished_jobs = None
        if not app.state.database.is_sqlite:
            app.state.finished_jobs = FinishedJobs(settings.resolved_database_url)
            app.state.finished_jobs.start()
        log.info(
            "api_started", embedded=settings.embedded, keys_required=settings.api_keys_required
        )
        yield
        if app.state.finished_jobs is not None:
            await app.state.finished_jobs.stop()
        app.state.database.dispose()

    app = FastAPI(
        title="inferq",
        version="1",
        summary="Queue-driven NLP inference: submit texts, poll or get a webhook for results.",
        lifespan=lifespan,
    )
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(batches.router)
    app.include_router(webhooks.router)
    app.include_router(models.router)
    app.include_router(health.router)

    app.add_middleware(CorrelationIdMiddleware, validator=None)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        limits={"/v1/batches": settings.max_batch_body_bytes},
    )
    return app


def _request_id(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: stamp every log line of a request with its X-Request-ID."""
    request_id = correlation_id.get()
    if request_id:
        event.setdefault("request_id", request_id)
    return event
