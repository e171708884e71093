"""``GET /metrics`` of a real gateway on loopback, after real requests through the fake
upstream: counts and labels, histograms, the cache, rate limits, circuits, upstream errors,
streams in flight, who may scrape, and a canary that never shows up."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve

AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}
CANARY = "canary-7f3a9c1e5b"
METRICS_TOKEN = "metrics-token-0123456789abcdef"


def deployment(upstream: FakeUpstream, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": name,
        "base_url": upstream.openai_base_url,
        "api_key_env": "FAKE_PROVIDER_KEY",
        "name": name,
        **extra,
    }


def parse(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    return sum(
        sample.value
        for sample in samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def label_values(samples: list[Sample], name: str, label: str) -> set[str]:
    return {sample.labels[label] for sample in samples if sample.name == name}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    config = {
        "routing": {
            "retry": {"max_retries": 0},
            "breaker": {"failure_rate": 0.5, "min_calls": 3, "window": 60, "cooldown": 300},
        },
        "models.fast": {"deployments": [deployment(upstream, "fast-1", input_price=1.0)]},
        "models.broken": {"deployments": [deployment(upstream, "broken-1")]},
        "models.limited": {"deployments": [deployment(upstream, "limited-1")]},
        "limits.models": {"limited": {"rpm": 1}},
    }
    env = {"FAKE_PROVIDER_KEY": f"sk-{CANARY}"}
    settings = make_settings(tmp_path_factory.mktemp("metrics"), config, env)
    with serve(settings) as running:
        yield running


def chat(gateway: RunningGateway, model: str, content: str = "Say hello", **extra: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30)


def scrape(gateway: RunningGateway, **headers: str) -> httpx.Response:
    return httpx.get(f"{gateway.url}/metrics", headers=headers, timeout=10)


def samples_of(gateway: RunningGateway) -> list[Sample]:
    response = scrape(gateway)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def test_requests_latency_tokens_and_cost(gateway: RunningGateway) -> None:
    before = samples_of(gateway)
    client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=ADMIN_KEY, max_retries=0)
    client.chat.completions.create(model="fast", messages=[{"role": "user", "content": "hi"}])
    stream = client.chat.completions.create(
        model="fast",
        messages=[{"role": "user", "content": "hi there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = next(chunk.usage for chunk in stream if chunk.usage is not None)
    messages = anthropic.Anthropic(base_url=gateway.url, api_key=ADMIN_KEY, max_retries=0)
    messages.messages.create(
        model="fast", max_tokens=50, messages=[{"role": "user", "content": "hello"}]
    )
    ui_message = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": "hey"}]}
    aisdk = httpx.post(
        f"{gateway.url}/api/chat/text",
        json={"model": "fast", "messages": [ui_message]},
        headers=AUTH,
        timeout=30,
    )
    assert aisdk.status_code == 200, aisdk.text
    after = samples_of(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"model": "fast", "deployment": "fast-1", "status": "200"}
    assert delta("interlock_requests_total", route="openai", **ok) == 2
    assert delta("interlock_requests_total", route="anthropic", **ok) == 1
    assert delta("interlock_requests_total", route="aisdk", **ok) == 1
    duration = "interlock_request_duration_seconds"
    assert delta(f"{duration}_count", route="openai", model="fast") == 2
    assert delta(f"{duration}_bucket", route="openai", model="fast", le="+Inf") == 2
    assert delta(f"{duration}_sum", route="openai", model="fast") > 0
    # Only the stream has a time to first token.
    assert delta("interlock_time_to_first_token_seconds_count", route="openai") == 1
    assert delta("interlock_time_to_first_token_seconds_count", route="anthropic") == 0
    overhead = "interlock_gateway_overhead_seconds"
    assert delta(f"{overhead}_count", route="openai") == 2
    # The gateway's own time is a small part of the total.
    assert 0 < delta(f"{overhead}_sum", route="openai") < delta(f"{duration}_sum", route="openai")
    tokens = "interlock_tokens_total"
    assert delta(tokens, model="fast", type="output") >= usage.completion_tokens
    assert delta(tokens, model="fast", type="input") >= usage.prompt_tokens
    assert delta("interlock_cost_usd_total", model="fast", tier="enterprise") > 0
    assert delta("interlock_streams_in_flight", route="openai") == 0


def test_unknown_models_and_refusals_keep_labels_bounded(gateway: RunningGateway) -> None:
    before = samples_of(gateway)
    assert chat(gateway, f"no-such-model-{CANARY}").status_code == 404
    refused = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer sk-{CANARY}"},
        timeout=10,
    )
    assert refused.status_code == 401
    after = samples_of(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    unknown = {"model": "unknown", "deployment": "none"}
    assert delta("interlock_requests_total", status="404", **unknown) == 1
    assert delta("interlock_requests_total", status="401", **unknown) == 1
    assert delta("interlock_request_errors_total", code="model_not_found") == 1
    assert delta("interlock_request_errors_total", code="invalid_api_key") == 1
    assert label_values(after, "interlock_requests_total", "model") <= {
        "fast",
        "broken",
        "limited",
        "unknown",
    }


def test_cache_hit_and_miss(gateway: RunningGateway) -> None:
    before = samples_of(gateway)
    question = "What is the capital of France? (metrics cache test)"
    first = chat(gateway, "fast", question, temperature=0)
    second = chat(gateway, "fast", question, temperature=0)
    undetermined = chat(gateway, "fast", question, temperature=0.9)
    assert [r.headers["x-interlock-cache"] for r in (first, second, undetermined)] == [
        "miss",
        "hit",
        "bypass",
    ]
    after = samples_of(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for result in ("hit", "miss", "bypass"):
        assert delta("interlock_cache_requests_total", model="fast", result=result) == 1
    # The hit made no upstream call: no overhead sample, no tokens billed again.
    assert delta("interlock_gateway_overhead_seconds_count", route="openai") == 2
    assert delta("interlock_requests_total", model="fast", status="200") == 3


def test_rate_limit_rejection(gateway: RunningGateway) -> None:
    before = samples_of(gateway)
    statuses = [chat(gateway, "limited").status_code for _ in range(2)]
    assert statuses == [200, 429]
    after = samples_of(gateway)
    rejections = "interlock_rate_limit_rejections_total"
    code = "model_rate_limit_exceeded"
    assert value(after, rejections, code=code) - value(before, rejections, code=code) == 1
    status_429 = {"model": "limited", "status": "429", "deployment": "none"}
    requests = "interlock_requests_total"
    assert value(after, requests, **status_429) - value(before, requests, **status_429) == 1


def test_circuit_opens_and_upstream_errors_are_counted(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    samples = samples_of(gateway)
    assert value(samples, "interlock_circuit_state", deployment="broken-1") == 0
    assert label_values(samples, "interlock_circuit_state", "deployment") == {
        "fast-1",
        "broken-1",
        "limited-1",
    }
    upstream.set_model_behavior("broken-1", Behavior(status=500))
    statuses = [chat(gateway, "broken").status_code for _ in range(3)]
    assert statuses == [503, 503, 503]  # the provider's 5xx: upstream_overloaded
    samples = samples_of(gateway)
    assert value(samples, "interlock_circuit_state", deployment="broken-1") == 2
    assert value(samples, "interlock_circuit_state", deployment="fast-1") == 0
    errors = "interlock_upstream_errors_total"
    assert value(samples, errors, deployment="broken-1", code="upstream_overloaded") == 3
    # The circuit is open: the next request never reaches the provider.
    served = len(upstream.ledger)
    assert chat(gateway, "broken").status_code == 503
    assert len(upstream.ledger) == served
    samples = samples_of(gateway)
    assert value(samples, errors, deployment="broken-1") == 3
    assert value(samples, "interlock_requests_total", model="broken", status="503") == 4


def test_streams_in_flight(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.push(Behavior(tokens=30, token_delay=0.05))
    body = {"model": "fast", "stream": True, "messages": [{"role": "user", "content": "long"}]}
    started = threading.Event()
    finished: list[int] = []

    def consume() -> None:
        with httpx.stream(
            "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30
        ) as response:
            for _ in response.iter_lines():
                started.set()
            finished.append(response.status_code)

    thread = threading.Thread(target=consume)
    thread.start()
    assert started.wait(10)
    during = value(samples_of(gateway), "interlock_streams_in_flight", route="openai")
    thread.join(20)
    assert finished == [200]
    assert during == 1
    assert value(samples_of(gateway), "interlock_streams_in_flight", route="openai") == 0


def test_canary_never_appears(gateway: RunningGateway) -> None:
    chat(gateway, "fast", f"my secret is {CANARY}")
    chat(gateway, f"model-{CANARY}", "x")
    text = scrape(gateway).text
    assert "interlock_requests_total" in text
    assert CANARY not in text


# ---- who may scrape -------------------------------------------------------------------------


def test_loopback_is_allowed_by_default(gateway: RunningGateway) -> None:
    assert scrape(gateway).status_code == 200


def test_token_and_allowlist(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = {
        "models.fast": {"deployments": [deployment(upstream, "fast-1")]},
        "metrics": {"allow": []},
    }
    settings = make_settings(tmp_path, config, {"INTERLOCK_METRICS_TOKEN": METRICS_TOKEN})
    with serve(settings) as running:
        missing = scrape(running)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = scrape(running, authorization="Bearer metrics-token-wrong-0123456789")
        assert wrong.status_code == 401
        # An API key is not a metrics token.
        assert scrape(running, authorization=f"Bearer {ADMIN_KEY}").status_code == 401
        right = scrape(running, authorization=f"Bearer {METRICS_TOKEN}")
        assert right.status_code == 200
        assert 'interlock_circuit_state{deployment="fast-1"} 0.0' in right.text


def test_address_outside_the_allowlist_is_forbidden(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = {
        "models.fast": {"deployments": [deployment(upstream, "fast-1")]},
        "metrics": {"allow": ["10.0.0.0/8"]},
    }
    with serve(make_settings(tmp_path, config)) as running:
        assert scrape(running).status_code == 403
        # A token that is not configured opens nothing.
        assert scrape(running, authorization=f"Bearer {METRICS_TOKEN}").status_code == 401


def test_trusted_proxy_forwards_an_allowed_address(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = {
        "models.fast": {"deployments": [deployment(upstream, "fast-1")]},
        "metrics": {"allow": ["192.0.2.0/24"]},
        "limits": {"trusted_proxies": ["127.0.0.1"]},
    }
    with serve(make_settings(tmp_path, config)) as running:
        assert scrape(running, **{"x-forwarded-for": "192.0.2.7"}).status_code == 200
        assert scrape(running, **{"x-forwarded-for": "198.51.100.7"}).status_code == 403


def test_metrics_can_be_turned_off(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = {
        "models.fast": {"deployments": [deployment(upstream, "fast-1")]},
        "metrics": {"enabled": False},
    }
    with serve(make_settings(tmp_path, config)) as running:
        assert scrape(running).status_code == 404
        assert chat(running, "fast").status_code == 200
