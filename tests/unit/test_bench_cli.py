"""`make bench` must at least start: every scenario adds its options to one parser, and two
scenarios once defined the same flag, so argparse refused to run any of them."""

from __future__ import annotations

import pytest

from devstack.bench.__main__ import SCENARIOS, main


def test_every_scenarios_options_fit_one_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    usage = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in usage


def test_an_unknown_scenario_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["no-such-scenario"])
    assert exit_.value.code == 2
    assert "no-such-scenario" in capsys.readouterr().err
