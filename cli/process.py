"""``inferq process``: a file through the batch path, results written as they finish, in input
order, resumable. ``--task a,b`` runs one batch per task over the same lines (the file is read
once) and writes each line once all its tasks have finished: ``{"id", "tasks": {name: {"result"
| "error"}}}``.

The input is hashed first: the same input and task are the same batch (its idempotency key), so
a run killed at any point and started again finds its batch instead of submitting again. The
output file is read back to its last complete line and continued from there; what is already
there is neither run nor written again.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy import select, update

from core.config import Settings
from core.db.models import Batch, Job, JobItem
from core.db.session import Database
from core.jobs import batch_results, batch_writer, batches
from core.jobs.batch_input import file_lines, input_digest, input_format
from core.jobs.state import TERMINAL_BATCH, BatchStatus, ItemStatus, JobStatus

POLL_SECONDS = 0.2


@dataclass
class Written:
    read: int = 0
    written: int = 0
    skipped: int = 0  # already in the output from an earlier run
    outcomes: Counter[str] = field(default_factory=Counter)


def input_key(path: str, task: str) -> str | None:
    """The batch key of a file: its bytes and the task. stdin cannot be read twice: no key."""
    if path == "-":
        return None
    return f"process:{task}:{input_digest(path, task)}"


def submit(
    database: Database,
    settings: Settings,
    tenant_id: int,
    path: str,
    tasks: Sequence[str],
    console: Console,
) -> tuple[list[uuid.UUID], bool]:
    """The batch of each task for this input: earlier ones (resumed when all are) and new ones
    for the rest, written while the file is read once. Returns (ids in task order, resumed)."""
    keys = {task: input_key(path, task) for task in tasks}
    found: dict[str, uuid.UUID] = {}
    with database.read() as session:
        for task, key in keys.items():
            if key is not None and (earlier := batches.find_by_key(session, tenant_id, key)):
                found[task] = earlier.id
    if len(found) == len(tasks):
        return [found[task] for task in tasks], True
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]reading {task.fields[name]}"),
        TextColumn("{task.completed:,} lines"),
        TimeElapsedColumn(),
    )
    with (
        Progress(*columns, console=console, transient=True) as progress,
        database.transaction() as session,
    ):
        bar = progress.add_task("read", name=path, total=None)
        writers = {}
        for task in tasks:
            if task in found:
                continue
            request = batches.BatchRequest(
                task,
                metadata={"source": "process", "file": Path(path).name},
                idempotency_key=keys[task],
            )
            batch = batches.open_batch(session, settings, tenant_id, request)
            writers[task] = batch_writer.BatchWriter(session, settings, batch)
            found[task] = batch.id
        for number, line in enumerate(file_lines(path, settings, input_format(path)), start=1):
            for writer in writers.values():
                writer.add(line)
            if number % 4096 == 0:
                progress.update(bar, completed=number)
        for writer in writers.values():
            writer.finish()
    return [found[task] for task in tasks], False


def reclaim(database: Database, settings: Settings, batch_id: uuid.UUID) -> int:
    """Embedded mode only, where this process is the only worker: the lines a killed earlier
    run held (leased, or sent to its in-memory broker) go back to be dispatched at once instead
    of after their lease or the sweeper's redispatch delay."""
    with database.transaction() as session:
        held = session.execute(
            update(JobItem)
            .where(
                JobItem.batch_id == batch_id,
                JobItem.status.in_([ItemStatus.QUEUED, ItemStatus.RUNNING]),
            )
            .values(status=ItemStatus.QUEUED, leased_until=None, dispatched_at=None)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(Job)
            .where(Job.batch_id == batch_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
            .values(status=JobStatus.QUEUED, dispatched_at=None)
            .execution_options(synchronize_session=False)
        )
        batches.dispatch(session, settings, [batch_id])
    return int(held.rowcount or 0)  # type: ignore[attr-defined]


def resume_point(database: Database, batch_id: uuid.UUID, output: Path | None) -> tuple[int, int]:
    """(lines already in the output, the input line they end at). The output is cut back to
    its last complete line: a run killed mid-write leaves at most one partial line."""
    if output is None or not output.exists():
        return 0, 0
    complete = 0
    keep = 0
    with output.open("rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            complete += 1
            keep += len(raw)
    with output.open("r+b") as handle:
        handle.truncate(keep)
    if complete == 0:
        return 0, 0
    with database.read() as session:
        line = session.scalar(
            select(JobItem.line)
            .where(JobItem.batch_id == batch_id)
            .order_by(JobItem.line)
            .offset(complete - 1)
            .limit(1)
        )
    return complete, int(line or 0)


def write_in_order(
    database: Database,
    batch_ids: Sequence[uuid.UUID],
    tasks: Sequence[str],
    out: IO[str],
    after_line: int,
    tally: Written,
    console: Console,
) -> list[Batch]:
    """Write each line's result as soon as it and every line before it have finished (in every
    task's batch, when there are several)."""
    columns = (
        TextColumn("[bold]processing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} lines/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
    )
    started = time.perf_counter()
    snapshots = [_snapshot(database, batch_id) for batch_id in batch_ids]
    first_done = _done(snapshots)
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("lines", total=snapshots[0].total, completed=first_done, rate="0")
        while True:
            with database.read() as session:
                pages = [
                    batch_results.result_page(session, batch_id, after_line, until_unfinished=True)
                    for batch_id in batch_ids
                ]
            snapshots = [_snapshot(database, batch_id) for batch_id in batch_ids]
            lines = _merged(pages, tasks)
            for line in lines:
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
                tally.outcomes.update(_outcomes(line, tasks))
            if lines:
                out.flush()
                tally.written += len(lines)
                after_line = min(page.last_line for page in pages)
            rate = (_done(snapshots) - first_done) / max(time.perf_counter() - started, 1e-9)
            progress.update(bar, completed=_done(snapshots), rate=f"{rate:,.0f}")
            waiting = any(page.waiting for page in pages)
            if not lines and not waiting:
                return snapshots  # every line is written
            if waiting and len(lines) < batch_results.RESULT_PAGE_LINES:
                time.sleep(POLL_SECONDS)


def _merged(
    pages: Sequence[batch_results.ResultPage], tasks: Sequence[str]
) -> list[dict[str, Any]]:
    """One batch: its lines as they are. Several (one per task, same input lines): the lines
    every batch has finished, each as {"id", "tasks": {task: its line without the id}}."""
    if len(pages) == 1:
        return [line for _, line in pages[0].lines]
    ready = min(len(page.lines) for page in pages)
    merged = []
    for position in range(ready):
        first = pages[0].lines[position][1]
        merged.append(
            {
                "id": first.get("id"),
                "tasks": {
                    task: {k: v for k, v in page.lines[position][1].items() if k != "id"}
                    for task, page in zip(tasks, pages, strict=True)
                },
            }
        )
    return merged


def _outcomes(line: dict[str, Any], tasks: Sequence[str]) -> list[str]:
    if len(tasks) == 1:
        return [_outcome(line)]
    return [f"{task} {_outcome(line['tasks'][task])}" for task in tasks]


def _snapshot(database: Database, batch_id: uuid.UUID) -> Batch:
    """The batch row as it is now, detached (readable after its session is gone)."""
    with database.read() as session:
        batch = session.get(Batch, batch_id, populate_existing=True)
        assert batch is not None
        session.expunge(batch)
    return batch


def _done(snapshots: Sequence[Batch]) -> int:
    """Lines finished in every batch (the slowest task's count)."""
    return min(batch.completed + batch.failed + batch.cancelled for batch in snapshots)


def _outcome(line: dict[str, object]) -> str:
    result = line.get("result")
    if isinstance(result, dict):
        return f"result: {result.get('tier')}"
    error = line.get("error")
    return f"error: {error.get('code') if isinstance(error, dict) else error}"


def run(
    database: Database,
    settings: Settings,
    tenant_id: int,
    input_path: str,
    tasks: Sequence[str],
    output: Path | None,
    console: Console,
    start_worker: object = None,
) -> tuple[list[Batch], Written, bool]:
    """Submit (or find) the batches, one per task, then write their results in order;
    ``start_worker`` (a context manager factory) runs the embedded worker once the upload is
    written."""
    batch_ids, resumed = submit(database, settings, tenant_id, input_path, tasks, console)
    skipped, after_line = resume_point(database, batch_ids[0], output) if resumed else (0, 0)
    tally = Written(skipped=skipped)
    with ExitStack() as stack:
        # The embedded worker (and its model) starts only if something is left to run: a file
        # answered from the cache at upload needs neither.
        unfinished = [
            batch_id
            for batch_id in batch_ids
            if _snapshot(database, batch_id).status not in TERMINAL_BATCH
        ]
        if start_worker is not None and unfinished:
            if resumed:
                for batch_id in unfinished:
                    reclaim(database, settings, batch_id)
            stack.enter_context(start_worker())  # type: ignore[operator]
        if output is None:
            out: IO[str] = sys.stdout
        else:
            out = stack.enter_context(output.open("a" if resumed else "w", encoding="utf-8"))
        ended = write_in_order(database, batch_ids, tasks, out, after_line, tally, console)
    for batch in ended:
        if batch.status not in TERMINAL_BATCH and batch.status != BatchStatus.IN_PROGRESS:
            console.print(f"[yellow]batch {batch.id} is {batch.status}[/yellow]")
    return ended, tally, resumed
