"""Liveness, readiness (database and broker reachable; tiers some worker cannot load reported as
degraded, still ready: the chain serves without them) and Prometheus metrics.

These need no credentials: probes and scrapers hold none. They say nothing about any tenant;
keep /metrics on the cluster network (the Kubernetes manifests do not expose it through the
ingress)."""

from __future__ import annotations

import os
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from sqlalchemy import text

from api.deps import DatabaseDep
from core.broker import QUEUES, all_queues
from core.inference.availability import TierReports, describe
from core.inference.registry import all_tasks
from core.rollout.report import RolloutCollector
from core.telemetry.backlog import BacklogCollector
from core.telemetry.drift import collector_for as drift_collector

log = structlog.get_logger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready: the database or the broker cannot be reached"}},
)
def readyz(request: Request, database: DatabaseDep) -> JSONResponse:
    checks: dict[str, Any] = {
        "database": _check_database(database),
        "broker": _check_broker(request),
    }
    ready = all(check == "ok" for check in checks.values())
    tiers = _unavailable_tiers(request) if ready else {}
    status = ("degraded" if tiers else "ready") if ready else "unavailable"
    return JSONResponse(
        {"status": status, "checks": checks, "tiers": tiers},
        status_code=200 if ready else 503,
    )


def _unavailable_tiers(request: Request) -> dict[str, str]:
    """ "task:tier" -> why, for the tiers some worker reports it cannot load."""
    reports = TierReports(request.app.state.settings.resolved_cache_url)
    pairs = [(spec.name, tier.tier) for spec in all_tasks().values() for tier in spec.chain]
    try:
        down = reports.unavailable(pairs)
    except Exception as exc:  # readiness is about serving: an unreadable report is not a 503
        log.warning("tier_reports_unreadable", error=repr(exc))
        return {}
    return {f"{task}:{tier}": describe(errors) for (task, tier), errors in down.items()}


def _check_database(database: Any) -> str:
    try:
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # readiness reports the failure instead of raising it
        return f"error: {exc.__class__.__name__}"
    return "ok"


def _check_broker(request: Request) -> str:
    try:
        with request.app.state.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # readiness reports the failure instead of raising it
        return f"error: {exc.__class__.__name__}"
    return "ok"


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    # The backlog is computed once by the process answering the scrape, in a registry of its
    # own: never one copy per process added up.
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_backlog_collector(request))
    scrape.register(drift_collector(request.app.state))
    scrape.register(_rollout_collector(request))
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # one API process: its own registry
        # The backlog first: a failure it counts shows in this very scrape.
        body = generate_latest(scrape) + generate_latest()
        return Response(body, media_type=CONTENT_TYPE_LATEST)
    # `inferq serve --workers N`: every process's samples, added up.
    multiprocess.MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
    return Response(generate_latest(scrape), media_type=CONTENT_TYPE_LATEST)


def _rollout_collector(request: Request) -> RolloutCollector:
    state = request.app.state
    collector: RolloutCollector | None = getattr(state, "rollout_collector", None)
    if collector is None:
        collector = state.rollout_collector = RolloutCollector(state.database)
    return collector


def _backlog_collector(request: Request) -> BacklogCollector:
    """This process's collector (it keeps the finishing rate between scrapes)."""
    state = request.app.state
    collector: BacklogCollector | None = getattr(state, "backlog_collector", None)
    if collector is None:
        settings = state.settings
        collector = BacklogCollector(
            state.database,
            redis_url=settings.broker_url if settings.broker_url.startswith("redis") else None,
            queues=all_queues(settings),
            tasks=all_tasks,
            priorities=QUEUES,
            cache_seconds=settings.backlog_cache_seconds,
            rate_window_seconds=settings.backlog_rate_window_seconds,
        )
        state.backlog_collector = collector
    return collector
