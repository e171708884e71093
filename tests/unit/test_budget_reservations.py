"""Budgets over the in-memory shared state, with a fake clock: reservation, refusal,
settlement, and failing closed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest

from interlock.auth.principal import Principal, Scope
from interlock.chat.types import ChatRequest, Message, TextPart
from interlock.errors import RateLimited, ServiceUnavailable
from interlock.limits.budgets import DAY, Budgets, micro_units
from interlock.settings import DeploymentConfig, ModelConfig
from interlock.state import Decision, Limit, MemoryState, StateUnavailable
from interlock.telemetry.prices import DeploymentPrices, packaged_price_table


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def deployment(name: str, input_price: float, output_price: float) -> DeploymentConfig:
    fields: dict[str, Any] = {
        "provider": "openai",
        "model": "some-model",
        "name": name,
        "input_price": input_price,
        "output_price": output_price,
    }
    return DeploymentConfig(**fields)


# A million tokens at 1.0 is one micro-unit a token: the cheap deployment makes costs readable;
# the expensive one (2 per input, 4 per output token) is what a reservation is priced at.
MODELS = {
    "smart": ModelConfig(
        deployments=[deployment("cheap", 1.0, 1.0), deployment("expensive", 2.0, 4.0)]
    )
}


def budgets_over(limits: Any) -> Budgets:
    prices = DeploymentPrices(MODELS, packaged_price_table())
    return Budgets(limits, MODELS, prices, default_output_tokens=100)


def request(chars: int = 400, max_tokens: int | None = 50) -> ChatRequest:
    message = Message(role="user", content=[TextPart("x" * chars)])
    return ChatRequest(model="smart", messages=[message], max_tokens=max_tokens)


NO_LIMITS = Scope()


def principal(
    key_scope: Scope = NO_LIMITS, user_scope: Scope = NO_LIMITS, key_id: str | None = "k1"
) -> Principal:
    # ``scope`` is the tier narrowed by the key, as the authenticator builds it.
    return Principal(
        user_id="u1",
        user_name="ann",
        role="member",
        tier="basic",
        key_id=key_id,
        scope=key_scope.narrowed_by(user_scope),
        owner_scope=user_scope,
    )


def micro(amount: int) -> Decimal:
    return Decimal(amount) / 1_000_000


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> MemoryState:
    return MemoryState(clock=clock)


async def remaining(state: MemoryState, key: str, limit: int, window: float = DAY) -> int:
    decision = await state.limits.admit([Limit(key, limit, window, 0)])
    return decision.scopes[0].remaining


def test_the_maximum_cost_is_the_input_estimate_and_output_allowance_at_the_highest_price() -> None:
    budgets = budgets_over(MemoryState().limits)
    # 400 characters are 100 input tokens at 2, plus 50 output tokens at 4.
    assert budgets.max_cost(request(400, 50)) == 100 * 2 + 50 * 4
    # Without max_tokens, the configured default output is reserved.
    assert budgets.max_cost(request(400, None)) == 100 * 2 + 100 * 4
    assert micro_units(Decimal("0.0000011")) == 2  # rounded up, never under-counted


class NoState:
    """Rate limits that fail the test if they are ever asked."""

    async def admit(self, scopes: Sequence[Limit]) -> Decision:
        raise AssertionError("no budget, so no state call")

    async def adjust(self, changes: Sequence[Limit]) -> None:
        raise AssertionError("no budget, so no state call")


@pytest.mark.anyio
async def test_without_a_budget_nothing_is_asked_of_the_state() -> None:
    budgets = budgets_over(NoState())
    assert await budgets.reserve(principal(), request()) is None
    # Other limits (rpm) are not budgets.
    assert await budgets.reserve(principal(Scope(rpm=5), Scope(tpm=9)), request()) is None


@pytest.mark.anyio
async def test_a_reservation_is_held_then_settled_at_the_real_cost(state: MemoryState) -> None:
    budgets = budgets_over(state.limits)
    who = principal(Scope(daily_budget=micro(1000)), Scope(monthly_budget=micro(5000)))
    reservation = await budgets.reserve(who, request())
    assert reservation is not None and reservation.cost == 400
    assert [bucket.key for bucket in reservation.buckets] == [
        "budget:key:k1:day",
        "budget:user:u1:month",
    ]
    assert await remaining(state, "budget:key:k1:day", 1000) == 600
    await budgets.settle(reservation, micro(30))  # the answer was short
    assert await remaining(state, "budget:key:k1:day", 1000) == 970
    assert await remaining(state, "budget:user:u1:month", 5000, 30 * DAY) == 4970


@pytest.mark.anyio
async def test_over_budget_is_refused_naming_the_budget_with_a_wait(state: MemoryState) -> None:
    budgets = budgets_over(state.limits)
    who = principal(user_scope=Scope(daily_budget=micro(1000)))
    assert await budgets.reserve(who, request()) is not None
    assert await budgets.reserve(who, request()) is not None
    with pytest.raises(RateLimited) as refused:
        await budgets.reserve(who, request())
    assert "daily budget of this user" in refused.value.message
    assert refused.value.code == "budget_exceeded"
    # 200 more micro-units are needed; the bucket refills 1000 a day.
    assert refused.value.retry_after == pytest.approx(DAY * 200 / 1000, rel=0.01)
    # A refusal holds nothing: the remainder is still there.
    assert await remaining(state, "budget:user:u1:day", 1000) == 200


@pytest.mark.anyio
async def test_a_request_costing_more_than_the_whole_budget_gets_no_wait(
    state: MemoryState,
) -> None:
    budgets = budgets_over(state.limits)
    who = principal(Scope(monthly_budget=micro(100)))
    with pytest.raises(RateLimited) as refused:
        await budgets.reserve(who, request())
    assert "monthly budget of this API key" in refused.value.message
    assert "max_tokens" in refused.value.message
    assert refused.value.retry_after is None


@pytest.mark.anyio
async def test_the_refund_after_a_small_answer_lets_the_next_request_in(
    state: MemoryState,
) -> None:
    budgets = budgets_over(state.limits)
    who = principal(Scope(daily_budget=micro(500)))
    first = await budgets.reserve(who, request())
    assert first is not None
    with pytest.raises(RateLimited):
        await budgets.reserve(who, request())
    await budgets.settle(first, micro(10))
    assert await budgets.reserve(who, request()) is not None


@pytest.mark.anyio
async def test_a_failed_call_is_refunded_entirely(state: MemoryState) -> None:
    budgets = budgets_over(state.limits)
    who = principal(Scope(daily_budget=micro(1000)))
    reservation = await budgets.reserve(who, request())
    assert reservation is not None
    budgets.settle_soon(reservation, Decimal(0))
    await budgets.aclose()
    assert await remaining(state, "budget:key:k1:day", 1000) == 1000


@pytest.mark.anyio
async def test_a_costlier_answer_is_charged_beyond_the_reservation(state: MemoryState) -> None:
    budgets = budgets_over(state.limits)
    who = principal(Scope(daily_budget=micro(1000)))
    reservation = await budgets.reserve(who, request())
    assert reservation is not None
    await budgets.settle(reservation, micro(900))
    with pytest.raises(RateLimited):
        await budgets.reserve(who, request())


@pytest.mark.anyio
async def test_concurrent_requests_cannot_overspend(state: MemoryState) -> None:
    budgets = budgets_over(state.limits)
    who = principal(Scope(daily_budget=micro(1000)))

    async def attempt() -> bool:
        try:
            return await budgets.reserve(who, request()) is not None
        except RateLimited:
            return False

    admitted = await asyncio.gather(*(attempt() for _ in range(20)))
    assert sum(admitted) == 2  # 1000 // 400


@pytest.mark.anyio
async def test_the_user_budget_is_shared_by_every_key_of_the_user(state: MemoryState) -> None:
    budgets = budgets_over(state.limits)
    user = Scope(daily_budget=micro(800))
    assert await budgets.reserve(principal(user_scope=user, key_id="k1"), request()) is not None
    assert await budgets.reserve(principal(user_scope=user, key_id="k2"), request()) is not None
    with pytest.raises(RateLimited) as refused:
        await budgets.reserve(principal(user_scope=user, key_id="k3"), request())
    assert "of this user" in refused.value.message


@pytest.mark.anyio
async def test_a_session_is_held_to_the_user_budget(state: MemoryState) -> None:
    budgets = budgets_over(state.limits)
    who = principal(user_scope=Scope(daily_budget=micro(1000)), key_id=None)
    reservation = await budgets.reserve(who, request())
    assert reservation is not None
    assert [bucket.key for bucket in reservation.buckets] == ["budget:user:u1:day"]


@pytest.mark.anyio
async def test_windows_roll_rather_than_reset_at_midnight(state: MemoryState, clock: Clock) -> None:
    budgets = budgets_over(state.limits)
    who = principal(Scope(daily_budget=micro(800)))
    for _ in range(2):
        assert await budgets.reserve(who, request()) is not None
    with pytest.raises(RateLimited):
        await budgets.reserve(who, request())
    clock.now += DAY / 2  # half a day refills half the budget: one more request
    assert await budgets.reserve(who, request()) is not None
    with pytest.raises(RateLimited):
        await budgets.reserve(who, request())


class BrokenState:
    async def admit(self, scopes: Sequence[Limit]) -> Decision:
        raise StateUnavailable("redis is down")

    async def adjust(self, changes: Sequence[Limit]) -> None:
        raise StateUnavailable("redis is down")


@pytest.mark.anyio
async def test_budgets_fail_closed_when_the_state_cannot_answer() -> None:
    budgets = budgets_over(BrokenState())
    with pytest.raises(ServiceUnavailable) as refused:
        await budgets.reserve(principal(Scope(daily_budget=micro(1000))), request())
    assert refused.value.status == 503
    assert refused.value.retry_after is not None and refused.value.retry_after > 0


@pytest.mark.anyio
async def test_settling_never_raises_when_the_state_cannot_answer(state: MemoryState) -> None:
    reservation = await budgets_over(state.limits).reserve(
        principal(Scope(daily_budget=micro(1000))), request()
    )
    assert reservation is not None
    await budgets_over(BrokenState()).settle(reservation, Decimal(0))
