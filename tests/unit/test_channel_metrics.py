"""Per-channel metrics: the dashboard's sent, failed, unknown and provider latency series are
EMF documents with a ``channel`` dimension, next to the across-channel totals the alarms read."""

from __future__ import annotations

import json

import pytest
from aws_lambda_powertools import Metrics

from shared.observability import Metric, Tally


def test_tally_emits_per_channel_counts_and_latency(capsys: pytest.CaptureFixture[str]) -> None:
    tally = Tally()
    tally.add(Metric.SENT, channel="whatsapp")
    tally.add(Metric.SENT, channel="whatsapp")
    tally.add(Metric.FAILED, channel="linkedin")
    tally.add(Metric.AMBIGUOUS, channel="linkedin")
    tally.add(Metric.RETRIED)  # not a per-channel series
    for seconds in (0.1, 0.25):
        tally.add_provider_latency("whatsapp", seconds)
    sink = Metrics(namespace="sendonce-test")
    tally.emit(sink)
    sink.clear_metrics()  # Metrics instances share one set: leave nothing for other tests
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    per_channel = {d["channel"]: d for d in documents}
    assert set(per_channel) == {"whatsapp", "linkedin"}
    whatsapp, linkedin = per_channel["whatsapp"], per_channel["linkedin"]
    assert whatsapp["Sent"] == [2.0]
    assert whatsapp["ProviderLatency"] == [100.0, 250.0]
    assert {k for k in linkedin if k[0].isupper()} == {"Failed", "Ambiguous"}
    assert "Retried" not in whatsapp
    assert all("channel" in d["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0] for d in documents)
    assert tally.counts()["Sent"] == 2 and tally.counts()["Retried"] == 1


def test_more_than_100_latencies_are_split_into_documents(capsys: pytest.CaptureFixture[str]) -> None:
    tally = Tally()
    for _ in range(150):
        tally.add_provider_latency("messenger", 0.01)
    sink = Metrics(namespace="sendonce-test")
    tally.emit(sink)
    sink.clear_metrics()  # Metrics instances share one set: leave nothing for other tests
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    values = [v for d in documents for v in d["ProviderLatency"]]
    assert len(values) == 150 and all(d["channel"] == "messenger" for d in documents)
