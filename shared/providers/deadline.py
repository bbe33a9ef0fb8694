"""A wall-clock deadline for one provider call, enforced at the socket.

httpx's timeouts bound each socket operation, not the call: a server that answers one byte
every 0.8 s never trips a 10 s read timeout, and kept a call with a 4 s budget alive for 40 s.
The stop-claiming margin assumes every call ends within ``provider_call_budget_seconds``,
so the call itself must.

``call_deadline`` sets a per-call deadline in a context variable (a call runs on one thread
from ``Client.send`` to the last body byte). ``DeadlineBackend`` wraps httpcore's
``SyncBackend``: every connect, TLS handshake, write and read gets a socket timeout no longer
than the time left, and once none is left it raises the timeout of the phase it is in. The
phase decides the classification (``shared.providers.http``), unchanged: a connect timeout
(or a pool timeout) means nothing was written and stays ``retry_later``; a write or read
timeout may come after the provider got the request and stays ``ambiguous``.

Not bounded by the deadline: DNS resolution (``getaddrinfo`` has no timeout; the system
resolver's own applies) and a single ``send()`` of a request body larger than the socket
buffer to a server that stops reading (the bodies here are a few hundred bytes).
"""

from __future__ import annotations

import ssl
import time
import typing
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import httpcore
import httpx

_deadline: ContextVar[float | None] = ContextVar("sendonce_provider_call_deadline", default=None)


@contextmanager
def call_deadline(budget_seconds: float | None) -> Iterator[None]:
    """Every socket operation inside must finish within ``budget_seconds`` of entering.
    ``None`` sets no deadline (the per-operation timeouts alone apply)."""
    if budget_seconds is None:
        yield
        return
    token = _deadline.set(time.monotonic() + budget_seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def _remaining() -> float | None:
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


def _clamp(timeout: float | None, spent: type[httpcore.TimeoutException]) -> tuple[float | None, bool]:
    """The socket timeout to use, and whether the deadline (not ``timeout``) set it."""
    left = _remaining()
    if left is None:
        return timeout, False
    if left <= 0:
        raise spent("provider call budget spent")
    if timeout is None or left < timeout:
        return left, True
    return timeout, False


class DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        clamped, by_deadline = _clamp(timeout, httpcore.ReadTimeout)
        try:
            return self._inner.read(max_bytes, clamped)
        except httpcore.ReadTimeout as exc:
            if by_deadline:
                raise httpcore.ReadTimeout("provider call budget spent while reading") from exc
            raise

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        clamped, by_deadline = _clamp(timeout, httpcore.WriteTimeout)
        try:
            self._inner.write(buffer, clamped)
        except httpcore.WriteTimeout as exc:
            if by_deadline:
                raise httpcore.WriteTimeout("provider call budget spent while writing") from exc
            raise

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        # Nothing of the request has been written during the handshake: a connect timeout.
        clamped, _ = _clamp(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, clamped))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        clamped, _ = _clamp(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(
            self._inner.connect_tcp(
                host, port, timeout=clamped, local_address=local_address, socket_options=socket_options
            )
        )

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        clamped, _ = _clamp(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(
            self._inner.connect_unix_socket(path, timeout=clamped, socket_options=socket_options)
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` on ``DeadlineBackend``. httpx has no parameter for the network
    backend, so the connection pool it built is replaced by an identical one that has it.
    The wait for a pooled connection is not a socket operation: it is clamped here."""

    def __init__(self, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=DeadlineBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        left = _remaining()
        timeouts = request.extensions.get("timeout")
        if left is not None and isinstance(timeouts, dict):
            pool = timeouts.get("pool")
            bounded = max(0.0, left) if pool is None else max(0.0, min(pool, left))
            request.extensions["timeout"] = {**timeouts, "pool": bounded}
        return super().handle_request(request)
