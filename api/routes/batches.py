"""/v1/batches: bulk work in the OpenAI Batch API's shape. The NDJSON body streams into
PostgreSQL (core.jobs.batch_writer.BatchWriter) a window at a time; results stream back in input
order."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Literal

import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import IntegrityError

from api.deps import BatchesRead, BatchesWrite, DatabaseDep, SessionDep, SettingsDep
from core.config import Settings
from core.db.session import Database
from core.errors import (
    IdempotencyConflict,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from core.jobs import batches
from core.jobs.batch_input import ndjson_lines
from core.jobs.batch_results import batch_out, iter_results
from core.jobs.batch_writer import batch_writer, content_hash
from core.jobs.state import TERMINAL_BATCH
from core.security.scopes import Principal
from core.telemetry.metrics import JOBS_SUBMITTED
from schemas.batches import BatchOut, BatchPage
from schemas.problem import PROBLEM_SCHEMA, Problem

router = APIRouter(prefix="/v1/batches", tags=["batches"])

NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
PROBLEMS: dict[int | str, dict[str, object]] = {
    code: {"model": Problem, "content": {"application/problem+json": PROBLEM_SCHEMA}}
    for code in (400, 401, 403, 404, 409, 413, 415, 422, 429, 503)
}
NDJSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-ndjson": {
                "schema": {"type": "string", "description": 'One {"id"?, "text"} per line.'},
                "example": '{"id": "r1", "text": "a warm and funny film"}\n{"text": "a mess"}\n',
            }
        },
    }
}


def _batch_link(operation: str) -> dict[str, object]:
    """An OpenAPI link to ``operation`` (a JSON pointer into the paths) for the batch answered."""
    return {
        "operationRef": f"#/paths/{operation}",
        "parameters": {"batch_id": "$response.body#/id"},
    }


# Where a client (and the API fuzz test's stateful phase) can go from an uploaded batch.
BATCH_LINKS = {
    "GetBatch": _batch_link("~1v1~1batches~1%7Bbatch_id%7D/get"),
    "CancelBatch": _batch_link("~1v1~1batches~1%7Bbatch_id%7D~1cancel/post"),
    "GetBatchResults": _batch_link("~1v1~1batches~1%7Bbatch_id%7D~1results/get"),
}


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=BatchOut,
    responses={**PROBLEMS, 202: {"links": BATCH_LINKS}},
    openapi_extra=NDJSON_BODY,
)
async def create_batch(
    request: Request,
    response: Response,
    database: DatabaseDep,
    settings: SettingsDep,
    caller: BatchesWrite,
    task: Annotated[
        str,
        Query(
            max_length=64,
            description="Registered task name, or several joined by commas "
            "(`sentiment,langid`): each line then runs every task.",
        ),
    ],
    completion_window: Annotated[
        str | None, Query(max_length=16, description="e.g. 24h (the default), 30m, 7d")
    ] = None,
    webhook_url: Annotated[str | None, Query(max_length=2048)] = None,
    priority: Literal["interactive", "bulk"] = "bulk",
    metadata: Annotated[
        str | None,
        Query(max_length=4096, description='A JSON object echoed back, e.g. {"source": "crm"}'),
    ] = None,
    content_type: Annotated[str | None, Header(max_length=256)] = None,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> BatchOut:
    """Upload up to INFERQ_MAX_BATCH_LINES lines of NDJSON, one ``{"id"?, "text"}`` a line
    (``id`` defaults to the line number). A line that cannot run is counted failed with its
    reason; the batch goes on.

    ``?task=a,b`` asks several tasks of each line (each name a registered task, none twice):
    the batch then has ``tasks``, counts over (line, task) pairs, and its results give each
    line once every task has finished it, as ``{"id", "tasks": {name: {"result"} |
    {"line", "error"}}}``."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in NDJSON_TYPES:
        raise UnsupportedMediaType(
            f"send the lines as application/x-ndjson, not {media or 'no Content-Type'}"
        )
    spec = batches.BatchRequest.of_tasks(
        [name.strip() for name in task.split(",")],
        priority=priority,
        completion_window=completion_window,
        webhook_url=webhook_url,
        metadata=_json_object(metadata),
        idempotency_key=idempotency_key,
    )
    chunks = _body_chunks(request.stream(), settings.max_batch_body_bytes)
    out, replayed = await anyio.to_thread.run_sync(
        _write_batch, database, settings, caller, spec, chunks
    )
    response.headers["Location"] = f"/v1/batches/{out.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        tasks = spec.tasks or (spec.task,)
        for name in tasks:
            JOBS_SUBMITTED.labels(name, "batch").inc(out.request_counts.total // len(tasks))
    return out


def _json_object(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"metadata is not JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise InvalidInput("metadata must be a JSON object")
    return value


def _body_chunks(stream: AsyncIterator[bytes], most: int) -> Iterator[bytes]:
    """The request body, pulled from the event loop by the thread that writes the batch."""
    iterator = stream.__aiter__()

    async def pull() -> bytes | None:
        try:
            return await iterator.__anext__()
        except StopAsyncIteration:
            return None

    seen = 0
    while (chunk := anyio.from_thread.run(pull)) is not None:
        seen += len(chunk)
        if seen > most:
            raise PayloadTooLarge(
                f"the batch body is over {most} bytes (INFERQ_MAX_BATCH_BODY_BYTES)"
            )
        if chunk:
            yield chunk


def _write_batch(
    database: Database,
    settings: Settings,
    caller: Principal,
    spec: batches.BatchRequest,
    chunks: Iterator[bytes],
) -> tuple[BatchOut, bool]:
    """One transaction: the batch is there whole, in progress, or not at all (past the
    tenant's quota of pending inputs: not at all, 429)."""
    tenant_id = caller.tenant_id
    lines = ndjson_lines(chunks, settings)
    try:
        with database.transaction() as session:
            earlier = None
            if spec.idempotency_key is not None:
                earlier = batches.find_by_key(session, tenant_id, spec.idempotency_key)
            if earlier is not None:
                if content_hash(lines) != earlier.content_hash:
                    raise _conflict()
                return batch_out(earlier, settings.public_url), True
            batch = batches.open_batch(session, settings, tenant_id, spec)
            quota = caller.pending_limit(settings.max_pending_inputs_per_tenant)
            writer = batch_writer(session, settings, batch, max_pending_inputs=quota)
            writer.add_all(lines)
            writer.finish()
            out = batch_out(batch, settings.public_url)
    except IntegrityError:  # a concurrent upload with the same key committed first
        if spec.idempotency_key is None:
            raise
        with database.read() as session:
            earlier = batches.find_by_key(session, tenant_id, spec.idempotency_key)
            if earlier is None:
                raise
            return batch_out(earlier, settings.public_url), True
    return out, False


def _conflict() -> IdempotencyConflict:
    return IdempotencyConflict(
        "this Idempotency-Key was already used with a different batch body; "
        "use a new key for a different batch"
    )


@router.get("", response_model=BatchPage, responses=PROBLEMS)
def list_my_batches(
    database: DatabaseDep,
    settings: SettingsDep,
    caller: BatchesRead,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> BatchPage:
    """The caller's batches, newest first."""
    with database.read() as session:
        found, next_cursor = batches.list_batches(
            session, caller.tenant_id, limit=limit, cursor=cursor
        )
        return BatchPage(
            data=[batch_out(b, settings.public_url) for b in found],
            next_cursor=next_cursor,
        )


@router.get("/{batch_id}", response_model=BatchOut, responses=PROBLEMS)
def read_batch(
    batch_id: uuid.UUID, database: DatabaseDep, settings: SettingsDep, caller: BatchesRead
) -> BatchOut:
    with database.read() as session:
        return batch_out(
            batches.get_batch(session, caller.tenant_id, batch_id), settings.public_url
        )


@router.post("/{batch_id}/cancel", response_model=BatchOut, responses=PROBLEMS)
def cancel_batch(
    batch_id: uuid.UUID, session: SessionDep, settings: SettingsDep, caller: BatchesWrite
) -> BatchOut:
    """Lines that have not run are cancelled; lines running now finish and keep their result
    (``cancelling`` until they have, then ``cancelled``)."""
    return batch_out(
        batches.cancel_batch(session, caller.tenant_id, batch_id, actor=caller.actor),
        settings.public_url,
    )


@router.get(
    "/{batch_id}/results",
    responses={
        **PROBLEMS,
        200: {
            "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
            "description": 'One line per finished input in input order: {"id", "result"} or '
            '{"id", "line", "error": {"code", "message"}}; in a batch of several tasks, '
            '{"id", "tasks": {name: {"result"} | {"line", "error"}}} once every task has '
            "finished the line (only=errors: an error in any task). Inferq-Results-Complete "
            "says whether every line had finished when the stream began.",
        },
    },
    response_class=StreamingResponse,
)
def batch_results(
    batch_id: uuid.UUID,
    database: DatabaseDep,
    caller: BatchesRead,
    only: Annotated[Literal["all", "errors"], Query(description="errors: the error file")] = "all",
) -> StreamingResponse:
    with database.read() as session:
        batch = batches.get_batch(session, caller.tenant_id, batch_id)
        complete = batch.status in TERMINAL_BATCH
        batch_status = batch.status
    lines = iter_results(database, batch_id, only_errors=only == "errors")
    return StreamingResponse(
        _ndjson(lines),
        media_type="application/x-ndjson",
        headers={
            "Inferq-Batch-Status": batch_status,
            "Inferq-Results-Complete": "true" if complete else "false",
        },
    )


def _ndjson(lines: Iterator[dict[str, object]]) -> Iterator[bytes]:
    buffer: list[str] = []
    for line in lines:
        buffer.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
        if len(buffer) >= 500:
            yield ("\n".join(buffer) + "\n").encode()
            buffer.clear()
    if buffer:
        yield ("\n".join(buffer) + "\n").encode()
