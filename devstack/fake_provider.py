"""A fake of WhatsApp Cloud API, the Messenger Send API and Unipile on 127.0.0.1.

It speaks the real wire formats at the real paths, so the adapters are exercised exactly as in
production, and it keeps its own ledger of every message it *accepted*: the ground truth a
test compares against to count lost and duplicated messages.

Provider endpoints:

* ``POST /{version}/{id}/messages``: WhatsApp when the JSON body has ``messaging_product``,
  Messenger otherwise. ``Authorization: Bearer <token>``.
* ``POST /api/v1/chats``: Unipile, multipart/form-data (``account_id``, ``text``,
  ``attendees_ids``), ``X-API-KEY``. One chat per (account, attendee), as on LinkedIn.
* ``GET /api/v1/chats/{chat_id}/messages``: Unipile read-back (``is_sender``, ``timestamp``),
  newest first.

Control API (JSON): ``GET /_fake/ledger``, ``GET /_fake/stats``, ``GET|POST /_fake/faults``
(POST replaces the whole fault configuration), ``POST /_fake/reset``, ``GET /_fake/health``,
``POST /_fake/chat_messages`` (a message typed by hand into a LinkedIn chat, as from another
device: ``{"account_id", "attendee_id", "text", "timestamp": ISO 8601 or null, "is_sender"}``;
it shows in the chat's read-back but is not in the ledger, which counts API sends only).

Fault configuration (``FaultConfig``)::

    {"latency_ms": 0, "seed": null, "rules": [
        {"action": "latency" | "rate_limit" | "server_error" | "accept_then_timeout"
                   | "accept_then_drop" | "accept_then_5xx" | "permanent" | "sender_blocked"
                   | "error_code",
         "match": {"channel": "whatsapp" | "messenger" | "linkedin",
                   "recipient": "..." | ["...", ...], "sender": "..." | ["...", ...]},
         "times": null, "probability": 1.0,
         "ms": 0,                      # latency
         "hold_ms": 30000,             # accept_then_timeout
         "status": 500,                # server_error (500/502/503/504), accept_then_5xx
         "per_sender_per_second": null, "burst": null,  # rate_limit as a real token bucket
         "retry_after_seconds": 1.0,   # rate_limit: Retry-After on Unipile's HTTP 429
         "code": null,                 # error_code: Graph error code, or Unipile error type
         "error_status": 400}          # error_code: the HTTP status it comes with
    ]}

``error_code`` refuses the request (records nothing) with any error the provider could send:
the Graph error shape with ``code`` for WhatsApp and Messenger, the Unipile shape with type
``errors/<code>`` for LinkedIn.

Rules are evaluated in order against each provider request that passed authentication and
validation. ``latency`` rules add up and evaluation continues; the first other rule that
fires decides the answer. A rule fires when its ``match`` matches (every given field), it
has not yet fired ``times`` times, the seeded RNG draws below ``probability`` and, for a
``rate_limit`` with ``per_sender_per_second``, the sender's token bucket is empty. A request
no rule decides is accepted. Latency is applied before anything is recorded.

Run standalone: ``python -m devstack.fake_provider --port 0 --ready-file PATH``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import httpx
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from devstack.fake_channels import messenger, unipile, whatsapp
from devstack.fake_channels.base import Answer, Dialect, Invalid, SendRequest, token
from devstack.fake_channels.messenger import MESSENGER
from devstack.fake_channels.meta import graph_error
from devstack.fake_channels.unipile import LINKEDIN, unipile_error
from devstack.fake_channels.whatsapp import WHATSAPP
from devstack.fake_webhooks import WebhookConfig, WebhookEmitter

DEFAULT_WHATSAPP_TOKEN = "test-whatsapp-token"
DEFAULT_MESSENGER_TOKEN = "test-messenger-token"
DEFAULT_UNIPILE_KEY = "test-unipile-key"

ChannelName = Literal["whatsapp", "messenger", "linkedin"]

_GRAPH_SEND = re.compile(r"^/(v\d+(?:\.\d+)?)/([^/]+)/messages/?$")
_UNIPILE_CHAT_MESSAGES = re.compile(r"^/api/v1/chats/([^/]+)/messages/?$")
_GRAPH_TEMPLATES = re.compile(r"^/(v\d+(?:\.\d+)?)/([^/]+)/message_templates/?$")
_UNIPILE_USER = re.compile(r"^/api/v1/users/([^/]+)/?$")
_MAX_BODY = 1 << 20


class FaultAction(StrEnum):
    LATENCY = "latency"
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    ACCEPT_THEN_TIMEOUT = "accept_then_timeout"
    ACCEPT_THEN_DROP = "accept_then_drop"
    ACCEPT_THEN_5XX = "accept_then_5xx"
    PERMANENT = "permanent"
    SENDER_BLOCKED = "sender_blocked"
    ERROR_CODE = "error_code"


class FaultMatch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    channel: ChannelName | None = None
    recipient: str | list[str] | None = None
    sender: str | list[str] | None = None

    @field_validator("channel", mode="before")
    @classmethod
    def _unipile_is_linkedin(cls, value: object) -> object:
        return LINKEDIN if value == "unipile" else value

    def matches(self, channel: str, sender: str, recipient: str) -> bool:
        return (
            (self.channel is None or self.channel == channel)
            and _field_matches(self.recipient, recipient)
            and _field_matches(self.sender, sender)
        )


def _field_matches(expected: str | list[str] | None, actual: str) -> bool:
    if expected is None:
        return True
    return actual == expected if isinstance(expected, str) else actual in expected


class FaultRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    action: FaultAction
    match: FaultMatch = Field(default_factory=FaultMatch)
    times: int | None = Field(default=None, ge=0)
    probability: float = Field(default=1.0, ge=0.0, le=1.0)
    ms: float = Field(default=0.0, ge=0.0, validation_alias=AliasChoices("ms", "latency_ms"))
    hold_ms: float = Field(default=30_000.0, ge=0.0)
    status: Literal[500, 502, 503, 504] = 500
    per_sender_per_second: float | None = Field(default=None, gt=0.0)
    burst: int | None = Field(default=None, ge=1)
    retry_after_seconds: float | None = Field(default=1.0, ge=0.0)
    code: int | str | None = None
    error_status: int = Field(default=400, ge=400, le=599)

    @model_validator(mode="after")
    def _error_code_needs_a_code(self) -> FaultRule:
        if self.action is FaultAction.ERROR_CODE and self.code is None:
            raise ValueError("an error_code rule needs a code")
        return self


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0.0, description="Added to every provider request.")
    seed: int | None = Field(default=None, description="Reseeds the probability RNG when set.")
    rules: list[FaultRule] = Field(default_factory=list)


FaultsInput = FaultConfig | Mapping[str, Any] | Sequence[Mapping[str, Any]]


def parse_faults(faults: FaultsInput) -> FaultConfig:
    """A ``FaultConfig``, its JSON form, or just a list of rules."""
    if isinstance(faults, FaultConfig):
        return faults
    if isinstance(faults, Mapping):
        return FaultConfig.model_validate(dict(faults))
    return FaultConfig.model_validate({"rules": list(faults)})


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class _Decision:
    latency_seconds: float = 0.0
    rule: FaultRule | None = None


@dataclass
class _Chat:
    chat_id: str
    account_id: str
    attendee_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _now_iso() -> str:
    return _iso(datetime.now(UTC))


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


class ChatMessage(BaseModel):
    """A message typed by hand into a LinkedIn chat (``POST /_fake/chat_messages``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    account_id: str = Field(min_length=1)
    attendee_id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    timestamp: datetime | None = Field(default=None, description="Timezone-aware; null means now.")
    is_sender: bool = True

    @field_validator("timestamp")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("timestamp needs a timezone")
        return value


class _State:
    """Everything the handler threads share, behind one lock."""

    def __init__(self, *, tokens: Mapping[str, str], latency_ms: float, seed: int) -> None:
        self.lock = threading.Lock()
        self.tokens = dict(tokens)
        self._default_config = FaultConfig(latency_ms=latency_ms)
        self._seed = seed
        self.stopping = threading.Event()
        # Status webhooks for accepted messages (devstack.fake_webhooks), when configured.
        self.webhooks: WebhookEmitter | None = None
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.ledger: list[dict[str, Any]] = []
            self.chats: dict[str, _Chat] = {}
            self.chat_by_pair: dict[tuple[str, str], str] = {}
            self.requests = Counter[str]()
            self.faults_fired = Counter[str]()
            # The 24-hour windows: off unless a test turns them on, like the library's.
            self.enforce_windows = False
            self.inbound: dict[tuple[str, str, str], datetime] = {}
            self.templates = whatsapp.Templates()
            self.invitations: set[tuple[str, str]] = set()
            self._apply(self._default_config)

    def _apply(self, config: FaultConfig) -> None:
        self.config = config
        self.fired = [0] * len(config.rules)
        self.buckets: dict[tuple[int, str, str], _Bucket] = {}
        if config.seed is not None:
            self._seed = config.seed
        self.rng = random.Random(self._seed)

    def set_faults(self, config: FaultConfig) -> None:
        with self.lock:
            self._apply(config)

    def decide(self, channel: str, sender: str, recipient: str) -> _Decision:
        with self.lock:
            decision = _Decision(latency_seconds=self.config.latency_ms / 1000)
            for index, rule in enumerate(self.config.rules):
                if not rule.match.matches(channel, sender, recipient):
                    continue
                if rule.times is not None and self.fired[index] >= rule.times:
                    continue
                if rule.probability < 1.0 and self.rng.random() >= rule.probability:
                    continue
                # A rate limiter fires only once the sender's bucket is empty.
                if (
                    rule.action is FaultAction.RATE_LIMIT
                    and rule.per_sender_per_second is not None
                    and self._taketoken(index, rule, channel, sender)
                ):
                    continue
                self.fired[index] += 1
                self.faults_fired[rule.action.value] += 1
                if rule.action is FaultAction.LATENCY:
                    decision.latency_seconds += rule.ms / 1000
                    continue
                decision.rule = rule
                break
            return decision

    def _taketoken(self, index: int, rule: FaultRule, channel: str, sender: str) -> bool:
        assert rule.per_sender_per_second is not None
        rate = rule.per_sender_per_second
        capacity = float(rule.burst if rule.burst is not None else max(1, round(rate)))
        now = time.monotonic()
        bucket = self.buckets.setdefault((index, channel, sender), _Bucket(capacity, now))
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        return False

    def count(self, key: str) -> None:
        with self.lock:
            self.requests[key] += 1

    def record(
        self,
        *,
        channel: str,
        sender_id: str,
        recipient: str,
        text: str,
        correlation: str | None,
        fault: str | None,
        kind: str = "text",
    ) -> dict[str, Any]:
        with self.lock:
            thread_id: str | None = None
            message_id = _DIALECTS[channel].new_message_id()
            if kind == "invitation":
                self.invitations.add((sender_id, recipient))
            elif channel == LINKEDIN:
                pair = (sender_id, recipient)
                thread_id = self.chat_by_pair.get(pair)
                if thread_id is None:
                    thread_id = token(16)
                    self.chat_by_pair[pair] = thread_id
                    self.chats[thread_id] = _Chat(thread_id, sender_id, recipient)
            entry: dict[str, Any] = {
                "seq": len(self.ledger) + 1,
                "channel": channel,
                "sender_id": sender_id,
                "recipient": recipient,
                "text": text,
                "provider_message_id": message_id,
                "thread_id": thread_id,
                "correlation": correlation,
                "fault": fault,
                "kind": kind,
                "timestamp": _now_iso(),
            }
            self.ledger.append(entry)
            self.requests["accepted"] += 1
            if thread_id is not None:
                self.chats[thread_id].messages.append(entry)
            return dict(entry)

    def refusal(self, request: SendRequest, dialect: Dialect) -> Answer | None:
        """What the provider answers a request it refuses on its own rules: a message outside
        the 24-hour window, a template that is not approved or does not fit."""
        with self.lock:
            last = self.inbound.get((request.channel, request.sender_id, request.recipient))
            enforce = self.enforce_windows
        window = request.window
        if enforce and window is not None and (last is None or datetime.now(UTC) - last >= window):
            return dialect.window_closed()
        return self.templates.refusal(request) if request.channel == WHATSAPP else None

    def ledger_copy(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(entry) for entry in self.ledger]

    def stats(self) -> dict[str, Any]:
        with self.lock:
            per_message = Counter((e["channel"], e["recipient"], e["text"]) for e in self.ledger)
            per_recipient = Counter((e["channel"], e["recipient"]) for e in self.ledger)
            return {
                "accepted_total": len(self.ledger),
                "duplicates": sum(n - 1 for n in per_message.values() if n > 1),
                "requests_total": self.requests["send"],
                "requests_accepted": self.requests["accepted"],
                "requests_rejected": self.requests["rejected"],
                "requests_unauthorized": self.requests["unauthorized"],
                "requests_invalid": self.requests["invalid"],
                "read_requests": self.requests["read"],
                "faults_fired": dict(self.faults_fired),
                "per_message": [
                    {"channel": c, "recipient": r, "text": t, "count": n}
                    for (c, r, t), n in sorted(per_message.items())
                ],
                "per_recipient": [
                    {"channel": c, "recipient": r, "count": n} for (c, r), n in sorted(per_recipient.items())
                ],
            }

    def add_chat_message(
        self, *, account_id: str, attendee_id: str, text: str, timestamp: str, is_sender: bool
    ) -> dict[str, Any]:
        """A message that reached the chat without an API send (typed on another device)."""
        with self.lock:
            pair = (account_id, attendee_id)
            thread_id = self.chat_by_pair.get(pair)
            if thread_id is None:
                thread_id = token(16)
                self.chat_by_pair[pair] = thread_id
                self.chats[thread_id] = _Chat(thread_id, account_id, attendee_id)
            entry = {
                "provider_message_id": token(16),
                "thread_id": thread_id,
                "text": text,
                "timestamp": timestamp,
                "is_sender": is_sender,
            }
            self.chats[thread_id].messages.append(entry)
            return dict(entry)

    def chat_messages(self, chat_id: str) -> list[dict[str, Any]] | None:
        with self.lock:
            chat = self.chats.get(chat_id)
            if chat is None:
                return None
            # Unipile lists the most recent first, by date; a hand-typed message may be
            # added later with an earlier timestamp.
            newest_first = sorted(chat.messages, key=lambda e: _parse_time(e["timestamp"]), reverse=True)
            return [
                {
                    "object": "Message",
                    "id": e["provider_message_id"],
                    "chat_id": chat_id,
                    "provider_id": e["provider_message_id"],
                    "sender_id": chat.account_id if e.get("is_sender", True) else chat.attendee_id,
                    "text": e["text"],
                    "timestamp": e["timestamp"],
                    "is_sender": 1 if e.get("is_sender", True) else 0,
                    "attachments": [],
                    "hidden": 0,
                    "deleted": 0,
                    "seen": 0,
                }
                for e in newest_first
            ]


_DIALECTS: dict[str, Dialect] = {
    WHATSAPP: whatsapp.WhatsAppDialect(),
    MESSENGER: messenger.MessengerDialect(),
    LINKEDIN: unipile.UnipileDialect(),
}


# --- HTTP server --------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # 8 dispatcher processes x 8 threads connect at once; the default backlog of 5 would make
    # some of them see connection timeouts for nothing.
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state = state
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake every handler blocked on an idle keep-alive connection so its thread ends."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that gave up (timeouts, drops) are part of the job, not errors.
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm against the client's
    # delayed ACK every response would stall for ~40 ms.
    disable_nagle_algorithm = True
    server_version = "sendonce-fake-provider/1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        # Thousands of requests per test: the ledger and stats are the record, not stderr.
        return

    @property
    def state(self) -> _State:
        return self.server.state

    # --- plumbing ---

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise Invalid("body too large")
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, body: object, headers: Mapping[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _answer(self, answer: Answer) -> None:
        status, body, headers = answer
        self._reply(status, body, headers)

    def _drop(self) -> None:
        """Close the connection without a response: the client cannot tell what happened."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _guarded(self, handler: Any) -> None:
        try:
            handler()
        except (ConnectionError, TimeoutError):
            self.close_connection = True

    def do_GET(self) -> None:
        self._guarded(self._get)

    def do_POST(self) -> None:
        self._guarded(self._post)

    # --- routing ---

    def _get(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path == "/_fake/health":
            self._reply(200, {"ok": True})
        elif path == "/_fake/ledger":
            self._reply(200, {"messages": self.state.ledger_copy()})
        elif path == "/_fake/stats":
            self._reply(200, self.state.stats())
        elif path == "/_fake/faults":
            self._reply(200, self.state.config.model_dump(mode="json"))
        elif (found := _UNIPILE_CHAT_MESSAGES.match(path)) is not None:
            self._unipile_read_back(found.group(1), parse_qs(url.query))
        elif (found := _GRAPH_TEMPLATES.match(path)) is not None:
            self._whatsapp_templates(found.group(2))
        elif (found := _UNIPILE_USER.match(path)) is not None:
            self._unipile_profile(found.group(1))
        else:
            self._reply(404, {"error": "not found", "path": path})

    def _post(self) -> None:
        path = urlsplit(self.path).path
        try:
            body = self._read_body()
        except (Invalid, ValueError):
            self.close_connection = True
            self._reply(400, {"error": "unreadable body"})
            return
        if path == "/_fake/reset":
            self.state.reset()
            self._reply(200, {"ok": True})
        elif path == "/_fake/chat_messages":
            try:
                typed = ChatMessage.model_validate_json(body or b"{}")
            except ValidationError as exc:
                self._reply(400, {"error": "invalid chat message", "detail": str(exc)})
                return
            self._reply(200, _add_chat_message(self.state, typed))
        elif path == "/_fake/faults":
            try:
                config = parse_faults(json.loads(body or b"{}"))
            except (ValueError, ValidationError) as exc:
                self._reply(400, {"error": "invalid fault configuration", "detail": str(exc)})
                return
            self.state.set_faults(config)
            self._reply(200, config.model_dump(mode="json"))
        elif path in _CONTROL_POSTS:
            self._control(path, body)
        elif (found := _GRAPH_SEND.match(path)) is not None:
            self._graph_send(found.group(2), body)
        elif path.rstrip("/") == "/api/v1/users/invite":
            self._unipile_invite(body)
        elif path.rstrip("/") == "/api/v1/chats":
            self._unipile_send(body)
        else:
            self._reply(404, {"error": "not found", "path": path})

    # --- providers ---

    def _bearer_ok(self, channel: str) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            token.strip(), self.state.tokens[channel]
        )

    def _graph_send(self, sender_id: str, raw: bytes) -> None:
        self.state.count("send")
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        channel = WHATSAPP if isinstance(data, Mapping) and "messaging_product" in data else MESSENGER
        dialect = _DIALECTS[channel]
        if not self._bearer_ok(channel):
            self.state.count("unauthorized")
            self.state.count("rejected")
            self._answer(dialect.unauthorized())
            return
        try:
            if not isinstance(data, Mapping):
                raise Invalid("body must be a JSON object")
            parse = whatsapp.parse_request if channel == WHATSAPP else messenger.parse_request
            request = parse(sender_id, data)
        except Invalid as exc:
            self.state.count("invalid")
            self.state.count("rejected")
            self._answer(dialect.invalid(str(exc)))
            return
        self._serve(request, dialect)

    def _unipile_send(self, raw: bytes) -> None:
        self.state.count("send")
        dialect = _DIALECTS[LINKEDIN]
        key = self.headers.get("X-API-KEY", "")
        if not secrets.compare_digest(key, self.state.tokens[LINKEDIN]):
            self.state.count("unauthorized")
            self.state.count("rejected")
            self._answer(dialect.unauthorized())
            return
        try:
            request = unipile.parse_request(self.headers.get("Content-Type", ""), raw)
        except (Invalid, UnicodeDecodeError) as exc:
            self.state.count("invalid")
            self.state.count("rejected")
            self._answer(dialect.invalid(str(exc)))
            return
        self._serve(request, dialect)

    def _control(self, path: str, body: bytes) -> None:
        try:
            data = json.loads(body or b"{}")
            if path == "/_fake/windows":
                self.state.enforce_windows = bool(data["enforce"])
                self._reply(200, {"enforce": self.state.enforce_windows})
            elif path == "/_fake/inbound":
                at = datetime.fromisoformat(data["timestamp"]) if data.get("timestamp") else datetime.now(UTC)
                _add_inbound(self.state, str(data["channel"]), str(data["sender"]), str(data["contact"]), at)
                self._reply(200, {"ok": True})
            elif path == "/_fake/whatsapp/templates":
                self.state.templates.put(
                    str(data["business_account_id"]), list(data["phone_number_ids"]), list(data["templates"])
                )
                self._reply(200, {"ok": True})
            else:
                self._reply(200, _accept_invitation(self.state, data["account_id"], data["provider_id"]))
        except (ValueError, KeyError, TypeError, LookupError) as exc:
            self._reply(400, {"error": "invalid control request", "detail": str(exc)})

    def _whatsapp_templates(self, business_account_id: str) -> None:
        self.state.count("read")
        if not self._bearer_ok(WHATSAPP):
            self._answer(_DIALECTS[WHATSAPP].unauthorized())
            return
        found = self.state.templates.listing(business_account_id)
        if found is None:
            self._answer(graph_error(400, 100, "(#100) Unsupported get request."))
            return
        self._reply(200, {"data": found, "paging": {"cursors": {"before": "MAZDZD", "after": "MjQZD"}}})

    def _unipile_profile(self, identifier: str) -> None:
        self.state.count("read")
        if not secrets.compare_digest(self.headers.get("X-API-KEY", ""), self.state.tokens[LINKEDIN]):
            self._answer(_DIALECTS[LINKEDIN].unauthorized())
            return
        self._reply(200, unipile.profile(identifier))

    def _unipile_invite(self, raw: bytes) -> None:
        self.state.count("send")
        dialect = _DIALECTS[LINKEDIN]
        if not secrets.compare_digest(self.headers.get("X-API-KEY", ""), self.state.tokens[LINKEDIN]):
            self.state.count("unauthorized")
            self.state.count("rejected")
            self._answer(dialect.unauthorized())
            return
        try:
            request = unipile.parse_invitation(raw)
        except Invalid as exc:
            self.state.count("invalid")
            self.state.count("rejected")
            self._answer(dialect.invalid(str(exc)))
            return
        self._serve(request, dialect)

    def _unipile_read_back(self, chat_id: str, query: Mapping[str, list[str]]) -> None:
        self.state.count("read")
        dialect = _DIALECTS[LINKEDIN]
        key = self.headers.get("X-API-KEY", "")
        if not secrets.compare_digest(key, self.state.tokens[LINKEDIN]):
            self._answer(dialect.unauthorized())
            return
        items = self.state.chat_messages(chat_id)
        if items is None:
            self._answer(unipile_error(404, "resource_not_found", "Resource not found", f"chat {chat_id}"))
            return
        limit = int(query.get("limit", ["100"])[0] or 100)
        self._reply(200, {"object": "MessageList", "items": items[:limit], "cursor": None})

    def _serve(self, request: SendRequest, dialect: Dialect) -> None:
        state = self.state
        refused = state.refusal(request, dialect)
        if refused is not None:
            state.count("rejected")
            self._answer(refused)
            return
        decision = state.decide(request.channel, request.sender_id, request.recipient)
        if decision.latency_seconds > 0 and state.stopping.wait(decision.latency_seconds):
            self._drop()
            return
        rule = decision.rule
        action = rule.action if rule is not None else None

        if rule is None or action in (
            FaultAction.ACCEPT_THEN_TIMEOUT,
            FaultAction.ACCEPT_THEN_DROP,
            FaultAction.ACCEPT_THEN_5XX,
        ):
            entry = state.record(
                channel=request.channel,
                sender_id=request.sender_id,
                recipient=request.recipient,
                text=request.text,
                correlation=request.correlation,
                fault=action.value if action is not None else None,
                kind=request.kind,
            )
            emitter = state.webhooks
            if emitter is not None:
                emitter.accepted(entry)
            if action is FaultAction.ACCEPT_THEN_DROP:
                self._drop()
                return
            if action is FaultAction.ACCEPT_THEN_5XX:
                assert rule is not None
                self._answer(dialect.server_error(rule.status))
                return
            if action is FaultAction.ACCEPT_THEN_TIMEOUT:
                assert rule is not None
                if state.stopping.wait(rule.hold_ms / 1000):
                    self._drop()
                    return
            self._answer(dialect.accepted(entry))
            return

        assert rule is not None
        state.count("rejected")
        if action is FaultAction.RATE_LIMIT:
            self._answer(dialect.rate_limited(rule.retry_after_seconds))
        elif action is FaultAction.SERVER_ERROR:
            self._answer(dialect.server_error(rule.status))
        elif action is FaultAction.PERMANENT:
            self._answer(dialect.permanent())
        elif action is FaultAction.ERROR_CODE:
            assert rule.code is not None
            self._answer(dialect.error_code(rule.code, rule.error_status))
        else:
            self._answer(dialect.sender_blocked())


def _add_chat_message(state: _State, typed: ChatMessage) -> dict[str, Any]:
    return state.add_chat_message(
        account_id=typed.account_id,
        attendee_id=typed.attendee_id,
        text=typed.text,
        timestamp=_iso(typed.timestamp) if typed.timestamp is not None else _now_iso(),
        is_sender=typed.is_sender,
    )


_CONTROL_POSTS = frozenset(
    {"/_fake/windows", "/_fake/inbound", "/_fake/whatsapp/templates", "/_fake/unipile/accept"}
)


def _add_inbound(state: _State, channel: str, sender: str, contact: str, at: datetime) -> None:
    with state.lock:
        key = (channel, sender, contact)
        state.inbound[key] = max(at, state.inbound.get(key, at))


def _accept_invitation(state: _State, account_id: str, provider_id: str) -> dict[str, Any]:
    """The person accepts: the ``new_relation`` webhook body Unipile would send (a test
    delivers it). Only an invitation the fake accepted can be accepted."""
    with state.lock:
        if (account_id, provider_id) not in state.invitations:
            raise LookupError(f"no invitation from {account_id} to {provider_id}")
    return unipile.new_relation(account_id, provider_id, None)


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the fake provider binds loopback only, not {host!r}")


class FakeProvider:
    """The fake, in this process: ``start()`` returns its base URL, ``stop()`` ends it."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        whatsapp_token: str = DEFAULT_WHATSAPP_TOKEN,
        messenger_token: str = DEFAULT_MESSENGER_TOKEN,
        unipile_api_key: str = DEFAULT_UNIPILE_KEY,
        latency_ms: float = 0.0,
        seed: int = 0,
    ) -> None:
        _check_loopback(host)
        self._host = host
        self._port = port
        tokens = {WHATSAPP: whatsapp_token, MESSENGER: messenger_token, LINKEDIN: unipile_api_key}
        self._state = _State(tokens=tokens, latency_ms=latency_ms, seed=seed)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        return f"FakeProvider(url={self._url!r})"

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the fake provider is not running: call start() first")
        return self._url

    def start(self) -> str:
        if self._server is not None:
            return self.url
        server = _Server((self._host, self._port), self._state)
        self._server = server
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._url = f"http://{host}:{server.server_port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="fake-provider", daemon=True
        )
        self._thread.start()
        return self._url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # Wake held and delayed requests first; they close their connections unanswered.
        self._state.stopping.set()
        self.send_webhooks(None)
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeProvider:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def ledger(self) -> list[dict[str, Any]]:
        return self._state.ledger_copy()

    def stats(self) -> dict[str, Any]:
        return self._state.stats()

    def counts_per_recipient(self) -> dict[tuple[str, str], int]:
        return dict(Counter((m["channel"], m["recipient"]) for m in self.ledger()))

    def counts_per_message(self) -> dict[tuple[str, str, str], int]:
        return dict(Counter((m["channel"], m["recipient"], m["text"]) for m in self.ledger()))

    def faults(self) -> FaultConfig:
        return self._state.config

    def set_faults(self, faults: FaultsInput) -> FaultConfig:
        """Replace the whole fault configuration (rule counters and rate buckets restart)."""
        config = parse_faults(faults)
        self._state.set_faults(config)
        return config

    def reset(self) -> None:
        """Forget the ledger, the chats, the counters and every fault."""
        self._state.reset()

    def send_webhooks(self, config: WebhookConfig | None) -> WebhookEmitter | None:
        """Start (or, with None, stop) status webhooks for every message accepted from now on."""
        old, self._state.webhooks = self._state.webhooks, None
        if old is not None:
            old.stop()
        if config is not None:
            self._state.webhooks = WebhookEmitter(config)
        return self._state.webhooks

    def set_windows(self, enforce: bool) -> None:
        """Enforce Meta's 24-hour windows (WhatsApp 131047, Messenger 10/2018278) or not."""
        self._state.enforce_windows = enforce

    def add_inbound(self, channel: str, sender: str, contact: str, at: datetime | None = None) -> None:
        """The contact wrote to the sender at ``at`` (default now): its window opens."""
        _add_inbound(self._state, channel, sender, contact, at or datetime.now(UTC))

    def set_templates(
        self, business_account_id: str, phone_number_ids: list[str], templates: list[dict[str, Any]]
    ) -> None:
        """A WABA's templates as ``GET /{waba-id}/message_templates`` lists them (``name``,
        ``language``, ``status``, ``category``, ``components``); sends are checked against them."""
        self._state.templates.put(business_account_id, phone_number_ids, templates)

    def accept_invitation(self, account_id: str, provider_id: str) -> dict[str, Any]:
        """The invited person accepts; returns the ``new_relation`` webhook body to deliver."""
        return _accept_invitation(self._state, account_id, provider_id)

    def add_chat_message(
        self,
        account_id: str,
        attendee_id: str,
        text: str,
        *,
        timestamp: datetime | None = None,
        is_sender: bool = True,
    ) -> dict[str, Any]:
        """Put a hand-typed message into the LinkedIn chat of (account, attendee): it shows in
        read-back, not in the ledger. Returns its id, ``thread_id`` and ``timestamp``."""
        typed = ChatMessage(
            account_id=account_id,
            attendee_id=attendee_id,
            text=text,
            timestamp=timestamp,
            is_sender=is_sender,
        )
        return _add_chat_message(self._state, typed)


class FakeProviderClient:
    """The control API over HTTP, for a fake running in another process. Each call uses its
    own short-lived connection, so a client never needs closing."""

    def __init__(self, base_url: str, *, timeout_seconds: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = httpx.Timeout(timeout_seconds)

    def __repr__(self) -> str:
        return f"FakeProviderClient({self.base_url!r})"

    def _call(self, method: str, path: str, body: object | None = None) -> Any:
        with httpx.Client(base_url=self.base_url, timeout=self._timeout, trust_env=False) as client:
            response = client.request(method, path, json=body)
        response.raise_for_status()
        return response.json()

    def health(self) -> bool:
        try:
            return bool(self._call("GET", "/_fake/health").get("ok"))
        except httpx.HTTPError:
            return False

    def ledger(self) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self._call("GET", "/_fake/ledger")["messages"]
        return messages

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._call("GET", "/_fake/stats")
        return stats

    def counts_per_recipient(self) -> dict[tuple[str, str], int]:
        return dict(Counter((m["channel"], m["recipient"]) for m in self.ledger()))

    def counts_per_message(self) -> dict[tuple[str, str, str], int]:
        return dict(Counter((m["channel"], m["recipient"], m["text"]) for m in self.ledger()))

    def faults(self) -> FaultConfig:
        return FaultConfig.model_validate(self._call("GET", "/_fake/faults"))

    def set_faults(self, faults: FaultsInput) -> FaultConfig:
        """Replace the whole fault configuration; validated here first, so a typo fails in the
        caller rather than as a 400."""
        config = parse_faults(faults)
        return FaultConfig.model_validate(self._call("POST", "/_fake/faults", config.model_dump(mode="json")))

    def reset(self) -> None:
        self._call("POST", "/_fake/reset", {})

    def set_templates(
        self, business_account_id: str, phone_number_ids: list[str], templates: list[dict[str, Any]]
    ) -> None:
        """See ``FakeProvider.set_templates``."""
        body = {"business_account_id": business_account_id, "phone_number_ids": phone_number_ids}
        self._call("POST", "/_fake/whatsapp/templates", {**body, "templates": templates})

    def add_chat_message(
        self,
        account_id: str,
        attendee_id: str,
        text: str,
        *,
        timestamp: datetime | None = None,
        is_sender: bool = True,
    ) -> dict[str, Any]:
        """Put a hand-typed message into a LinkedIn chat; see ``FakeProvider.add_chat_message``."""
        typed = ChatMessage(
            account_id=account_id,
            attendee_id=attendee_id,
            text=text,
            timestamp=timestamp,
            is_sender=is_sender,
        )
        added: dict[str, Any] = self._call("POST", "/_fake/chat_messages", typed.model_dump(mode="json"))
        return added

    def wait_for_ledger(self, count: int, timeout_seconds: float = 30.0) -> list[dict[str, Any]]:
        """Poll until the fake has accepted at least ``count`` messages."""
        deadline = time.monotonic() + timeout_seconds
        while True:
            ledger = self.ledger()
            if len(ledger) >= count:
                return ledger
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake provider accepted {len(ledger)} of {count} messages")
            time.sleep(0.05)


# --- CLI ----------------------------------------------------------------------------------


def _load_faults(value: str) -> FaultConfig:
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    return parse_faults(json.loads(text))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.fake_provider",
        description="Fake WhatsApp Cloud API, Messenger Send API and Unipile on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token-whatsapp", default=DEFAULT_WHATSAPP_TOKEN)
    parser.add_argument("--token-messenger", default=DEFAULT_MESSENGER_TOKEN)
    parser.add_argument("--token-unipile", default=DEFAULT_UNIPILE_KEY)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="default latency of every send")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault probability RNG")
    parser.add_argument("--faults", help="initial fault configuration: JSON, or @file.json")
    parser.add_argument("--ready-file", type=Path, help="written with the base URL once serving")
    args = parser.parse_args(argv)

    try:
        fake = FakeProvider(
            host=args.host,
            port=args.port,
            whatsapp_token=args.token_whatsapp,
            messenger_token=args.token_messenger,
            unipile_api_key=args.token_unipile,
            latency_ms=args.latency_ms,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = fake.start()
    try:
        if args.faults:
            fake.set_faults(_load_faults(args.faults))
        if args.ready_file is not None:
            # Written whole, then renamed: a watcher never reads half a URL.
            partial = args.ready_file.with_name(args.ready_file.name + ".partial")
            partial.write_text(url + "\n")
            partial.replace(args.ready_file)
        print(url, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
