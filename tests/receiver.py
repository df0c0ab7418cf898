"""A real HTTP webhook receiver for tests: a threaded server on loopback that records every
request, answers with the status the test sets, and can be started late (connection refused
until then) or stopped and started again on the same port."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.services import free_port


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    # Status to answer each request with; a callable decides per request (by its headers).
    answer: int | Callable[[dict[str, str]], int] = 200
    delay_seconds: float = 0.0
    response_body: bytes = b"ok"
    extra_headers: dict[str, str] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None  # serve HTTPS with this context
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {key.lower(): value for key, value in self.headers.items()}
                if receiver.delay_seconds:
                    time.sleep(receiver.delay_seconds)
                answer = receiver.answer
                code = answer(headers) if callable(answer) else answer
                with receiver._lock:
                    receiver.received.append(Received(self.path, headers, body, code))
                self.send_response(code)
                for key, value in receiver.extra_headers.items():
                    self.send_header(key, value)
                self.send_header("content-length", str(len(receiver.response_body)))
                self.end_headers()
                self.wfile.write(receiver.response_body)

            do_GET = do_POST

            def log_message(self, *_: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)
