"""The circuit breaker's state machine and cooldowns, on the in-process state with an
injected clock (sharing between instances over Redis: tests/integration/
test_resilience_redis.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from interlock.routing.breaker import CircuitBreakers, CircuitState, Gate
from interlock.routing.cooldown import Cooldowns
from interlock.routing.failsafe import FailSafeState
from interlock.settings import BreakerConfig, RetryConfig, RoutingConfig
from interlock.state import MemoryState

pytestmark = pytest.mark.anyio

CONFIG = BreakerConfig(failure_rate=0.5, min_calls=4, window=30, cooldown=10, max_cooldown=35)


class FakeClock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def breakers(
    config: BreakerConfig = CONFIG, clock: FakeClock | None = None
) -> tuple[CircuitBreakers, FakeClock]:
    clock = clock or FakeClock()
    return CircuitBreakers(FailSafeState(MemoryState()), config, clock=clock), clock


async def fail(breaker: CircuitBreakers, times: int, deployment: str = "d") -> None:
    for _ in range(times):
        await breaker.record(deployment, ok=False)


async def test_opens_when_the_failure_rate_passes_the_threshold_with_enough_calls() -> None:
    breaker, _ = breakers()
    await fail(breaker, 3)
    assert (await breaker.state_of("d"))[0] is CircuitState.CLOSED  # below min_calls
    await fail(breaker, 1)
    state, left = await breaker.state_of("d")
    assert state is CircuitState.OPEN and left == pytest.approx(10)
    gate, retry_after, probe = await breaker.enter("d", "h1")
    assert (gate, retry_after, probe) == (Gate.OPEN, pytest.approx(10), None)
    assert (await breaker.enter("other", "h1"))[0] is Gate.CLOSED  # per deployment


async def test_stays_closed_below_the_threshold() -> None:
    breaker, _ = breakers()
    for _ in range(10):
        await breaker.record("d", ok=True)
        await breaker.record("d", ok=True)
        await breaker.record("d", ok=False)
    assert (await breaker.state_of("d"))[0] is CircuitState.CLOSED


async def test_half_open_lets_a_bounded_number_of_probes_through() -> None:
    breaker, clock = breakers(CONFIG.model_copy(update={"probes": 2}))
    await fail(breaker, 4)
    clock.advance(10)
    assert (await breaker.state_of("d"))[0] is CircuitState.HALF_OPEN
    first = await breaker.enter("d", "h1")
    second = await breaker.enter("d", "h2")
    third = await breaker.enter("d", "h3")
    assert [first[0], second[0], third[0]] == [Gate.PROBE, Gate.PROBE, Gate.OPEN]
    assert third[1] > 0
    # Two successes are needed to close; each frees its probe slot.
    await breaker.record("d", ok=True, probe=first[2])
    assert (await breaker.state_of("d"))[0] is CircuitState.HALF_OPEN
    assert (await breaker.enter("d", "h4"))[0] is Gate.PROBE
    await breaker.record("d", ok=True, probe=second[2])
    assert (await breaker.state_of("d"))[0] is CircuitState.CLOSED
    # Closed afresh: the old failures are forgotten.
    await fail(breaker, 3)
    assert (await breaker.state_of("d"))[0] is CircuitState.CLOSED


async def test_a_failed_probe_reopens_with_the_cooldown_doubled_and_capped() -> None:
    breaker, clock = breakers()
    await fail(breaker, 4)
    for expected in (20, 35, 35):  # 10 doubled, then capped at 35
        clock.advance(100)
        gate, _, probe = await breaker.enter("d", "h")
        assert gate is Gate.PROBE
        await breaker.record("d", ok=False, probe=probe)
        state, left = await breaker.state_of("d")
        assert state is CircuitState.OPEN and left == pytest.approx(expected)


async def test_an_abandoned_probe_frees_its_slot_without_a_verdict() -> None:
    breaker, clock = breakers()
    await fail(breaker, 4)
    clock.advance(10)
    gate, _, probe = await breaker.enter("d", "h1")
    assert gate is Gate.PROBE and probe is not None
    assert (await breaker.enter("d", "h2"))[0] is Gate.OPEN
    await breaker.abandon("d", probe)
    assert (await breaker.state_of("d"))[0] is CircuitState.HALF_OPEN
    assert (await breaker.enter("d", "h2"))[0] is Gate.PROBE


async def test_failures_while_open_do_not_extend_it() -> None:
    breaker, clock = breakers()
    await fail(breaker, 4)
    clock.advance(5)
    await fail(breaker, 10)  # late answers of calls let through before it opened
    assert (await breaker.state_of("d"))[1] == pytest.approx(5)


async def test_cooldowns_block_for_their_length_and_keep_the_longest() -> None:
    clock = FakeClock()
    cooldowns = Cooldowns(FailSafeState(MemoryState()), max_cooldown=60, clock=clock)
    assert await cooldowns.remaining("d") == 0
    await cooldowns.start("d", 30)
    assert await cooldowns.remaining("d") == pytest.approx(30)
    await cooldowns.start("d", 5)  # shorter: the 30 s one stands
    clock.advance(10)
    assert await cooldowns.remaining("d") == pytest.approx(20)
    clock.advance(20)
    assert await cooldowns.remaining("d") == 0
    await cooldowns.start("d", 10_000)  # a provider's absurd Retry-After is capped
    assert await cooldowns.remaining("d") == pytest.approx(60)


def test_every_routing_key_is_documented() -> None:
    documented = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for model in (RoutingConfig, RetryConfig, BreakerConfig):
        assert {key for key in model.model_fields if f"`{key}`" not in documented} == set()
