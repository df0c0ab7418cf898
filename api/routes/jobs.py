"""/v1/jobs: submit, read (with long-poll), list, cancel. Each route validates, calls one core
function and maps the result."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from contextlib import AsyncExitStack
from typing import Annotated

from asgi_correlation_id import correlation_id
from fastapi import APIRouter, Header, Query, Response, status
from starlette.concurrency import run_in_threadpool

from api.deps import (
    DatabaseDep,
    FinishedJobsDep,
    JobsRead,
    JobsWrite,
    ReadsDep,
    SessionDep,
    SettingsDep,
    SubmitsDep,
    WebhooksAdmin,
)
from core.db.session import Database
from core.errors import InvalidInput
from core.jobs.cancel import cancel_job
from core.jobs.finished import FinishedJobs, Watch
from core.jobs.presenters import job_out, job_summary
from core.jobs.queries import get_job, job_status, list_jobs
from core.jobs.state import TERMINAL_JOB, JobStatus
from core.jobs.submit import JobRequest, Submission
from core.telemetry.metrics import JOBS_SUBMITTED
from core.webhooks import deliveries
from schemas.jobs import JobCreate, JobOut, JobPage
from schemas.problem import PROBLEM_SCHEMA, Problem
from schemas.webhooks import WebhookOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

POLL_FIRST_SECONDS = 0.05
POLL_FAST_FOR_SECONDS = 2.0
POLL_SLOWEST_SECONDS = 0.5
POLL_LISTENING_SECONDS = 2.0

# FastAPI files a response model under application/json; problems are sent as
# application/problem+json, so that media type names the schema too (400: a body that is not
# JSON).
PROBLEMS: dict[int | str, dict[str, object]] = {
    code: {"model": Problem, "content": {"application/problem+json": PROBLEM_SCHEMA}}
    for code in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}


def _job_link(operation: str) -> dict[str, object]:
    """An OpenAPI link to ``operation`` (a JSON pointer into the paths) for the job answered."""
    return {"operationRef": f"#/paths/{operation}", "parameters": {"job_id": "$response.body#/id"}}


# Where a client (and the API fuzz test's stateful phase) can go from a submitted job.
JOB_LINKS = {
    "GetJob": _job_link("~1v1~1jobs~1%7Bjob_id%7D/get"),
    "CancelJob": _job_link("~1v1~1jobs~1%7Bjob_id%7D/delete"),
    "RedeliverWebhook": _job_link("~1v1~1jobs~1%7Bjob_id%7D~1webhook~1redeliver/post"),
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    responses={
        **PROBLEMS,
        202: {"links": JOB_LINKS},
        201: {
            "model": JobOut,
            "description": "Finished within the `Prefer: wait=N` time",
            "links": JOB_LINKS,
        },
    },
)
async def create_job(
    body: JobCreate,
    response: Response,
    database: DatabaseDep,
    settings: SettingsDep,
    caller: JobsWrite,
    finished_jobs: FinishedJobsDep,
    submits: SubmitsDep,
    reads: ReadsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    prefer: Annotated[
        str | None,
        Header(
            max_length=1024,
            description="`wait=N` (RFC 7240): hold the answer up to N seconds (at most "
            "INFERQ_MAX_WAIT_SECONDS) for the job to finish: 201 with its results if it did, "
            "else the usual 202.",
        ),
    ] = None,
) -> JobOut:
    wait = preferred_wait(prefer, settings.max_wait_seconds)
    tenant_id = caller.tenant_id
    request = JobRequest.of_tasks(
        body.tasks or [body.task or ""],
        body.inputs,
        priority=body.priority,
        webhook_url=body.webhook_url,
        metadata=body.metadata,
    )
    new_id = uuid.uuid4()
    async with AsyncExitStack() as stack:
        # With a wait, watch for the job before it exists: an announcement cannot then be
        # missed, and no status read is needed before waiting.
        watch = None
        if wait is not None and finished_jobs is not None:
            watch = await stack.enter_async_context(finished_jobs.watch(new_id))
        listening = watch is not None and watch.live
        # The transaction commits (and the outbox relays) inside _submit, before any waiting:
        # a 202 or 201 always means the job is durable.
        submitted = await submits(
            Submission(
                tenant_id,
                request,
                idempotency_key,
                correlation_id.get(),
                new_id,
                max_pending_inputs=caller.pending_limit(settings.max_pending_inputs_per_tenant),
            )
        )
        job_id = submitted.job.id
        response.headers["Location"] = f"/v1/jobs/{job_id}"
        if submitted.created:
            for task in request.tasks or (request.task,):
                JOBS_SUBMITTED.labels(task, "http").inc()
        else:
            response.headers["Idempotent-Replayed"] = "true"
        # A new job is answered from what was just written; an earlier one is read back.
        view = submitted.written
        if wait is not None:
            response.headers["Preference-Applied"] = f"wait={wait:g}"
            if submitted.job.status not in TERMINAL_JOB:
                deadline = time.monotonic() + wait
                if job_id == new_id:
                    await _long_poll(
                        database, tenant_id, job_id, deadline, watch, read_first=not listening
                    )
                else:  # an earlier job, returned for the same Idempotency-Key
                    await _wait_for(database, finished_jobs, tenant_id, job_id, wait)
                view = None
    out = job_out(view) if view is not None else await reads((tenant_id, job_id))
    if wait is not None and out.status in TERMINAL_JOB:
        response.status_code = status.HTTP_201_CREATED
    return out


def preferred_wait(prefer: str | None, most: float) -> float | None:
    """The ``wait`` preference of a ``Prefer`` header (RFC 7240), capped at ``most`` seconds;
    None when there is none. Preferences the server does not know, or cannot read, are ignored,
    as the RFC asks."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.split(";")[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        try:
            seconds = float(value.strip().strip('"'))
        except ValueError:
            return None
        if not 0 <= seconds < math.inf:  # negative, NaN or infinite: not a wait
            return None
        return min(seconds, most)
    return None


async def _wait_for(
    database: Database,
    finished_jobs: FinishedJobs | None,
    tenant_id: int,
    job_id: uuid.UUID,
    seconds: float,
) -> None:
    """Until the job is terminal or ``seconds`` have passed (see ``_long_poll``)."""
    deadline = time.monotonic() + seconds
    if finished_jobs is not None:
        async with finished_jobs.watch(job_id) as watch:
            await _long_poll(database, tenant_id, job_id, deadline, watch)
    else:
        await _long_poll(database, tenant_id, job_id, deadline, None)


@router.get("/{job_id}", response_model=JobOut, responses=PROBLEMS)
async def read_job(
    job_id: uuid.UUID,
    database: DatabaseDep,
    settings: SettingsDep,
    caller: JobsRead,
    finished_jobs: FinishedJobsDep,
    reads: ReadsDep,
    wait: Annotated[float, Query(ge=0, description="Long-poll up to this many seconds.")] = 0,
) -> JobOut:
    if wait > settings.max_wait_seconds:
        raise InvalidInput(f"wait is at most {settings.max_wait_seconds} seconds")
    if wait > 0:
        await _wait_for(database, finished_jobs, caller.tenant_id, job_id, wait)
    return await reads((caller.tenant_id, job_id))


async def _long_poll(
    database: Database,
    tenant_id: int,
    job_id: uuid.UUID,
    deadline: float,
    watch: Watch | None,
    *,
    read_first: bool = True,
) -> None:
    """Until the job is terminal or the deadline. The status read (a primary-key read) is the
    truth. With PostgreSQL's announcements the wait ends the moment the job finishes (an
    announcement is sent only by the commit that finished it, so it ends the wait without a
    read), and the status is re-read every POLL_LISTENING_SECONDS in case one was missed.
    Without them (SQLite, or the listener reconnecting): every 50 ms for the first two seconds,
    where interactive jobs finish, then backing off to every 500 ms. ``read_first=False``: the
    caller knows the job is not finished and was watching it before it could finish."""
    started = time.monotonic()
    delay = POLL_FIRST_SECONDS
    while (
        not read_first
        or await run_in_threadpool(_status, database, tenant_id, job_id) not in TERMINAL_JOB
    ):
        read_first = True
        now = time.monotonic()
        if now >= deadline:
            return
        if watch is not None and watch.live:
            if await watch.wait(min(POLL_LISTENING_SECONDS, deadline - now)):
                return
            continue
        await asyncio.sleep(min(delay, deadline - now))
        if now - started >= POLL_FAST_FOR_SECONDS:
            delay = min(delay * 2, POLL_SLOWEST_SECONDS)


def _status(database: Database, tenant_id: int, job_id: uuid.UUID) -> str:
    with database.read() as session:
        return job_status(session, tenant_id, job_id)


@router.delete("/{job_id}", response_model=JobOut, responses=PROBLEMS)
def delete_job(job_id: uuid.UUID, session: SessionDep, caller: JobsWrite) -> JobOut:
    cancel_job(session, caller.tenant_id, job_id, actor=caller.actor)
    return job_out(get_job(session, caller.tenant_id, job_id))


@router.post(
    "/{job_id}/webhook/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WebhookOut,
    responses=PROBLEMS,
)
def redeliver_webhook(job_id: uuid.UUID, session: SessionDep, caller: WebhooksAdmin) -> WebhookOut:
    """Send a finished job's event again: a new series of attempts, the same webhook-id."""
    return deliveries.delivery_out(deliveries.redeliver(session, caller.tenant_id, job_id))


@router.get("", response_model=JobPage, responses=PROBLEMS)
def list_my_jobs(
    database: DatabaseDep,
    caller: JobsRead,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobPage:
    with database.read() as session:
        jobs, next_cursor = list_jobs(
            session, caller.tenant_id, status=job_status, limit=limit, cursor=cursor
        )
        return JobPage(data=[job_summary(job) for job in jobs], next_cursor=next_cursor)
