"""The nightly inbox: files dropped into INFERQ_INBOX_DIR become batches on beat's schedule, and
their results are written beside them when the batch ends.

* A file is taken once it has not changed for INFERQ_INBOX_SETTLE_SECONDS (60 s by default): a
  file still being copied in keeps changing, so it is left for the next scan. Names starting
  with a dot and ending in .tmp/.part are never taken (write there, then rename).
* Idempotent by content: the batch's idempotency key is the file's SHA-256, so a file dropped
  twice (or a scan that died between creating the batch and moving the file) runs once.
* The input moves to ``processed/`` once its batch is committed; a file that cannot be read as
  input at all (a CSV without a ``text`` column, not one JSON line) moves to ``rejected/`` with
  a ``.error.txt`` beside it.
* When the batch ends, ``<name>.results.jsonl`` (every line, in input order) and
  ``<name>.errors.jsonl`` (the lines that did not succeed, if any) are written to the outbox
  folder (INFERQ_OUTBOX_DIR, else ``outbox/`` in the inbox) under a temporary name and renamed
  into place, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy import select

from core.config import Settings
from core.db.models import Batch, utcnow
from core.db.session import Database
from core.errors import InferqError
from core.jobs import batch_results, batch_writer, batches
from core.jobs.batch_input import file_lines
from core.jobs.state import TERMINAL_BATCH
from core.security.keys import local_tenant_id

log = structlog.get_logger(__name__)

KEY_PREFIX = "nightly:"
SKIPPED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


@dataclass(frozen=True)
class Inbox:
    task: str
    path: Path


@dataclass(frozen=True)
class Picked:
    file: str
    batch_id: uuid.UUID | None
    new: bool
    error: str | None = None


def inboxes(settings: Settings) -> list[Inbox]:
    """INFERQ_INBOX_DIR: ``/srv/inbox`` (task sentiment) or ``sentiment=/a;embed=/b``."""
    found: list[Inbox] = []
    for part in settings.inbox_dir.split(";"):
        if not part.strip():
            continue
        task, _, path = part.strip().rpartition("=")
        found.append(Inbox(task.strip() or "sentiment", Path(path.strip())))
    return found


def outbox_dir(settings: Settings, inbox: Path) -> Path:
    return settings.outbox_dir or inbox / "outbox"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def scan(
    database: Database, settings: Settings, *, settle_seconds: float | None = None
) -> list[Picked]:
    """Every settled file of every inbox becomes a batch (once) and moves to processed/."""
    settle = settings.inbox_settle_seconds if settle_seconds is None else settle_seconds
    picked: list[Picked] = []
    for inbox in inboxes(settings):
        if not inbox.path.is_dir():
            log.warning("inbox_missing", inbox=str(inbox.path))
            continue
        for path in sorted(inbox.path.iterdir()):
            if _waiting(path, settle):
                continue
            picked.append(_take(database, settings, inbox, path))
    return picked


def _waiting(path: Path, settle: float) -> bool:
    if not path.is_file() or path.name.startswith(".") or path.name.endswith(SKIPPED_SUFFIXES):
        return True
    return time.time() - path.stat().st_mtime < settle


def _take(database: Database, settings: Settings, inbox: Inbox, path: Path) -> Picked:
    key = f"{KEY_PREFIX}{inbox.task}:{file_digest(path)}"
    try:
        with database.transaction() as session:
            tenant_id = local_tenant_id(session)
            earlier = batches.find_by_key(session, tenant_id, key)
            if earlier is not None:
                batch_id, new = earlier.id, False
            else:
                request = batches.BatchRequest(
                    inbox.task,
                    metadata={"source": "nightly", "file": path.name, "inbox": str(inbox.path)},
                    idempotency_key=key,
                )
                batch = batches.open_batch(session, settings, tenant_id, request)
                writer = batch_writer.BatchWriter(session, settings, batch)
                writer.add_all(file_lines(path, settings))
                writer.finish()
                batch_id, new = batch.id, True
    except InferqError as exc:
        _move(path, inbox.path / "rejected")
        (inbox.path / "rejected" / f"{path.name}.error.txt").write_text(exc.detail + "\n")
        log.warning("inbox_file_rejected", file=path.name, error=exc.detail)
        return Picked(path.name, None, False, exc.detail)
    _move(path, inbox.path / "processed")
    log.info("inbox_file_taken", file=path.name, batch_id=str(batch_id), new=new)
    return Picked(path.name, batch_id, new)


def _move(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():  # the same name dropped again: keep both
        target = folder / f"{path.stem}.{utcnow():%Y%m%dT%H%M%S}{path.suffix}"
    path.rename(target)
    return target


def collect(database: Database, settings: Settings) -> list[Path]:
    """Write the results files of every nightly batch that has ended and has none yet."""
    with database.read() as session:
        ended = session.scalars(
            select(Batch.id).where(
                Batch.idempotency_key.like(f"{KEY_PREFIX}%"),
                Batch.status.in_(list(TERMINAL_BATCH)),
                Batch.output_written_at.is_(None),
            )
        ).all()
    written: list[Path] = []
    for batch_id in ended:
        # Files first, then the mark, with no transaction open while writing: two collectors
        # may both write one batch's files, which is harmless (same content, atomic renames).
        with database.read() as session:
            batch = session.get(Batch, batch_id)
            assert batch is not None
            meta = batch.metadata_ or {}
        folder = outbox_dir(settings, Path(meta.get("inbox", ".")))
        written += write_outputs(database, batch_id, folder, str(meta.get("file", batch_id)))
        with database.transaction() as session:
            batch = session.get(Batch, batch_id)
            assert batch is not None
            batch.output_written_at = utcnow()
    return written


def write_outputs(database: Database, batch_id: uuid.UUID, folder: Path, name: str) -> list[Path]:
    """``<name>.results.jsonl`` and, if any line failed, ``<name>.errors.jsonl``: each written
    to a temporary name, flushed to disk and renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    results, errors = folder / f"{name}.results.jsonl", folder / f"{name}.errors.jsonl"
    temp_results, temp_errors = folder / f".{results.name}.tmp", folder / f".{errors.name}.tmp"
    failed = 0
    with (
        temp_results.open("w", encoding="utf-8") as out,
        temp_errors.open("w", encoding="utf-8") as err,
    ):
        for line in batch_results.iter_results(database, batch_id):
            text = json.dumps(line, ensure_ascii=False) + "\n"
            out.write(text)
            if "error" in line:
                err.write(text)
                failed += 1
        for handle in (out, err):
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temp_results, results)
    if failed:
        os.replace(temp_errors, errors)
        return [results, errors]
    temp_errors.unlink()
    return [results]
