"""Pure parts of the campaign engine: balancing a pool, the operator surface's help, the
control event's commands and the queue state machine's new terminal state."""

from __future__ import annotations

import argparse
import json
import uuid
from collections import Counter
from pathlib import Path

import pytest

from devstack.cli import build_parser
from shared.events import ControlRequest, InvalidEventError, parse_event
from shared.queue import ALLOWED_TRANSITIONS, IllegalTransitionError, QueueStatus, check_transition
from shared.sequences import SenderLoad, assign_senders

EVENTS = Path(__file__).resolve().parents[2] / "events"
A, B, C = (uuid.UUID(int=n) for n in (1, 2, 3))


def test_uncapped_senders_share_new_contacts_evenly_after_what_they_carry() -> None:
    assigned = assign_senders(10, [SenderLoad(A, None, 4), SenderLoad(B, None, 0)])
    assert Counter(assigned) == {A: 3, B: 7}, "B catches up first, then they alternate"


def test_capped_senders_get_what_their_room_allows_first() -> None:
    assigned = assign_senders(40, [SenderLoad(A, 30, 0), SenderLoad(B, 10, 0)])
    assert Counter(assigned) == {A: 30, B: 10}
    assert assigned[:20] == [A] * 20


def test_a_paused_sender_gets_contacts_only_when_nobody_else_can_send() -> None:
    assert Counter(assign_senders(6, [SenderLoad(A, 0, 0), SenderLoad(B, None, 9)])) == {B: 6}
    assert Counter(assign_senders(6, [SenderLoad(A, 0, 0), SenderLoad(B, 0, 0), SenderLoad(C, 0, 3)])) == {
        A: 3,
        B: 3,
    }
    with pytest.raises(ValueError, match="at least one sender"):
        assign_senders(1, [])


def _commands(
    parser: argparse.ArgumentParser, path: str = "sendonce"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, f"{path} {name}")
    return found


@pytest.mark.parametrize("group", ["campaign", "sender"])
def test_every_engine_command_and_option_has_help(group: str) -> None:
    commands = [(p, c) for p, c in _commands(build_parser()) if p.startswith(f"sendonce {group}")]
    names = {p for p, _ in commands}
    expected = {
        "campaign": {"create", "start", "pause", "resume", "cancel", "stop-contact", "status"},
        "sender": {"show", "pause", "resume", "configure"},
    }[group]
    assert {f"sendonce {group} {c}" for c in expected} <= names
    for path, command in commands:
        assert command.format_help(), path
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{path} {'/'.join(action.option_strings) or action.dest} has no help"


def test_every_control_sample_is_one_command() -> None:
    commands = {
        parse_event(ControlRequest, json.loads(p.read_text())).root.command
        for p in EVENTS.glob("control-*.json")
    }
    assert commands == {
        "campaign.create",
        "campaign.start",
        "campaign.pause",
        "campaign.resume",
        "campaign.cancel",
        "campaign.stop-contact",
        "sender.pause",
        "sender.resume",
        "sender.configure",
    }
    with pytest.raises(InvalidEventError, match="does not match any of the expected tags"):
        parse_event(ControlRequest, {"command": "campaign.delete", "source": "sendonce.manual"})


def test_cancelled_is_terminal_and_never_taken_from_sending() -> None:
    for source in (QueueStatus.PENDING, QueueStatus.CLAIMED):
        check_transition(source, QueueStatus.CANCELLED)
    assert not [t for (s, t) in ALLOWED_TRANSITIONS if s is QueueStatus.CANCELLED], "nothing leaves cancelled"
    with pytest.raises(IllegalTransitionError):
        check_transition(QueueStatus.SENDING, QueueStatus.CANCELLED)
