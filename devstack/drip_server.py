"""A loopback HTTP server that answers every request one byte at a time.

Per-socket-operation timeouts never fire against it: each read gets a byte before its
timeout. Only a wall-clock budget per call ends such a call early, which is what the tests
that use it check (``shared.providers.deadline``, ``shared.bounded_calls``).
"""

from __future__ import annotations

import socketserver
import threading

from devstack.service import Service


class DripServer(Service):
    """Reads a request (head and ``Content-Length`` body), then writes ``status`` with
    ``body`` one byte every ``interval_seconds``; ``drip_seconds`` is how long a whole answer
    takes. ``requests`` counts requests read, so a test can tell a call reached it."""

    def __init__(
        self,
        body: bytes,
        *,
        content_type: str = "application/json",
        status: str = "200 OK",
        interval_seconds: float = 0.8,
    ) -> None:
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self.response = head.encode() + body
        self.interval_seconds = interval_seconds
        self.requests = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def drip_seconds(self) -> float:
        return len(self.response) * self.interval_seconds

    def _handler_class(self) -> type[socketserver.StreamRequestHandler]:
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                length = 0
                while line := self.rfile.readline():
                    if line in (b"\r\n", b"\n"):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                self.rfile.read(length)
                with server._lock:
                    server.requests += 1
                for byte in server.response:
                    if server._stopping.wait(server.interval_seconds):
                        return
                    try:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                    except OSError:
                        return  # the client gave up

        return Handler

    def start(self) -> DripServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
