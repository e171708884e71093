"""Routing state shared between instances through a real Redis, and what happens when Redis
fails: circuits opened by one instance stop the others within a second, capacity is counted
across instances, and a dead or frozen Redis degrades to per-instance state, never to 500s."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from interlock.routing.breaker import CircuitBreakers, Gate
from interlock.routing.failsafe import FailSafeState
from interlock.settings import BreakerConfig
from interlock.state import SharedState, build_state
from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.fixtures.redis import RedisServer, redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures
from tests.integration.resilience_gateway import (
    AUTH,
    HELLO,
    FakeClock,
    Gateway,
    deployment,
    serve_gateway,
)

BREAKER = BreakerConfig(failure_rate=0.5, min_calls=4, window=30, cooldown=10)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def two_states(redis_url: str) -> AsyncIterator[tuple[SharedState, SharedState]]:
    """Two instances' state objects on one Redis."""
    first, second = build_state(redis_url), build_state(redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()


def config_for(upstream: FakeUpstream) -> dict[str, Any]:
    return {
        "routing": {
            "retry": {"max_retries": 0},
            "breaker": {"failure_rate": 0.5, "min_calls": 4, "cooldown": 10},
        },
        "models.storm": {
            "deployments": [
                deployment(upstream, "storm-a"),
                deployment(upstream, "storm-b", priority=2),
            ]
        },
        "models.cap": {
            "deployments": [
                deployment(upstream, "cap-a", max_concurrent=1, rpm=1000),
                deployment(upstream, "cap-b", priority=2),
            ]
        },
    }


def served(upstream: FakeUpstream, model: str) -> int:
    return sum(1 for record in upstream.ledger if record.model == model)


# ---- circuits across instances -------------------------------------------------------------------


@pytest.mark.anyio
async def test_an_instance_that_opens_a_circuit_stops_the_others_within_a_second(
    two_states: tuple[SharedState, SharedState],
) -> None:
    clock = FakeClock()
    first, second = (
        CircuitBreakers(FailSafeState(state), BREAKER, clock=clock) for state in two_states
    )
    # The second instance has just read the circuit (closed) and keeps that copy a while.
    assert (await second.enter("d", "h"))[0] is Gate.CLOSED
    # Failures seen by either instance count in one window.
    await first.record("d", ok=False)
    await second.record("d", ok=False)
    await first.record("d", ok=False)
    assert (await first.enter("d", "h"))[0] is Gate.CLOSED
    await second.record("d", ok=False)  # the fourth: the second instance opens it
    opened_at = time.monotonic()
    assert (await second.enter("d", "h"))[0] is Gate.OPEN
    while (await first.enter("d", "h"))[0] is not Gate.OPEN:
        assert time.monotonic() - opened_at < 1.0, "the other instance still calls"
        await asyncio.sleep(0.02)

    # Half-open after the cooldown: one probe in all, whichever instance takes it.
    clock.advance(10)
    await asyncio.sleep(1.0)  # let both copies refresh
    gates = [(await breaker.enter("d", f"p{i}"))[0] for i, breaker in enumerate((first, second))]
    assert sorted(gate.value for gate in gates) == ["open", "probe"]


def test_two_gateways_share_circuits(
    upstream: FakeUpstream, redis_url: str, tmp_path: Path
) -> None:
    upstream.set_model_behavior("storm-a", Behavior(status=503))
    env = {"REDIS_URL": redis_url}
    with ExitStack() as stack:
        one = stack.enter_context(serve_gateway(tmp_path / "one", config_for(upstream), env))
        two = stack.enter_context(serve_gateway(tmp_path / "two", config_for(upstream), env))
        assert two.chat("storm").status_code == 200  # the second gateway has a fresh copy
        for _ in range(3):  # failures on either gateway count in one window
            assert one.chat("storm").headers["x-interlock-deployment"] == "storm-b"
        assert served(upstream, "storm-a") == 4  # the fourth opened the circuit
        assert one.chat("storm").headers["x-interlock-attempts"] == "1"
        opened_at = time.monotonic()
        while True:
            response = two.chat("storm")
            assert response.status_code == 200
            if response.headers["x-interlock-attempts"] == "1":
                break
            assert time.monotonic() - opened_at < 1.0, "the second gateway still calls"
            time.sleep(0.05)
        calls = served(upstream, "storm-a")
        for _ in range(3):
            two.chat("storm")
        assert served(upstream, "storm-a") == calls


# ---- capacity across instances -------------------------------------------------------------------


def hold_stream(gateway: Gateway, model: str, release: threading.Event) -> threading.Thread:
    started = threading.Event()

    def run() -> None:
        body = {"model": model, "messages": HELLO, "stream": True}
        with httpx.stream(
            "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30
        ) as response:
            chunks = response.iter_text()
            next(chunks)
            started.set()
            release.wait(10)
            for _ in chunks:
                pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(5)
    return thread


def test_concurrency_is_counted_across_gateways(
    upstream: FakeUpstream, redis_url: str, tmp_path: Path
) -> None:
    upstream.set_model_behavior("cap-a", Behavior(tokens=20, token_delay=0.02))
    env = {"REDIS_URL": redis_url}
    with ExitStack() as stack:
        one = stack.enter_context(serve_gateway(tmp_path / "one", config_for(upstream), env))
        two = stack.enter_context(serve_gateway(tmp_path / "two", config_for(upstream), env))
        release = threading.Event()
        holder = hold_stream(one, "cap", release)
        assert two.slots_held("cap-a") == [1]  # the other gateway sees the slot taken
        assert two.chat("cap").headers["x-interlock-deployment"] == "cap-b"
        release.set()
        holder.join(10)
        assert two.slots_held("cap-a") == [0]
        assert two.chat("cap").headers["x-interlock-deployment"] == "cap-a"


# ---- Redis failing -------------------------------------------------------------------------------


def test_a_dead_redis_degrades_to_per_instance_state_and_recovers(
    upstream: FakeUpstream, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_url}
    with capture_logs() as logs, serve_gateway(tmp_path, config_for(upstream), env) as gateway:
        assert gateway.chat("cap").status_code == 200
        redis_server.kill()
        # Capacity fails open to this instance's own count: still served, never a 500.
        for stream in (False, True, False):
            response = gateway.chat("cap", stream=stream)
            assert response.status_code == 200, response.text
            assert response.headers["x-interlock-deployment"] == "cap-a"
        # ... and is still enforced, per instance.
        release = threading.Event()
        upstream.set_model_behavior("cap-a", Behavior(tokens=20, token_delay=0.02))
        holder = hold_stream(gateway, "cap", release)
        assert gateway.chat("cap").headers["x-interlock-deployment"] == "cap-b"
        release.set()
        holder.join(10)
        # Circuits too: a storm opens the circuit locally.
        upstream.set_model_behavior("storm-a", Behavior(status=503))
        for _ in range(4):
            assert gateway.chat("storm").status_code == 200
        assert served(upstream, "storm-a") == 4
        assert gateway.chat("storm").headers["x-interlock-attempts"] == "1"
        assert served(upstream, "storm-a") == 4

        redis_server.reset()  # back, and empty
        upstream.set_model_behavior("cap-a", None)
        time.sleep(0.6)  # the pause after an outage (RETRY_INTERVAL), and cached reads
        assert gateway.chat("cap").status_code == 200
        assert gateway.run(gateway.components.state.ping()) is None
    degraded = [entry for entry in logs if entry["event"] == "shared_state_unavailable_using_local"]
    assert degraded, "the fallback must be logged"
    assert all(entry["log_level"] == "warning" for entry in degraded)
    # Rate-limited: one line per kind of operation, not one per request.
    operations = [entry["operation"] for entry in degraded]
    assert len(operations) == len(set(operations))


def test_a_frozen_redis_slows_nothing_to_a_halt(
    upstream: FakeUpstream, redis_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_url}
    with serve_gateway(tmp_path, config_for(upstream), env) as gateway:
        assert gateway.chat("cap").status_code == 200
        with redis_server.frozen():
            started = time.monotonic()
            for stream in (False, True, False, True):
                assert gateway.chat("cap", stream=stream).status_code == 200
            # Each operation gives up after the state timeout, then Redis is left alone.
            assert time.monotonic() - started < 5
        assert gateway.chat("cap").status_code == 200
