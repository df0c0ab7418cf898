"""RFC 9457 problem details, the body of every error response."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Problem(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


# The OpenAPI media type object of a problem response (application/problem+json): this model,
# by the component name FastAPI gives it.
PROBLEM_SCHEMA: dict[str, object] = {"schema": {"$ref": "#/components/schemas/Problem"}}
