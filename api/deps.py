"""Request-scoped dependencies: the unit of work (the route boundary commits) and the tenant."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.grouped import Grouped
from core.config import Settings
from core.db.session import Database
from core.jobs.finished import FinishedJobs
from core.jobs.submit import Submission, Submitted
from core.security import KeyCache, local_tenant_id
from schemas.jobs import JobOut


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


def get_tenant(
    request: Request,
    database: Annotated[Database, Depends(get_database)],
    settings: Annotated[Settings, Depends(get_settings)],
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> int:
    presented = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        presented = authorization[7:].strip()
    if presented is None and not settings.api_keys_required:
        # Its own short transaction, so a long-poll does not hold a connection while it waits.
        with database.transaction() as session:
            return local_tenant_id(session)
    keys: KeyCache = request.app.state.api_keys
    return keys.tenant_id(database, presented)


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
TenantDep = Annotated[int, Depends(get_tenant)]
FinishedJobsDep = Annotated[FinishedJobs | None, Depends(get_finished_jobs)]
SubmitsDep = Annotated[Grouped[Submission, Submitted], Depends(get_submits)]
ReadsDep = Annotated[Grouped[tuple[int, uuid.UUID], JobOut], Depends(get_reads)]
