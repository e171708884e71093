"""Retries, fallbacks, cooldowns, circuits and capacity, end to end: a real gateway on
loopback in front of the fake upstream, whose ledger says what the upstream really received.
The routing clock is the test's (``FakeClock``): cooldowns pass without sleeping."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from interlock.state import Limit
from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.integration.resilience_gateway import (
    AUTH,
    HELLO,
    Gateway,
    deployment,
    serve_gateway,
)

ROUTING = {
    "retry": {"max_retries": 1, "backoff_base": 0.01, "backoff_max": 0.02, "budget_min": 1000},
    "breaker": {"failure_rate": 0.5, "min_calls": 4, "window": 30, "cooldown": 10},
}


def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    def model(*deployments: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"deployments": list(deployments), **extra}

    u = upstream
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    config = {
        "routing": ROUTING,
        "models.retry": model(deployment(u, "r-primary"), deployment(u, "r-secondary", priority=2)),
        "models.retry-once": model(deployment(u, "r1-a"), deployment(u, "r1-b", priority=2)),
        "models.refused": model(
            deployment(u, "ref-dead", base_url=dead), deployment(u, "ref-ok", priority=2)
        ),
        "models.cool": model(deployment(u, "cool-a"), deployment(u, "cool-b", priority=2)),
        "models.lone": model(deployment(u, "lone-a")),
        "models.storm": model(deployment(u, "storm-a"), deployment(u, "storm-b", priority=2)),
        "models.reject": model(deployment(u, "rej-a"), deployment(u, "rej-b", priority=2)),
        "models.busy": model(
            deployment(u, "busy-a", max_concurrent=1), deployment(u, "busy-b", priority=2)
        ),
        "models.one-slot": model(deployment(u, "slot-a", max_concurrent=1)),
        "models.rpm": model(deployment(u, "rpm-a", rpm=1)),
        "models.tpm": model(deployment(u, "tpm-a", tpm=60)),
        "models.balanced": model(deployment(u, "bal-a"), deployment(u, "bal-b")),
        "models.main": model(deployment(u, "main-a"), fallbacks=["backup"]),
        "models.backup": model(deployment(u, "backup-a")),
    }
    with serve_gateway(tmp_path_factory.mktemp("resilience"), config) as running:
        yield running


def served_models(upstream: FakeUpstream) -> list[str | None]:
    return [served.model for served in upstream.ledger]


class OpenStream:
    """A streaming request held open on a thread, reading its first chunk."""

    def __init__(self, gateway: Gateway, model: str) -> None:
        self.headers: httpx.Headers | None = None
        self.started = threading.Event()
        self.release = threading.Event()
        self.body = ""
        self._thread = threading.Thread(target=self._run, args=(gateway, model), daemon=True)
        self._thread.start()
        assert self.started.wait(5), "the stream did not start"

    def _run(self, gateway: Gateway, model: str) -> None:
        body = {"model": model, "messages": HELLO, "stream": True}
        with httpx.stream(
            "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30
        ) as response:
            self.headers = response.headers
            chunks = response.iter_text()
            self.body += next(chunks)
            self.started.set()
            self.release.wait(10)
            self.body += "".join(chunks)

    def finish(self) -> str:
        self.release.set()
        self._thread.join(10)
        return self.body


# ---- retries and failover ----------------------------------------------------------------------


def test_a_5xx_is_retried_once_on_the_same_deployment_then_fails_over(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("r-primary", Behavior(status=500))
    response = gateway.chat("retry")
    assert response.status_code == 200
    assert served_models(upstream) == ["r-primary", "r-primary", "r-secondary"]
    assert response.headers["x-interlock-deployment"] == "r-secondary"
    assert response.headers["x-interlock-model"] == "retry"
    assert response.headers["x-interlock-attempts"] == "3"
    assert float(response.headers["x-interlock-overhead-ms"]) >= 0


def test_a_passing_5xx_is_absorbed_by_the_retry(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.push(Behavior(status=502), model="r1-a")
    response = gateway.chat("retry-once", stream=True)
    assert response.status_code == 200
    assert "[DONE]" in response.text
    assert served_models(upstream) == ["r1-a", "r1-a"]
    assert response.headers["x-interlock-attempts"] == "2"


def test_a_refused_connection_is_retried_then_fails_over(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    response = gateway.chat("refused")
    assert response.status_code == 200
    assert served_models(upstream) == ["ref-ok"]  # the dead one never answered anything
    assert response.headers["x-interlock-attempts"] == "3"


def test_a_client_fault_is_neither_retried_nor_failed_over(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("rej-a", Behavior(status=400, error_message="bad"))
    for stream in (False, True):
        response = gateway.chat("reject", stream=stream)
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "upstream_rejected"
    assert served_models(upstream) == ["rej-a", "rej-a"]


def test_the_fallback_model_serves_when_the_model_is_down(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("main-a", Behavior(status=503))
    response = gateway.chat("main")
    assert response.status_code == 200
    assert response.headers["x-interlock-model"] == "backup"
    assert served_models(upstream) == ["main-a", "main-a", "backup-a"]


# ---- Retry-After -------------------------------------------------------------------------------


def test_retry_after_sends_traffic_elsewhere_until_it_passes(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(status=429, retry_after=30), model="cool-a")
    first = gateway.chat("cool")
    assert first.status_code == 200
    assert first.headers["x-interlock-deployment"] == "cool-b"
    assert served_models(upstream) == ["cool-a", "cool-b"]  # moved on at once: no retry
    second = gateway.chat("cool")
    assert second.headers["x-interlock-deployment"] == "cool-b"
    assert served_models(upstream) == ["cool-a", "cool-b", "cool-b"]
    gateway.clock.advance(30)
    third = gateway.chat("cool")
    assert third.headers["x-interlock-deployment"] == "cool-a"


def test_a_lone_rate_limited_deployment_gets_no_traffic_during_its_retry_after(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(status=429, retry_after=7), model="lone-a")
    first = gateway.chat("lone")
    assert first.status_code == 429
    assert first.headers["retry-after"] == "7"
    gateway.clock.advance(2)
    second = gateway.chat("lone", stream=True)
    assert second.status_code == 503
    assert second.json()["error"]["code"] == "service_unavailable"
    assert second.headers["retry-after"] == "5"
    assert len(upstream.ledger) == 1
    gateway.clock.advance(5)
    assert gateway.chat("lone").status_code == 200


# ---- circuit breaker ---------------------------------------------------------------------------


def test_a_5xx_storm_opens_the_circuit_then_a_probe_closes_it(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("storm-a", Behavior(status=503))
    for _ in range(2):  # two requests, two calls each (a retry): four failures
        assert gateway.chat("storm").headers["x-interlock-deployment"] == "storm-b"
    assert served_models(upstream).count("storm-a") == 4
    for _ in range(5):  # open: not called at all
        response = gateway.chat("storm")
        assert response.headers["x-interlock-attempts"] == "1"
    assert served_models(upstream).count("storm-a") == 4

    gateway.clock.advance(10)  # half-open: one probe, which fails: open for 20 s
    gateway.chat("storm")
    assert served_models(upstream).count("storm-a") == 5
    gateway.clock.advance(19)
    gateway.chat("storm")
    assert served_models(upstream).count("storm-a") == 5

    upstream.set_model_behavior("storm-a", None)  # recovered
    gateway.clock.advance(1)
    assert gateway.chat("storm").headers["x-interlock-deployment"] == "storm-a"  # the probe
    assert gateway.chat("storm").headers["x-interlock-deployment"] == "storm-a"  # closed


# ---- capacity ----------------------------------------------------------------------------------


def test_a_full_deployment_sends_the_request_to_the_next_and_the_slot_comes_back(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("busy-a", Behavior(tokens=20, token_delay=0.02))
    held = OpenStream(gateway, "busy")
    assert held.headers is not None and held.headers["x-interlock-deployment"] == "busy-a"
    assert gateway.slots_held("busy-a") == [1]
    second = gateway.chat("busy")
    assert second.headers["x-interlock-deployment"] == "busy-b"
    assert "[DONE]" in held.finish()
    assert gateway.slots_held("busy-a", "busy-b") == [0, 0]
    assert gateway.chat("busy").headers["x-interlock-deployment"] == "busy-a"


def test_nothing_free_is_503_with_retry_after(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.set_model_behavior("slot-a", Behavior(tokens=20, token_delay=0.02))
    held = OpenStream(gateway, "one-slot")
    refused = gateway.chat("one-slot")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert len(upstream.ledger) == 1
    held.finish()
    assert gateway.slots_held("slot-a") == [0]
    assert gateway.chat("one-slot").status_code == 200


def test_requests_per_minute_are_enforced(gateway: Gateway, upstream: FakeUpstream) -> None:
    assert gateway.chat("rpm").status_code == 200
    refused = gateway.chat("rpm")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "60"
    assert len(upstream.ledger) == 1


def test_tokens_are_reserved_then_corrected_to_the_real_usage(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    def tokens_left() -> int:
        scope = Limit("deployment:tpm-a:tpm", 60, 60, 0)
        decision = gateway.run(gateway.components.state.limits.admit([scope]))
        return int(decision.scopes[0].remaining)

    upstream.set_model_behavior("tpm-a", Behavior(tokens=5, token_delay=0.05))
    body = {"model": "tpm", "messages": HELLO, "stream": True, "max_tokens": 40}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30
    ) as response:
        lines = response.iter_lines()
        next(lines)
        # "Say hello" is about 3 tokens, plus max_tokens: 43 of 60 are reserved meanwhile.
        assert tokens_left() in (17, 18)
        text = "\n".join(lines)
    assert "[DONE]" in text
    usage = gateway.chat("tpm", max_tokens=40).json()["usage"]  # the same, not streamed
    assert usage["total_tokens"] == 8
    # Both requests were charged their real 8 tokens (a token a second refills meanwhile).
    assert 60 - 2 * 8 <= tokens_left() <= 60 - 2 * 8 + 3


def test_equal_priorities_share_the_load(gateway: Gateway, upstream: FakeUpstream) -> None:
    for name in ("bal-a", "bal-b"):
        upstream.set_model_behavior(name, Behavior(tokens=20, token_delay=0.02))
    first = OpenStream(gateway, "balanced")
    second = OpenStream(gateway, "balanced")
    assert first.headers is not None and second.headers is not None
    deployments = {h["x-interlock-deployment"] for h in (first.headers, second.headers)}
    assert deployments == {"bal-a", "bal-b"}  # the second went to the idle one
    first.finish()
    second.finish()
    assert gateway.slots_held("bal-a", "bal-b") == [0, 0]


# ---- the retry budget --------------------------------------------------------------------------


def test_a_full_outage_does_not_multiply_traffic(upstream: FakeUpstream, tmp_path: Path) -> None:
    routing = {
        "retry": {"max_retries": 2, "backoff_base": 0.001, "budget_ratio": 0.1, "budget_min": 2},
        "breaker": {"min_calls": 100_000},  # keep the circuit out of this
    }
    config = {"routing": routing, "models.down": {"deployments": [deployment(upstream, "down")]}}
    upstream.default = Behavior(status=500)
    with serve_gateway(tmp_path, config) as gateway:
        for _ in range(30):
            assert gateway.chat("down").status_code == 503
    # Without a budget: 90 calls. With it: 30 requests and at most max(2, 3) retries.
    assert 30 < len(upstream.ledger) <= 33
