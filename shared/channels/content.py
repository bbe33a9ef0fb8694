"""What a message's content is, for every channel: a JSON object with a ``kind``, stored in
``campaign_steps.content`` and ``send_queue.content`` (NULL there means plain text ``body``).

Each channel package validates its own kinds with pydantic models (``<channel>/content.py``);
this module only holds what they share, including :class:`WindowRule`: the one statement of
when a content may be sent, read both at enqueue (``shared.windows``) and before each send
(the channels' ``hold_reason``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

# Meta's 24-hour windows: WhatsApp's customer service window and Messenger's standard
# messaging window both open at each message the person sends (sources in the channel
# packages' content modules).
WINDOW = timedelta(hours=24)


class ContentModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def window_open(last_inbound_at: datetime | None, now: datetime, length: timedelta = WINDOW) -> bool:
    return last_inbound_at is not None and now - last_inbound_at < length


@dataclass(frozen=True)
class WindowRule:
    """A content that may be sent only within ``length`` of the contact's last message.
    ``rule`` names the provider's rule and ``remedy`` what to send instead, for the reasons
    an operator reads."""

    length: timedelta
    rule: str
    remedy: str

    def allows(self, last_inbound_at: datetime | None, at: datetime) -> bool:
        return window_open(last_inbound_at, at, self.length)

    @property
    def hours(self) -> int:
        return int(self.length.total_seconds() // 3600)
