"""Status webhooks from the fake provider, signed as the providers sign them, with faults.

``WebhookEmitter`` is given every message the fake accepted and POSTs its status webhooks to
a receiver: ``{url}/webhooks/whatsapp|messenger|unipile``. Faults: a random delay per
delivery, a share delivered twice, a share never delivered. A delivery the receiver does not
answer 2xx is retried a few times, as Meta and Unipile do (Unipile: five retries,
developer.unipile.com/docs/webhooks-2).

``WebhookReceiver`` is the webhook function's logic (``shared.webhooks.handle_request``) behind
a loopback HTTP server, storing into the given Postgres.

Shapes:
* WhatsApp: ``statuses[]`` with ``id``, ``status``, ``timestamp``, ``recipient_id`` and
  ``biz_opaque_callback_data`` (Meta, WhatsApp Cloud API, "Status messages" webhook).
* Messenger: a ``message_echoes`` echo with ``metadata``, then a ``message_deliveries``
  delivery with ``mids`` (Meta, Messenger Platform webhook events).
* Unipile: the messaging webhook (``message_received``) for the account's own message,
  ``is_sender`` true (Unipile, "New messages" webhook).
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from shared.providers.outcome import Channel
from shared.webhooks import WebhookDeps, handle_request

PATHS = {"whatsapp": "whatsapp", "messenger": "messenger", "linkedin": "unipile"}
RETRIES = 5


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    meta_app_secret: str
    unipile_secret: str
    delay_ms_min: float = Field(default=0.0, ge=0)
    delay_ms_max: float = Field(default=0.0, ge=0)
    duplicate_probability: float = Field(default=0.0, ge=0, le=1)
    loss_probability: float = Field(default=0.0, ge=0, le=1)
    seed: int = 0


def documents(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The status webhooks one accepted message produces, in order."""
    now = datetime.now(UTC)
    epoch = int(now.timestamp())
    channel = entry["channel"]
    if channel == "whatsapp":
        return [
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "waba-fake",
                        "changes": [
                            {
                                "field": "messages",
                                "value": {
                                    "messaging_product": "whatsapp",
                                    "metadata": {"phone_number_id": entry["sender_id"]},
                                    "statuses": [
                                        {
                                            "id": entry["provider_message_id"],
                                            "status": status,
                                            "timestamp": str(epoch),
                                            "recipient_id": entry["recipient"],
                                            **(
                                                {"biz_opaque_callback_data": entry["correlation"]}
                                                if entry["correlation"]
                                                else {}
                                            ),
                                        }
                                    ],
                                },
                            }
                        ],
                    }
                ],
            }
            for status in ("sent", "delivered")
        ]
    if channel == "messenger":
        ms = epoch * 1000
        page, person, mid = entry["sender_id"], entry["recipient"], entry["provider_message_id"]
        echo = {
            "sender": {"id": page},
            "recipient": {"id": person},
            "timestamp": ms,
            "message": {"is_echo": True, "mid": mid, "text": entry["text"], "metadata": entry["correlation"]},
        }
        delivery = {
            "sender": {"id": person},
            "recipient": {"id": page},
            "timestamp": ms,
            "delivery": {"mids": [mid], "watermark": ms},
        }
        return [
            {"object": "page", "entry": [{"id": page, "time": ms, "messaging": [m]}]}
            for m in (echo, delivery)
        ]
    account = entry["sender_id"]
    return [
        {
            "event": "message_received",
            "account_id": account,
            "account_type": "LINKEDIN",
            "account_info": {"user_id": account},
            "chat_id": entry["thread_id"],
            "message_id": entry["provider_message_id"],
            "message": entry["text"],
            "timestamp": now.isoformat(),
            "is_sender": True,
            "sender": {"attendee_provider_id": account},
            "attendees": [{"attendee_provider_id": account}, {"attendee_provider_id": entry["recipient"]}],
        }
    ]


def sign(config: WebhookConfig, channel: str, body: bytes) -> dict[str, str]:
    if channel == "linkedin":
        return {"Unipile-Auth": config.unipile_secret, "Content-Type": "application/json"}
    digest = hmac.new(config.meta_app_secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


class WebhookEmitter:
    """One thread delivering scheduled webhooks in due order; ``accepted`` schedules them."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._queue: list[tuple[float, int, str, str, bytes, int]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = False
        self.counts = Counter[str]()
        # Per provider message id: how many of its webhooks were delivered (answered 2xx).
        self.delivered: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        # Webhooks of messages to these recipients are parked until release_held(): late
        # beyond any grace period, as a webhook Meta is still retrying.
        self.hold_recipients: set[str] = set()
        self._held: list[tuple[str, str, bytes]] = []
        self._client = httpx.Client(timeout=httpx.Timeout(30.0), trust_env=False)
        self._thread = threading.Thread(target=self._run, name="fake-webhooks", daemon=True)
        self._thread.start()

    def accepted(self, entry: dict[str, Any]) -> None:
        with self._cond:
            for document in documents(entry):
                key = entry["provider_message_id"]
                if self._rng.random() < self.config.loss_probability:
                    self.counts["lost"] += 1
                    self.lost[key] += 1
                    continue
                copies = 2 if self._rng.random() < self.config.duplicate_probability else 1
                body = json.dumps(document).encode()
                if entry["recipient"] in self.hold_recipients:
                    self._held.append((key, entry["channel"], body))
                    self.counts["held"] += 1
                    continue
                for _ in range(copies):
                    delay = self._rng.uniform(self.config.delay_ms_min, self.config.delay_ms_max) / 1000
                    due = time.monotonic() + delay
                    heapq.heappush(self._queue, (due, next(self._seq), key, entry["channel"], body, 0))
                    self.counts["scheduled"] += 1
            self._cond.notify()

    def release_held(self) -> None:
        with self._cond:
            for key, channel, body in self._held:
                heapq.heappush(self._queue, (time.monotonic(), next(self._seq), key, channel, body, 0))
            self._held.clear()
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self.counts["in_flight"]

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._queue or self._queue[0][0] > time.monotonic()):
                    timeout = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(timeout)
                if self._stop:
                    return
                _, seq, key, channel, body, tries = heapq.heappop(self._queue)
                self.counts["in_flight"] += 1
            ok = self._post(channel, body)
            with self._cond:
                self.counts["in_flight"] -= 1
                if ok:
                    self.counts["delivered"] += 1
                    self.delivered[key] += 1
                elif tries < RETRIES:
                    self.counts["retried"] += 1
                    due = time.monotonic() + 0.5 * (tries + 1)
                    heapq.heappush(self._queue, (due, seq, key, channel, body, tries + 1))
                else:
                    self.counts["given_up"] += 1

    def _post(self, channel: str, body: bytes) -> bool:
        try:
            response = self._client.post(
                f"{self.config.url.rstrip('/')}/webhooks/{PATHS[channel]}",
                content=body,
                headers=sign(self.config, channel, body),
            )
        except httpx.HTTPError:
            return False
        return 200 <= response.status_code < 300

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        self._client.close()


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, deps: WebhookDeps) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.deps = deps


class _ReceiverHandler(BaseHTTPRequestHandler):
    server: _ReceiverServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        name = self.path.rstrip("/").rsplit("/", 1)[-1]
        channel = {
            "whatsapp": Channel.WHATSAPP,
            "messenger": Channel.MESSENGER,
            "unipile": Channel.LINKEDIN,
        }.get(name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if channel is None:
            self.send_response(404)
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items()}
        result = handle_request(self.server.deps, channel, headers, body.decode("utf-8"), False)
        payload = result.body.encode()
        self.send_response(result.status_code)
        self.send_header("Content-Type", result.content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class WebhookReceiver:
    """The webhook function's logic on a loopback port: ``start()`` returns its base URL."""

    def __init__(self, deps: WebhookDeps) -> None:
        self._server = _ReceiverServer(deps)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    def start(self) -> str:
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
