"""The single-process counters and histograms expose what prometheus-client's would."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from interlock.telemetry.local_metrics import LocalCounterFamily, LocalHistogramFamily

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# On a bound, just above and below it, zero, beyond every bound, and negative.
AMOUNTS = (0.001, 0.0010001, 0.0099, 0.01, 0.5, 1.0, 0.0, 7.5, -0.25)


def without_timestamps(text: bytes) -> str:
    """The exposition with the ``_created`` values (creation times) blanked out."""
    return re.sub(r"(_created(?:\{[^}]*\})?) \S+", r"\1 T", text.decode())


def test_a_histogram_exposes_the_same_samples_as_prometheus_clients() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("latency_seconds", "Latency.", ("route",), buckets=BUCKETS)
    theirs.register(reference)
    local = LocalHistogramFamily("latency_seconds", "Latency.", ("route",), BUCKETS)
    ours.register(local)
    for amount in AMOUNTS:
        reference.labels("openai").observe(amount)
        local.labels("openai").observe(amount)
    reference.labels("aisdk")  # a child that saw nothing is exposed too, with zeros
    local.labels("aisdk")
    assert without_timestamps(generate_latest(ours)) == without_timestamps(generate_latest(theirs))


def test_a_counter_exposes_the_same_samples_as_prometheus_clients() -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Counter("requests", "Requests.", ("route", "status"))
    theirs.register(reference)
    local = LocalCounterFamily("requests", "Requests.", ("route", "status"))
    ours.register(local)
    for route, status, amount in (("openai", 200, 1), ("openai", 200, 2.5), ("aisdk", 500, 1)):
        reference.labels(route, status).inc(amount)
        local.labels(route, status).inc(amount)
    assert without_timestamps(generate_latest(ours)) == without_timestamps(generate_latest(theirs))


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    histogram = LocalHistogramFamily("h", "H.", (), BUCKETS).labels()
    for amount in (0.01, 0.01, 2.0):
        histogram.observe(amount)
    assert histogram.counts == [0, 2, 0, 0, 1]  # le=0.01 twice, +Inf once
    assert histogram.sum == pytest.approx(2.02)


def test_created_series_follow_prometheus_clients_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = CollectorRegistry()
    counter = LocalCounterFamily("c", "C.", ("x",))
    histogram = LocalHistogramFamily("h", "H.", ("x",), BUCKETS)
    registry.register(counter)
    registry.register(histogram)
    counter.labels("1").inc()
    histogram.labels("1").observe(0.5)
    assert b"c_created" in generate_latest(registry)
    assert b"h_created" in generate_latest(registry)
    monkeypatch.setattr("prometheus_client.metrics._use_created", False)
    assert b"_created" not in generate_latest(registry)
