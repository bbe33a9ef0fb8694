"""Collects every exploration the model tests run and prints their figures at the end of the
session, whatever the output capture (the figures go into the lead's notes)."""

from __future__ import annotations

import pytest

from tests.model.explorer import Exploration

_EXPLORATIONS: list[Exploration] = []


@pytest.fixture(scope="session")
def explorations() -> list[Exploration]:
    return _EXPLORATIONS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _EXPLORATIONS:
        return
    terminalreporter.section("send protocol model: state counts and times")
    for exploration in _EXPLORATIONS:
        terminalreporter.write_line(exploration.summary())
    states = sum(e.states for e in _EXPLORATIONS)
    seconds = sum(e.seconds for e in _EXPLORATIONS)
    terminalreporter.write_line(
        f"total: {len(_EXPLORATIONS)} explorations, {states:,} states, {seconds:.1f} s"
    )
