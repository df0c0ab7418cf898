"""Bulk files: read JSONL, CSV or plain text, submit the texts as jobs, write results in order.

Every text goes through ``core.jobs.submit_job`` like an HTTP request; a line that fails
validation is reported in the output with its reason instead of stopping the run.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select

from core.config import Settings
from core.db.models import JobItem
from core.db.session import Database
from core.errors import InvalidInput
from core.jobs.queries import get_job
from core.jobs.state import TERMINAL_ITEM
from core.jobs.submit import JobRequest, submit_job
from core.jobs.validation import check_text


@dataclass(frozen=True)
class Record:
    id: str
    text: str | None
    error: str | None = None


@dataclass(frozen=True)
class SubmittedFile:
    jobs: list[uuid.UUID]
    records: list[Record]


def read_records(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as handle:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            yield from _jsonl(handle)
        elif path.suffix.lower() == ".csv":
            yield from _csv(handle)
        else:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield Record(str(number), line.rstrip("\r\n"))


def _jsonl(handle: IO[str]) -> Iterator[Record]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Record(str(number), None, f"line {number} is not JSON: {exc.msg}")
            continue
        if not isinstance(row, dict) or "text" not in row:
            yield Record(str(number), None, f"line {number} has no 'text' field")
            continue
        yield Record(str(row.get("id", number)), row["text"])


def _csv(handle: IO[str]) -> Iterator[Record]:
    reader = csv.DictReader(handle)
    if reader.fieldnames is None or "text" not in reader.fieldnames:
        raise InvalidInput("the CSV file needs a header row with a 'text' column")
    for number, row in enumerate(reader, start=2):
        yield Record(str(row.get("id") or number), row["text"])


def validated(records: Iterator[Record], settings: Settings) -> Iterator[Record]:
    for record in records:
        if record.error is not None:
            yield record
            continue
        try:
            check_text(record.text, max_chars=settings.max_text_chars, where=f"input {record.id}")
        except InvalidInput as exc:
            yield Record(record.id, None, exc.detail)
            continue
        yield record


def submit_file(
    database: Database, settings: Settings, path: Path, *, task: str, tenant_id: int
) -> SubmittedFile:
    records = list(validated(read_records(path), settings))
    runnable = [record for record in records if record.error is None]
    jobs: list[uuid.UUID] = []
    size = settings.max_inputs_per_job
    for chunk in (runnable[i : i + size] for i in range(0, len(runnable), size)):
        with database.transaction() as session:
            request = JobRequest(
                task,
                [record.text or "" for record in chunk],
                priority="bulk",
                metadata={"source": path.name},
            )
            jobs.append(submit_job(session, settings, tenant_id=tenant_id, request=request).job.id)
    return SubmittedFile(jobs, records)


def finished_items(database: Database, jobs: list[uuid.UUID]) -> int:
    with database.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(JobItem)
                .where(JobItem.job_id.in_(jobs), JobItem.status.in_(list(TERMINAL_ITEM)))
            )
            or 0
        )


def write_results(
    database: Database, tenant_id: int, submitted: SubmittedFile, output: IO[str]
) -> dict[str, int]:
    """Write one JSON line per input record, in input order; return counts by tier/outcome."""
    tally: dict[str, int] = {}
    lines = iter(_result_lines(database, tenant_id, submitted.jobs))
    for record in submitted.records:
        row = (
            {"id": record.id, "error": record.error}
            if record.error
            else next(lines) | {"id": record.id}
        )
        key = row.get("tier") or "failed"
        tally[str(key)] = tally.get(str(key), 0) + 1
        output.write(json.dumps(row, ensure_ascii=False) + "\n")
    return tally


TASK_OUTPUTS = ("scores", "embedding")


def _result_lines(
    database: Database, tenant_id: int, jobs: list[uuid.UUID]
) -> Iterator[dict[str, Any]]:
    for job_id in jobs:
        with database.read() as session:
            view = get_job(session, tenant_id, job_id)
            for item in view.items:
                if item.result is None:
                    yield {"error": item.error or f"item is {item.status}"}
                    continue
                # The task's own output (scores or embedding) only where the task has one.
                fields = item.result.model_dump(exclude={"index"})
                yield {k: v for k, v in fields.items() if v is not None or k not in TASK_OUTPUTS}
