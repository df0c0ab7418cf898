"""Liveness, readiness (database and broker reachable) and Prometheus metrics."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from sqlalchemy import text

from api.deps import DatabaseDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, database: DatabaseDep) -> JSONResponse:
    checks: dict[str, Any] = {
        "database": _check_database(database),
        "broker": _check_broker(request),
    }
    ready = all(check == "ok" for check in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


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
def metrics() -> Response:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # one API process: its own registry
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
    # `inferq serve --workers N`: every process's samples, added up.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
