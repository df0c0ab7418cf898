"""Structured JSON logs with a request id that follows a job from the API into the worker."""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import structlog

_configured = False


def configure_logging(
    level: str = "INFO", fmt: str = "json", extra: list[structlog.types.Processor] | None = None
) -> None:
    global _configured  # noqa: PLW0603 - stdlib logging is process-global; configure it once
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        *(extra or []),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # sys.stderr as it is when a line is logged, not as it was when this ran: a process (or
        # a test run) may replace the stream afterwards, and writing to a closed one raises.
        logger_factory=_current_stderr,
        cache_logger_on_first_use=False,
    )
    if not _configured:
        # Route library logs (celery, uvicorn, sqlalchemy) through the same JSON renderer.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
                foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            )
        )
        root = logging.getLogger()
        root.handlers = [handler]
        root.setLevel(level.upper())
        _configured = True


def _current_stderr(*_args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def new_request_id() -> str:
    return uuid.uuid4().hex


@contextmanager
def bound_request_id(request_id: str | None) -> Iterator[str]:
    request_id = request_id or new_request_id()
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        yield request_id
