"""The lines of a batch, whichever way they arrive: an NDJSON body streamed over HTTP, or a
file (JSONL/NDJSON, CSV, plain text, each optionally gzipped, or stdin) read by the CLI or the
nightly inbox. Everything is read as a stream of ``Line``s: nothing holds a whole file.

A line that cannot run (not JSON, no text, empty, NUL, lone surrogate, too long, a duplicate id)
becomes a ``Line`` with an error code instead of failing its batch; blank lines are skipped.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from core.config import Settings
from core.errors import InvalidInput
from core.jobs.validation import check_text

# Machine-readable reasons a line did not run (the ``error.code`` of its result line).
INVALID_JSON = "invalid_json"
INVALID_UTF8 = "invalid_utf8"
MISSING_TEXT = "missing_text"
INVALID_TEXT = "invalid_text"
INVALID_ID = "invalid_id"
DUPLICATE_ID = "duplicate_id"
LINE_TOO_LONG = "line_too_long"
MAX_ID_CHARS = 255


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line (CSV: row) number in the input
    id: str
    text: str | None  # None when the line cannot run
    error_code: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None


def refused(number: int, code: str, message: str, line_id: str | None = None) -> Line:
    return Line(number, line_id if line_id is not None else str(number), None, code, message)


def max_line_bytes(settings: Settings) -> int:
    """The longest line worth reading: a text at the character limit, four bytes a character
    (JSON escapes aside), plus room for the id and the braces."""
    return settings.max_text_chars * 6 + 1024


def parse_ndjson_line(raw: bytes | str, number: int, settings: Settings) -> Line | None:
    """One NDJSON line: ``{"id"?, "text"}``; ``id`` defaults to the line number. None for a
    blank line."""
    if not raw.strip():
        return None
    row = _json_object(raw, number)
    if isinstance(row, Line):
        return row
    line_id = _line_id(row.get("id", number))
    if line_id is None:
        message = f"line {number}: id must be a non-empty string or integer of valid text, "
        return refused(number, INVALID_ID, message + f"at most {MAX_ID_CHARS} characters")
    if "text" not in row:
        return refused(number, MISSING_TEXT, f"line {number} has no 'text' field", line_id)
    return checked(Line(number, line_id, row["text"]), settings)


def _json_object(raw: bytes | str, number: int) -> dict[str, Any] | Line:
    """The line's JSON object, or the refused line saying why there is none."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return refused(number, INVALID_UTF8, f"line {number} is not valid UTF-8: {exc.reason}")
    try:
        row: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        return refused(number, INVALID_JSON, f"line {number} is not JSON: {exc.msg}")
    if not isinstance(row, dict):
        return refused(number, INVALID_JSON, f"line {number} is not a JSON object")
    return row


def _line_id(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        return None
    line_id = str(value)
    if len(line_id) > MAX_ID_CHARS or "\x00" in line_id or not _encodable(line_id):
        return None
    return line_id


def checked(line: Line, settings: Settings) -> Line:
    """The text rules every door applies (core.jobs.validation), as a refused line."""
    try:
        check_text(line.text, max_chars=settings.max_text_chars, where=f"line {line.number}")
    except InvalidInput as exc:
        return refused(line.number, INVALID_TEXT, exc.detail, line.id)
    return line


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def split_lines(chunks: Iterable[bytes], limit: int) -> Iterator[bytes | None]:
    """Lines of a byte stream, without their newline. A line longer than ``limit`` bytes is not
    kept: it yields None (its bytes are skipped up to the next newline), so one endless line
    cannot fill memory."""
    pending = bytearray()
    skipping = False
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not skipping:
                    pending += chunk[start:]
                    if len(pending) > limit:
                        pending.clear()
                        skipping = True
                break
            if skipping:
                skipping = False
                yield None
            else:
                pending += chunk[start:end]
                yield bytes(pending) if len(pending) <= limit else None
            pending.clear()
            start = end + 1
    if skipping:
        yield None
    elif pending:
        yield bytes(pending)


def ndjson_lines(chunks: Iterable[bytes], settings: Settings) -> Iterator[Line]:
    limit = max_line_bytes(settings)
    for number, raw in enumerate(split_lines(chunks, limit), start=1):
        if raw is None:
            yield refused(number, LINE_TOO_LONG, f"line {number} is longer than {limit} bytes")
            continue
        line = parse_ndjson_line(raw.rstrip(b"\r"), number, settings)
        if line is not None:
            yield line


INPUT_FORMATS = ("jsonl", "csv", "text")


def input_format(path: Path | str) -> str:
    """jsonl for .jsonl/.ndjson, csv for .csv, else one text per line (a .gz suffix is looked
    through); stdin (``-``) is read as JSONL."""
    name = str(path).lower().removesuffix(".gz")
    if name == "-" or name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    return "text"


@contextmanager
def open_binary(path: Path | str) -> Iterator[IO[bytes]]:
    """The input's bytes: stdin for ``-``, gunzipped when the name ends in .gz."""
    if str(path) == "-":
        yield sys.stdin.buffer
        return
    with open(path, "rb") as raw:
        if str(path).lower().endswith(".gz"):
            with gzip.open(raw, "rb") as unzipped:
                yield unzipped  # type: ignore[misc]
        else:
            yield raw


def input_digest(path: Path | str, task: str) -> str:
    """SHA-256 of a task name and an input's bytes (after gunzip): the key that makes the same
    file the same batch again (``inferq process``, ``inferq batches submit``)."""
    digest = hashlib.sha256(f"{task}\x00".encode())
    with open_binary(path) as handle:
        for chunk in read_chunks(handle):
            digest.update(chunk)
    return digest.hexdigest()


def read_chunks(handle: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := handle.read(size):
        yield chunk


def file_lines(path: Path | str, settings: Settings, fmt: str | None = None) -> Iterator[Line]:
    """Every line of an input file as ``Line``s, streamed."""
    fmt = fmt or input_format(path)
    with open_binary(path) as handle:
        if fmt == "jsonl":
            yield from ndjson_lines(read_chunks(handle), settings)
        elif fmt == "csv":
            yield from _csv_lines(handle, settings)
        else:
            yield from _text_lines(handle, settings)


def _text_lines(handle: IO[bytes], settings: Settings) -> Iterator[Line]:
    limit = max_line_bytes(settings)
    for number, raw in enumerate(split_lines(read_chunks(handle), limit), start=1):
        if raw is None:
            yield refused(number, LINE_TOO_LONG, f"line {number} is longer than {limit} bytes")
            continue
        stripped = raw.rstrip(b"\r")
        if not stripped.strip():
            continue
        try:
            text = stripped.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield refused(number, INVALID_UTF8, f"line {number} is not valid UTF-8: {exc.reason}")
            continue
        yield checked(Line(number, str(number), text), settings)


def _csv_lines(handle: IO[bytes], settings: Settings) -> Iterator[Line]:
    text = io.TextIOWrapper(handle, encoding="utf-8", errors="surrogateescape", newline="")
    reader = csv.DictReader(text)
    if reader.fieldnames is None or "text" not in reader.fieldnames:
        raise InvalidInput("the CSV file needs a header row with a 'text' column")
    for number, row in enumerate(reader, start=2):
        line_id = row.get("id") or str(number)
        if not _encodable(row["text"] or ""):
            yield refused(number, INVALID_UTF8, f"row {number} is not valid UTF-8", line_id)
            continue
        yield checked(Line(number, line_id, row["text"]), settings)
