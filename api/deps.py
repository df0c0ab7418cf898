"""Request-scoped dependencies: the unit of work (the route boundary commits), and the caller:
authenticated, holding the route's scope, within its tenant's rate limit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.grouped import Grouped
from core.config import Settings
from core.db.session import Database
from core.errors import Forbidden, RateLimited, Unauthorized
from core.jobs.finished import FinishedJobs
from core.jobs.submit import Submission, Submitted
from core.security.authn import Authenticator
from core.security.keys import local_principal
from core.security.ratelimit import RateLimiter
from core.security.scopes import Principal
from core.telemetry.metrics import AUTH_FAILURES
from schemas.jobs import JobOut

MAX_CREDENTIAL_CHARS = 8192


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_finished_jobs(request: Request) -> FinishedJobs | None:
    finished: FinishedJobs | None = request.app.state.finished_jobs
    return finished


def get_submits(request: Request) -> Grouped[Submission, Submitted]:
    submits: Grouped[Submission, Submitted] = request.app.state.submits
    return submits


def get_reads(request: Request) -> Grouped[tuple[int, uuid.UUID], JobOut]:
    reads: Grouped[tuple[int, uuid.UUID], JobOut] = request.app.state.reads
    return reads


def get_session(database: Annotated[Database, Depends(get_database)]) -> Iterator[Session]:
    # Used with scope="function": the commit happens when the route returns, before the response
    # is sent, so a 202 always means the job is durable (the default scope commits afterwards).
    with database.transaction() as session:
        yield session


bearer = HTTPBearer(
    auto_error=False, description="An API key (iq_...) or a JWT from your identity provider."
)
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")


def get_principal(
    request: Request,
    database: Annotated[Database, Depends(get_database)],
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    x_api_key: Annotated[str | None, Depends(api_key_header)],
) -> Principal:
    presented = credentials.credentials.strip() if credentials else x_api_key
    if presented is None and not settings.api_keys_required:
        # Its own short transaction, so a long-poll does not hold a connection while it waits.
        with database.transaction() as session:
            return local_principal(session)
    if presented is not None and len(presented) > MAX_CREDENTIAL_CHARS:
        raise Unauthorized(f"the credential is over {MAX_CREDENTIAL_CHARS} characters")
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.principal(presented)


class Requires:
    """The caller, who must hold ``scope`` (403 naming it), and one request counted against
    the tenant's rate limit for that route class (429 past it). The rate limit fields go on
    the response, allowed or not (api.middleware.ResponseHeaders sends them)."""

    def __init__(self, scope: str) -> None:
        self.scope = scope

    def __call__(
        self, request: Request, principal: Annotated[Principal, Depends(get_principal)]
    ) -> Principal:
        if not principal.allows(self.scope):
            AUTH_FAILURES.labels("missing_scope").inc()
            held = ", ".join(sorted(principal.scopes)) or "none"
            raise Forbidden(
                f"this needs the {self.scope!r} scope; these credentials have {held}",
                missing_scope=self.scope,
            )
        limiter: RateLimiter = request.app.state.rate_limiter
        decision = limiter.check(principal.tenant_id, self.scope, principal.rate_limits)
        if decision is not None:
            request.state.rate_limit_headers = decision.headers
            if not decision.allowed:
                raise RateLimited(
                    f"over the {self.scope} rate limit ({decision.headers['RateLimit-Policy']}); "
                    f"retry in {decision.retry_after} s",
                    headers={"Retry-After": str(decision.retry_after)},
                )
        return principal


def requires(scope: str) -> Any:
    """``Annotated[Principal, requires("jobs:write")]``: the scope also goes into the OpenAPI
    security requirement of the operation."""
    return Security(Requires(scope), scopes=[scope])


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
JobsWrite = Annotated[Principal, requires("jobs:write")]
JobsRead = Annotated[Principal, requires("jobs:read")]
BatchesWrite = Annotated[Principal, requires("batches:write")]
BatchesRead = Annotated[Principal, requires("batches:read")]
ModelsRead = Annotated[Principal, requires("models:read")]
WebhooksAdmin = Annotated[Principal, requires("webhooks:admin")]
FinishedJobsDep = Annotated[FinishedJobs | None, Depends(get_finished_jobs)]
SubmitsDep = Annotated[Grouped[Submission, Submitted], Depends(get_submits)]
ReadsDep = Annotated[Grouped[tuple[int, uuid.UUID], JobOut], Depends(get_reads)]
