"""``Metrics``: label values stay within the configuration, children are bound once."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from interlock.errors import UpstreamOverloaded, UpstreamRejected
from interlock.settings import DeploymentConfig, FileConfig, ModelConfig
from interlock.telemetry.metrics import Metrics
from interlock.telemetry.usage_record import UsageRecord

CONFIG = FileConfig(
    models={
        "smart": ModelConfig(
            deployments=[DeploymentConfig(provider="openai", model="gpt-4o", name="smart-1")]
        )
    }
)


def record(**overrides: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": "req_1",
        "created_at": datetime.now(UTC),
        "user_id": "user-secret-id",
        "key_id": "key-secret-id",
        "tier": "free",
        "model": "smart",
        "provider": "openai",
        "deployment": "smart-1",
        "input_tokens": 10,
        "output_tokens": 20,
        "cached_tokens": 0,
        "cost": Decimal("0.5"),
        "latency_ms": 120,
        "ttft_ms": 30,
        "status": 200,
        "error": None,
        "attempts": 1,
        "streaming": True,
        "usage_source": "provider",
        "partial": False,
    }
    return UsageRecord(**{**values, **overrides})


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }


def test_labels_come_from_the_configuration() -> None:
    metrics = Metrics(CONFIG)
    metrics.request_done(record(), "openai", cache="miss", overhead_s=0.0004)
    metrics.request_done(
        record(model="x" * 150, deployment="", tier="made-up", status=404, error="model_not_found"),
        "other",
    )
    found = samples(metrics)
    requests = {labels for (name, labels) in found if name == "interlock_requests_total"}
    assert requests == {
        (("deployment", "smart-1"), ("model", "smart"), ("route", "openai"), ("status", "200")),
        (
            ("deployment", "none"),
            ("model", "unknown"),
            ("route", "other"),
            ("status", "404"),
        ),
    }
    text = metrics.render().decode()
    assert "secret-id" not in text
    assert "x" * 20 not in text
    assert (
        found[
            ("interlock_tokens_total", (("model", "smart"), ("tier", "free"), ("type", "output")))
        ]
        == 20
    )
    assert found[("interlock_cost_usd_total", (("model", "smart"), ("tier", "free")))] == 0.5
    assert found[("interlock_gateway_overhead_seconds_count", (("route", "openai"),))] == 1
    assert found[("interlock_cache_requests_total", (("model", "smart"), ("result", "miss")))] == 1


def test_a_finer_duration_replaces_the_records_milliseconds() -> None:
    metrics = Metrics(CONFIG)
    metrics.request_done(record(), "openai", duration_s=0.0123, overhead_s=0.0004)
    found = samples(metrics)
    durations = [
        value
        for (name, labels), value in found.items()
        if name == "interlock_request_duration_seconds_sum" and ("route", "openai") in labels
    ]
    assert durations == [0.0123]


def test_routes_are_bounded() -> None:
    assert Metrics.route("openai") == "openai"
    assert Metrics.route("aisdk") == "aisdk"
    assert Metrics.route("whatever") == "other"


def test_children_are_bound_once() -> None:
    metrics = Metrics(CONFIG)
    metrics.request_done(record(), "openai")
    bound = dict(metrics._bound)
    metrics.request_done(record(request_id="req_2"), "openai")
    assert metrics._bound.keys() == bound.keys()
    assert all(metrics._bound[key] is bound[key] for key in bound)
    assert (
        samples(metrics)[
            (
                "interlock_requests_total",
                (
                    ("deployment", "smart-1"),
                    ("model", "smart"),
                    ("route", "openai"),
                    ("status", "200"),
                ),
            )
        ]
        == 2
    )


def test_upstream_errors_by_class_not_by_provider_code() -> None:
    metrics = Metrics(CONFIG)
    metrics.upstream_failed("smart-1", UpstreamOverloaded())
    metrics.upstream_failed("smart-1", UpstreamRejected(code="some_provider_specific_code"))
    metrics.upstream_failed("gone", UpstreamOverloaded())
    found = {
        labels: value
        for (name, labels), value in samples(metrics).items()
        if name == "interlock_upstream_errors_total"
    }
    assert found == {
        (("code", "upstream_overloaded"), ("deployment", "smart-1")): 1,
        (("code", "upstream_rejected"), ("deployment", "smart-1")): 1,
        (("code", "upstream_overloaded"), ("deployment", "unknown")): 1,
    }


def test_a_cache_hit_bills_no_tokens() -> None:
    metrics = Metrics(CONFIG)
    metrics.request_done(record(cache_hit=True, cost=Decimal(0)), "openai", cache="hit")
    found = samples(metrics)
    assert sum(value for (name, _), value in found.items() if name == "interlock_tokens_total") == 0
    assert found[("interlock_cache_requests_total", (("model", "smart"), ("result", "hit")))] == 1
