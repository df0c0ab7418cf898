"""Rules every text must pass before it is stored, whichever door it came through.

PostgreSQL rejects NUL in text and lone surrogates cannot be encoded as UTF-8, so both are
refused here with a message that says what to fix rather than failing later in a worker.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from core.config import Settings
from core.errors import InvalidInput, UnknownTask
from core.inference.registry import task_names

_ALLOWED_CONTROLS = frozenset("\t\n\r")


def check_text(text: object, *, max_chars: int, where: str = "text") -> str:
    if not isinstance(text, str):
        raise InvalidInput(f"{where} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInput(f"{where} is empty; send at least one non-blank character")
    if len(text) > max_chars:
        raise InvalidInput(
            f"{where} has {len(text)} characters; the limit is {max_chars} (split it or raise "
            "INFERQ_MAX_TEXT_CHARS)"
        )
    for position, char in enumerate(text):
        _check_char(char, position, where)
    return text


def _check_char(char: str, position: int, where: str) -> None:
    if char == "\x00":
        raise InvalidInput(f"{where} contains a NUL byte at position {position}; remove it")
    if "\ud800" <= char <= "\udfff":
        raise InvalidInput(
            f"{where} contains a lone surrogate (U+{ord(char):04X}) at position {position}; "
            "send valid UTF-8"
        )
    if char not in _ALLOWED_CONTROLS and unicodedata.category(char) == "Cc":
        raise InvalidInput(
            f"{where} contains control character U+{ord(char):04X} at position {position}; "
            "only tab, newline and carriage return are allowed"
        )


def check_task(task: str) -> str:
    names = task_names()
    if task not in names:
        raise UnknownTask(f"unknown task {task!r}; available tasks: {', '.join(sorted(names))}")
    return task


def check_inputs(inputs: Sequence[object], settings: Settings) -> list[str]:
    if not inputs:
        raise InvalidInput("inputs is empty; send at least one text")
    if len(inputs) > settings.max_inputs_per_job:
        raise InvalidInput(
            f"{len(inputs)} inputs in one job; the limit is {settings.max_inputs_per_job} "
            "(send several jobs or use /v1/batches)"
        )
    return [
        check_text(text, max_chars=settings.max_text_chars, where=f"inputs[{i}]")
        for i, text in enumerate(inputs)
    ]
