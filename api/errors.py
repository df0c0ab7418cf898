"""One place that turns every error into an RFC 9457 application/problem+json response."""

from __future__ import annotations

from typing import Any

import psycopg
import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import InferqError, ServiceUnavailable

PROBLEM_JSON = "application/problem+json"
log = structlog.get_logger(__name__)

# How long a client told 503 should wait: about what a PostgreSQL restart or failover takes.
DATABASE_RETRY_AFTER_SECONDS = 5
# SQLSTATE classes and codes of a database that cannot be reached or is going away: connection
# exceptions, shutting down or starting up, out of connections. Anything else (a constraint, a
# deadlock) is a bug or a conflict, not an outage.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53")
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def problem(
    status: int,
    title: str,
    detail: str | None,
    request: Request,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": f"https://inferq.dev/problems/{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse(
        jsonable_encoder(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def _describe(error: dict[str, Any]) -> dict[str, Any]:
    location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
    return {
        "field": location or "body",
        "message": error.get("msg", "invalid"),
        "type": error.get("type"),
    }


async def _inferq_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InferqError)
    return problem(exc.status, exc.title, exc.detail, request, headers=exc.headers, **exc.extra)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [_describe(error) for error in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
    return problem(422, "Invalid request", detail, request, errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = {
        400: "Bad request",
        404: "Not found",
        405: "Method not allowed",
        413: "Payload too large",
        415: "Unsupported media type",
    }.get(exc.status_code, "Error")
    headers = dict(exc.headers) if exc.headers else None  # e.g. Allow on a 405
    return problem(exc.status_code, title, str(exc.detail), request, headers=headers)


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (down, restarting, out of
    connections) rather than that a statement was wrong."""
    if isinstance(exc, sa.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(exc, sa.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa.InterfaceError):
            return True
        if not isinstance(exc, sa.OperationalError):
            return False
        exc = exc.orig if exc.orig is not None else exc
    if isinstance(exc, psycopg.InterfaceError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    sqlstate = exc.sqlstate  # None: refused, reset or closed before the server said why
    return (
        sqlstate is None
        or sqlstate.startswith(_UNAVAILABLE_SQLSTATE_CLASSES)
        or sqlstate in _UNAVAILABLE_SQLSTATES
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not database_unreachable(exc):
        return await _unexpected(request, exc)
    log.warning("database_unavailable", path=request.url.path, error=str(exc).splitlines()[0])
    unavailable = ServiceUnavailable("the database cannot be reached; try again shortly")
    retry_after = {"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)}
    return problem(
        unavailable.status, unavailable.title, unavailable.detail, request, headers=retry_after
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error", path=request.url.path)
    return problem(
        500, "Internal error", "an unexpected error occurred; it has been logged", request
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(InferqError, _inferq_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for database_error in (sa.DBAPIError, sa.TimeoutError, psycopg.Error):
        app.add_exception_handler(database_error, _database_error)
    app.add_exception_handler(Exception, _unexpected)
