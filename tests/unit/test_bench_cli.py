"""`make bench` must at least start: every scenario adds its options to one parser, and two
scenarios once defined the same flag, so argparse refused to run any of them."""

from __future__ import annotations

import pytest

from devstack.bench.__main__ import SCENARIOS, main
from devstack.bench.throughput import BenchResult, ratios


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


def _run(sender: str, processes: int, latency_ms: int, rate: float, store_busy: float = 0.0) -> BenchResult:
    return BenchResult(
        sender=sender,
        processes=processes,
        latency_ms=latency_ms,
        concurrency=8,
        messages=400,
        wall_seconds=10.0,
        messages_per_second=rate,
        duplicates=0,
        sent=400,
        sender_cpu_ms_per_message=1.0,
        store_cpu_ms_per_message=1.0,
        store_busy_cores=store_busy,
    )


def test_dispatcher_scaling_is_graded_only_where_the_store_has_headroom() -> None:
    results = [
        _run("naive", 1, 250, 26.0),
        _run("dispatcher", 1, 250, 21.0, store_busy=0.5),
        _run("dispatcher", 4, 250, 24.0, store_busy=0.9),
        _run("dispatcher", 1, 1000, 7.7, store_busy=0.15),
        _run("dispatcher", 4, 1000, 27.3, store_busy=0.45),
    ]
    lines = dict(ratios(results, scaling_latency_ms=1000))
    assert lines == {
        "250 ms: 1 dispatcher / naive = 0.81x (target 0.8x: met)": True,
        "250 ms: 4 vs 1 dispatchers = 1.14x (information, store busy up to 0.90 cores: the store is the limit)": True,
        "1000 ms: 4 vs 1 dispatchers = 3.55x (target 1.8x: met, store busy up to 0.45 cores)": True,
    }
    slow = [*results[:4], _run("dispatcher", 4, 1000, 12.0, store_busy=0.3)]
    assert (
        dict(ratios(slow, scaling_latency_ms=1000))[
            "1000 ms: 4 vs 1 dispatchers = 1.56x (target 1.8x: MISSED, store busy up to 0.30 cores)"
        ]
        is False
    )
    saturated = [*results[:4], _run("dispatcher", 4, 1000, 27.3, store_busy=0.95)]
    verdict = [ok for line, ok in ratios(saturated, scaling_latency_ms=1000) if line.startswith("1000 ms")]
    assert verdict == [False], "a saturated store cannot grade the scaling, even when the ratio looks met"
