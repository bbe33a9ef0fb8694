"""Every `sendonce` command says what it does, and every option and argument what it means."""

from __future__ import annotations

import argparse

import pytest

from devstack.cli import build_parser, explain_failure
from shared.enqueue import UnknownCampaignError
from shared.runtime import ConfigurationError
from shared.storage.db import DatabaseUnavailableError


def _walk(
    parser: argparse.ArgumentParser, path: str = "sendonce"
) -> list[tuple[str, argparse.ArgumentParser, str | None]]:
    """(command path, parser, the help its parent lists it with) for every command."""
    found: list[tuple[str, argparse.ArgumentParser, str | None]] = [(path, parser, "top")]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                for entry in _walk(sub, f"{path} {name}"):
                    found.append(
                        entry if entry[0] != f"{path} {name}" else (entry[0], entry[1], listed.get(name))
                    )
    return found


COMMANDS = _walk(build_parser())


def test_the_tree_holds_every_command() -> None:
    paths = {path for path, _, _ in COMMANDS}
    top = {"stats", "audit", "resolve", "redrive", "duplicates", "migrate", "sweep", "campaign", "sender"}
    assert {f"sendonce {c}" for c in top} <= paths
    assert len(paths) >= 20


@pytest.mark.parametrize(("path", "parser", "listed"), COMMANDS, ids=[p for p, _, _ in COMMANDS])
def test_command_and_its_options_have_help(
    path: str, parser: argparse.ArgumentParser, listed: str | None
) -> None:
    assert listed, f"{path} has no help line in its parent's list"
    assert parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"{path} {name} has no help"


@pytest.mark.parametrize(
    ("exc", "starts"),
    [
        (ConfigurationError("set DATABASE_URL or SENDONCE_DATABASE_SECRET_ID"), "no database configured"),
        (DatabaseUnavailableError("Postgres at h:5432/d is unreachable"), "database unreachable"),
        (UnknownCampaignError("no campaign x"), "unknown campaign"),
    ],
)
def test_known_failures_are_explained(exc: Exception, starts: str) -> None:
    line = explain_failure(exc)
    assert line is not None and line.startswith(starts) and "\n" not in line


def test_a_bug_keeps_its_traceback() -> None:
    assert explain_failure(KeyError("x")) is None
