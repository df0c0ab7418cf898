"""One error tree for the whole platform; each error carries the HTTP status it implies.

The API turns any of these into an RFC 9457 problem+json body; workers and producers read
``retryable`` to choose between a retry and a dead letter.
"""

from __future__ import annotations

from typing import Any


class InferqError(Exception):
    """Root of every error inferq raises on purpose."""

    status: int = 500
    title: str = "Internal error"
    retryable: bool = False

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}  # sent with the problem (e.g. Retry-After)
        self.extra = extra

    @property
    def type_slug(self) -> str:
        return self.title.lower().replace(" ", "-")


class InvalidInput(InferqError):
    """The request is well-formed but its content breaks a rule the caller can fix."""

    status = 422
    title = "Invalid input"


class PayloadTooLarge(InferqError):
    """The body is larger than the configured limit."""

    status = 413
    title = "Payload too large"


class UnknownTask(InvalidInput):
    """The task name is not in the model registry."""

    title = "Unknown task"


class IdempotencyConflict(InferqError):
    """The Idempotency-Key was used before with a different request body."""

    status = 422
    title = "Idempotency key reused"


class NotFound(InferqError):
    """The resource does not exist or belongs to another tenant."""

    status = 404
    title = "Not found"


class Unauthorized(InferqError):
    """No valid API key was presented."""

    status = 401
    title = "Unauthorized"


class Forbidden(InferqError):
    """The caller is known but lacks the scope the operation needs."""

    status = 403
    title = "Forbidden"


class RateLimited(InferqError):
    """Too many requests of one route class from one tenant in the window; retry later."""

    status = 429
    title = "Too many requests"
    retryable = True


class QuotaExceeded(RateLimited):
    """The tenant's unfinished work would pass its quota of pending inputs (backpressure)."""

    title = "Quota exceeded"


class InvalidTransition(InferqError):
    """A state change the job state machine forbids (e.g. cancelling a finished job)."""

    status = 409
    title = "Invalid state transition"


class ServiceUnavailable(InferqError):
    """A dependency (database, broker) cannot be reached; try again later."""

    status = 503
    title = "Service unavailable"
    retryable = True


class NotConfigured(ServiceUnavailable):
    """A setting the operation needs is missing or wrong (e.g. INFERQ_SECRET_KEY)."""

    title = "Not configured"


class UnsupportedMediaType(InferqError):
    """The body's Content-Type is not one this route reads."""

    status = 415
    title = "Unsupported media type"


class NotNdjson(InferqError):
    """A batch body that is not newline-delimited JSON at all (not one line parsed)."""

    status = 400
    title = "Not NDJSON"
