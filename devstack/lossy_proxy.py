"""A loopback HTTP proxy in front of the moto server that can lose responses.

It forwards every request to moto. For the DynamoDB operations it is told to, it lets the
request take effect and then closes the connection without answering: the client sees a
dropped connection for a write that *did* happen, exactly what a network failure after
DynamoDB committed looks like. botocore then retries, as it does against real AWS.
"""

from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from devstack.service import Service

# Hop-by-hop headers, and those httpx has already acted on (it decodes the body).
_NOT_FORWARDED = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "host",
}


class LossyProxy(Service):
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._lock = threading.Lock()
        self._drops: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        # trust_env=False: an HTTP(S)_PROXY in the environment must not reroute the hop to moto.
        self._client = httpx.Client(timeout=30.0, trust_env=False)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def lose_responses(self, operation: str, times: int) -> None:
        """The next ``times`` requests for ``operation`` (e.g. ``PutItem``) take effect upstream
        but get no answer."""
        with self._lock:
            self._drops[operation] = times

    def _take_drop(self, operation: str) -> bool:
        with self._lock:
            if self._drops[operation] > 0:
                self._drops[operation] -= 1
                self.dropped[operation] += 1
                return True
            self.forwarded[operation] += 1
            return False

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _NOT_FORWARDED}
                operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                response = proxy._client.post(proxy.upstream + self.path, content=body, headers=headers)
                if proxy._take_drop(operation):
                    self.close_connection = True
                    return  # the write happened upstream; its answer is lost
                self.send_response(response.status_code)
                for name, value in response.headers.items():
                    if name.lower() not in _NOT_FORWARDED:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

        return Handler

    def start(self) -> LossyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()
