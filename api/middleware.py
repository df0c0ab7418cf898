"""ASGI middleware: a cap on request body size, and the headers every response carries.

Hand-written because Starlette's RequestBodyLimitMiddleware (behind FastAPI's max_body_size)
answers an over-long Content-Length with a text/plain 413, and every error here must be
problem+json. It rejects on Content-Length up front and counts streamed (chunked) bytes too.
"""

from __future__ import annotations

import json

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised while the body streams in; FastAPI passes HTTPExceptions to the problem handler."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            f"the request body is over {max_bytes} bytes; send fewer or "
            "shorter inputs, or use /v1/batches",
        )


class BodySizeLimit:
    """``max_bytes`` for every route but those of ``limits`` (exact paths, e.g. the batch upload,
    which streams its body and has a limit of its own)."""

    def __init__(self, app: ASGIApp, max_bytes: int, limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limits = limits or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        most = self.limits.get(scope.get("path", ""), self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > most:
            await self._reject(scope, send, most)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > most:
                raise BodyTooLarge(most)
            return message

        await self.app(scope, counting_receive, send)

    async def _reject(self, scope: Scope, send: Send, most: int) -> None:
        body = json.dumps(
            {
                "type": "https://inferq.dev/problems/payload-too-large",
                "title": "Payload too large",
                "status": 413,
                "detail": f"the request body is over {most} bytes; send fewer or shorter "
                "inputs, or use /v1/batches",
                "instance": scope.get("path"),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class ResponseHeaders:
    """What every response carries: ``X-Content-Type-Options: nosniff``; ``Cache-Control:
    no-store`` on the API's own routes (their answers are per caller); and the RateLimit fields
    the route's dependency decided (api.deps.Requires leaves them in the request state)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        private = scope.get("path", "").startswith("/v1/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if private:
                    headers.setdefault("Cache-Control", "no-store")
                for name, value in state.get("rate_limit_headers", {}).items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
