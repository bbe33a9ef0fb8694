"""A loopback HTTP proxy in front of the moto server that loses, delays and refuses requests.

It forwards every request to moto. For the DynamoDB operations it is told to, it can:

* **lose the answer:** let the request take effect and then close the connection without
  answering. The client sees a dropped connection for a write that *did* happen, exactly what
  a network failure after DynamoDB committed looks like. botocore then retries, as it does
  against real AWS;
* **hold the request:** keep it, unforwarded, until the test releases it. The client's read
  timeout fires and botocore retries; the held request lands upstream later, after whatever
  the test did in between: a request delayed inside DynamoDB;
* **refuse the request:** answer 500 InternalServerError without forwarding, so nothing
  takes effect and botocore retries until its attempts run out.
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


_INTERNAL_ERROR = (
    b'{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError",'
    b'"message":"refused by the lossy proxy"}'
)


class _HeldRequest:
    """One request the proxy holds: ``arrived`` once it is held, ``landed`` once it took
    effect upstream after ``release()``."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.released = threading.Event()
        self.landed = threading.Event()

    def release(self) -> None:
        self.released.set()


class LossyProxy(Service):
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self._lock = threading.Lock()
        self._drops: Counter[str] = Counter()
        self._refusals: Counter[str] = Counter()
        self._holds: dict[str, _HeldRequest] = {}
        self._held: list[_HeldRequest] = []
        self.forwarded: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
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

    def refuse(self, operation: str, times: int) -> None:
        """The next ``times`` requests for ``operation`` are answered 500 and never forwarded."""
        with self._lock:
            self._refusals[operation] = times

    def hold_next(self, operation: str) -> _HeldRequest:
        """The next request for ``operation`` is held, unforwarded, until ``release()``."""
        held = _HeldRequest()
        with self._lock:
            self._holds[operation] = held
            self._held.append(held)
        return held

    def _take_refusal(self, operation: str) -> bool:
        with self._lock:
            if self._refusals[operation] > 0:
                self._refusals[operation] -= 1
                self.refused[operation] += 1
                return True
            return False

    def _take_hold(self, operation: str) -> _HeldRequest | None:
        with self._lock:
            return self._holds.pop(operation, None)

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
                if proxy._take_refusal(operation):
                    self._answer(500, _INTERNAL_ERROR, {"Content-Type": "application/x-amz-json-1.0"})
                    return
                held = proxy._take_hold(operation)
                if held is not None:
                    held.arrived.set()
                    held.released.wait()
                response = proxy._client.post(proxy.upstream + self.path, content=body, headers=headers)
                if held is not None:
                    held.landed.set()
                    self.close_connection = True
                    return  # its client gave up long ago
                if proxy._take_drop(operation):
                    self.close_connection = True
                    return  # the write happened upstream; its answer is lost
                headers = {k: v for k, v in response.headers.items() if k.lower() not in _NOT_FORWARDED}
                self._answer(response.status_code, response.content, headers)

            def _answer(self, status: int, content: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

        return Handler

    def start(self) -> LossyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            for held in self._held:
                held.release()
        self._server.shutdown()
        self._server.server_close()
        self._client.close()
