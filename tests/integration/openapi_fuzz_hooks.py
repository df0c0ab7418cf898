"""Schemathesis extensions for the API fuzz run (tests/integration/test_openapi_fuzz.py). The
schemathesis CLI loads this file itself (SCHEMATHESIS_HOOKS), so it imports nothing of inferq.

- ``problem_details_on_client_errors``: every 4xx is RFC 9457 application/problem+json whose
  ``status`` is the HTTP status.
- application/x-ndjson: the batch upload body (POST /v1/batches) and the results stream (GET
  /v1/batches/{id}/results), which the schema declares as the NDJSON text, a string. Some of
  the generated upload texts are sent as NDJSON lines that carry them, so batches get created.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from hypothesis import strategies as st
from schemathesis import (
    Case,
    CheckContext,
    DeserializationContext,
    HookContext,
    Response,
    SerializationContext,
)

PROBLEM_JSON = "application/problem+json"
NDJSON = "application/x-ndjson"


@schemathesis.check
def problem_details_on_client_errors(
    ctx: CheckContext, response: Response, case: Case[Any]
) -> bool | None:
    if not 400 <= response.status_code < 500:
        return None
    content_type = ", ".join(response.headers.get("content-type", [])) or "no Content-Type"
    if content_type.split(";")[0].strip().lower() != PROBLEM_JSON:
        raise AssertionError(f"a {response.status_code} answered as {content_type}")
    try:
        problem = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"a {response.status_code} problem is not JSON: {exc}") from None
    status = problem.get("status") if isinstance(problem, dict) else None
    if status != response.status_code:
        raise AssertionError(f"a {response.status_code} problem says status {status!r}")
    return True


@schemathesis.hook
def flatmap_body(context: HookContext, body: Any) -> st.SearchStrategy[Any]:
    """An NDJSON text as generated (almost never a JSON object a line: 400), or each of its
    lines as the ``text`` of one, which gets past the framing to the per-line validation and,
    with a real task, creates a batch for the stateful phase to follow."""
    operation = context.operation
    if (
        operation is None
        or NDJSON not in operation.get_request_payload_content_types()
        or not isinstance(body, str)
    ):
        return st.just(body)
    lines = "".join(json.dumps({"text": text}) + "\n" for text in body.splitlines())
    return st.sampled_from([body, lines])


@schemathesis.serializer(NDJSON)
def ndjson_body(_ctx: SerializationContext, value: Any) -> bytes:
    """The NDJSON text as generated. Negative cases generate other JSON values for it: each
    goes as NDJSON lines (an array's items one a line), so the server parses lines either way."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # Lone surrogates as their raw bytes: a client can send invalid UTF-8, and the server
        # must refuse the line, not fail on it.
        return value.encode("utf-8", "surrogatepass")
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()


@schemathesis.deserializer(NDJSON)
def ndjson_text(_ctx: DeserializationContext, response: Response) -> str:
    return response.content.decode("utf-8")
