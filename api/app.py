"""The FastAPI app factory. Engines and clients are created in the lifespan, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import structlog
from asgi_correlation_id import CorrelationIdMiddleware, correlation_id
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api import errors, grouped
from api.middleware import BodySizeLimit, ResponseHeaders
from api.routes import batches, health, jobs, models, webhooks
from core.broker import get_celery
from core.config import Settings, get_settings
from core.db.session import Database
from core.inference.circuit import CircuitPolicy, Circuits
from core.jobs.finished import FinishedJobs
from core.security.authn import Authenticator
from core.security.ratelimit import RateLimiter
from core.security.tokens import TokenVerifier
from core.telemetry.logging import configure_logging

log = structlog.get_logger(__name__)

CORS_REQUEST_HEADERS = [
    "Authorization",
    "X-API-Key",
    "Content-Type",
    "Idempotency-Key",
    "Prefer",
    "X-Request-ID",
]
CORS_EXPOSED_HEADERS = [
    "RateLimit",
    "RateLimit-Policy",
    "Retry-After",
    "Location",
    "X-Request-ID",
    "Idempotent-Replayed",
    "Inferq-Results-Complete",
    "Inferq-Batch-Status",
]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_format, extra=[_request_id])
        app.state.settings = settings
        app.state.database = Database(settings.resolved_database_url)
        app.state.submits = grouped.submits(app.state.database, settings)
        app.state.reads = grouped.reads(app.state.database)
        app.state.authenticator = Authenticator(
            app.state.database,
            settings.api_key_cache_seconds,
            TokenVerifier.from_settings(settings),
        )
        app.state.rate_limiter = RateLimiter(
            settings.rate_limits, settings.resolved_rate_limit_storage_url
        )
        app.state.celery = get_celery()
        app.state.circuits = Circuits(
            CircuitPolicy.from_settings(settings), settings.resolved_cache_url
        )
        app.state.finished_jobs = None
        if not app.state.database.is_sqlite:
            app.state.finished_jobs = FinishedJobs(settings.resolved_database_url)
            app.state.finished_jobs.start()
        log.info(
            "api_started",
            embedded=settings.embedded,
            keys_required=settings.api_keys_required,
            jwt=app.state.authenticator.tokens is not None,
            rate_limits=settings.rate_limits or "none",
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
    app.add_middleware(ResponseHeaders)
    if settings.cors_origin_list:
        # Outermost, so preflights are answered before anything else looks at them. Without
        # INFERQ_CORS_ORIGINS there is no CORS middleware at all: browsers get no
        # Access-Control-Allow-Origin, so other origins' scripts cannot read responses.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_EXPOSED_HEADERS,
            max_age=600,
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
