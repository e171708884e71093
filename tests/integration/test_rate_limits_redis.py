"""The rate limiter across gateway instances sharing a real Redis, and when that Redis is
killed or frozen under load: the configured fallback, never an exception escaping."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import structlog

from interlock.auth.principal import Principal, Scope
from interlock.chat.types import ChatRequest, Message, TextPart
from interlock.errors import ServiceUnavailable
from interlock.limits.admission import Admission, RateLimitExceeded
from interlock.limits.rate_limits import RateLimiter
from interlock.settings import LimitsConfig, RateConfig
from interlock.state import MemoryState, SharedState, build_state
from tests.fixtures.redis import RedisServer, redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def who(
    user: str = "u1", key: str = "k1", *, owner: Scope, scope: Scope | None = None
) -> Principal:
    return Principal(
        user_id=user,
        user_name=user,
        role="member",
        tier="free",
        key_id=key,
        scope=owner.narrowed_by(scope or Scope()),
        owner_scope=owner,
    )


def chat(max_tokens: int = 96) -> ChatRequest:
    # "x" * 16 is an estimated 4 prompt tokens: 100 tokens reserved in all
    return ChatRequest(
        model="gpt",
        messages=[Message(role="user", content=[TextPart(text="x" * 16)])],
        max_tokens=max_tokens,
    )


class Instances:
    """Gateway instances: each its own Redis client (pool) and limiter, one Redis."""

    def __init__(self, url: str, stack: AsyncExitStack) -> None:
        self.url = url
        self.stack = stack

    async def limiter(self, **config: Any) -> RateLimiter:
        # These tests are about atomic decisions, not timeouts: a generous timeout so that a
        # loaded test machine does not make Redis look down, and "closed" so that, if it
        # still did, the test fails with a 503 instead of counting per instance.
        state = build_state(self.url, timeout=5.0, pool_timeout=5.0)
        self.stack.push_async_callback(state.aclose)
        await state.ping()  # connected before the test starts
        limiter = RateLimiter(state, LimitsConfig(on_state_failure="closed", **config))
        self.stack.push_async_callback(limiter.aclose)
        return limiter


@pytest.fixture
async def instances(redis_url: str) -> AsyncIterator[Instances]:
    async with AsyncExitStack() as stack:
        yield Instances(redis_url, stack)


async def outcome(call: Awaitable[Admission]) -> Admission | RateLimitExceeded:
    try:
        return await call
    except RateLimitExceeded as refusal:
        return refusal


def admitted(results: list[Admission | RateLimitExceeded]) -> list[Admission]:
    return [result for result in results if isinstance(result, Admission)]


def most(limit: int, started: float) -> int:
    """The most a per-minute ``limit`` may admit since ``started``: the burst, what has
    refilled since, and one of tolerance."""
    return limit + math.floor((time.monotonic() - started) * limit / 60) + 1


# --- across instances -----------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["key", "user", "tier"])
async def test_two_instances_hammered_together_admit_no_more_than_the_limit(
    instances: Instances, scope: str
) -> None:
    tiers = {"free": RateConfig(rpm=50)} if scope == "tier" else {}
    one, two = await instances.limiter(tiers=tiers), await instances.limiter(tiers=tiers)

    def principal(i: int) -> Principal:
        if scope == "key":  # one key narrower than its user
            return who(owner=Scope(rpm=80), scope=Scope(rpm=50))
        if scope == "user":  # the user's keys, each its own
            return who(key=f"k{i}", owner=Scope(rpm=50))
        return who(f"u{i}", f"k{i}", owner=Scope(rpm=80))  # every user of the tier

    started = time.monotonic()
    results = await asyncio.gather(
        *(outcome((one if i % 2 else two).admit(principal(i), chat())) for i in range(400))
    )
    held = admitted(results)
    assert 50 <= len(held) <= most(50, started)
    # Both instances admitted some: they really shared the decision.
    assert {a.limits_backend for a in held} == {one.state.shared, two.state.shared}
    codes = {r.code for r in results if isinstance(r, RateLimitExceeded)}
    assert codes == {f"{scope}_rate_limit_exceeded"}


async def test_two_instances_reserve_tokens_within_the_limit(instances: Instances) -> None:
    one, two = await instances.limiter(), await instances.limiter()
    owner = Scope(tpm=5000)  # 50 requests of 100 tokens
    started = time.monotonic()
    results = await asyncio.gather(
        *(outcome((one if i % 2 else two).admit(who(owner=owner), chat())) for i in range(300))
    )
    held = admitted(results)
    # A token bucket of 5000 a minute refills 83 a second: allow what refilled meanwhile.
    assert 50 <= len(held) <= most(5000, started) // 100 + 1
    # Settling on either instance gives the unused tokens back to everyone: each used 10.
    await asyncio.gather(*(one.settle(admission, 10) for admission in held))
    started = time.monotonic()
    again = await asyncio.gather(
        *(outcome((two if i % 2 else one).admit(who(owner=owner), chat())) for i in range(300))
    )
    room = 5000 - 10 * len(held)
    assert room // 100 <= len(admitted(again)) <= (room + most(5000, started) - 5000) // 100 + 1


async def test_two_instances_hold_no_more_concurrent_requests_than_the_cap(
    instances: Instances,
) -> None:
    one, two = await instances.limiter(), await instances.limiter()
    owner = Scope(max_concurrent=20)
    key = Scope(max_concurrent=7)
    results = await asyncio.gather(
        *(
            outcome((one if i % 2 else two).admit(who(owner=owner, scope=key), chat()))
            for i in range(300)
        )
    )
    held = admitted(results)
    assert len(held) == 7
    refusals = [r for r in results if isinstance(r, RateLimitExceeded)]
    assert {r.code for r in refusals} == {"concurrency_limit_exceeded"}
    # Released from either instance, the slots are free for both.
    await asyncio.gather(*(two.settle(admission, 1) for admission in held))
    again = await asyncio.gather(
        *(
            outcome((two if i % 2 else one).admit(who(owner=owner, scope=key), chat()))
            for i in range(100)
        )
    )
    assert len(admitted(again)) == 7


async def test_failed_authentications_from_many_instances_add_up(instances: Instances) -> None:
    limiters = [await instances.limiter(failed_auth_per_minute=50) for _ in range(3)]
    await asyncio.gather(*(limiters[i % 3].note_failed_auth("203.0.113.9") for i in range(50)))
    for limiter in limiters:
        with pytest.raises(RateLimitExceeded, match="failed authentications"):
            await limiter.before_auth("203.0.113.9")
        await limiter.before_auth("203.0.113.10")


# --- Redis failing under load ----------------------------------------------------------------


async def limiter_over(
    stack: AsyncExitStack, url: str, policy: str, **config: Any
) -> tuple[RateLimiter, SharedState]:
    state = build_state(url)
    stack.push_async_callback(state.aclose)
    await state.ping()
    limiter = RateLimiter(
        state, LimitsConfig(on_state_failure=policy, **config), local=MemoryState()
    )
    stack.push_async_callback(limiter.aclose)
    return limiter, state


Load = Callable[[], Awaitable[list[object]]]


def load(limiter: RateLimiter, principal: Principal, count: int = 150) -> Load:
    """``count`` concurrent requests (before_auth, then admit); their outcomes."""

    async def request() -> object:
        try:
            quotas = await limiter.before_auth("203.0.113.9")
            return await limiter.admit(principal, chat(), before=quotas)
        except (RateLimitExceeded, ServiceUnavailable) as refusal:
            return refusal

    async def run() -> list[object]:
        return list(await asyncio.gather(*(request() for _ in range(count))))

    return run


@pytest.mark.parametrize("failure", ["killed", "frozen"])
async def test_local_fallback_keeps_limiting_per_instance(
    redis_url: str, redis_server: RedisServer, failure: str
) -> None:
    async with AsyncExitStack() as stack:
        limiter, _ = await limiter_over(stack, redis_url, "local", ip_rpm=1000)
        principal = who(owner=Scope(rpm=20, max_concurrent=100))
        before = await limiter.admit(principal, chat())  # counted in Redis
        if failure == "killed":
            redis_server.kill()
        else:
            redis_server.freeze()
        try:
            with structlog.testing.capture_logs() as logs:
                started = time.monotonic()
                results = await load(limiter, principal)()
                elapsed = time.monotonic() - started
        finally:
            redis_server.thaw()
        assert elapsed < 3.0, f"took {elapsed:.2f}s"
        held = [r for r in results if isinstance(r, Admission)]
        refused = [r for r in results if isinstance(r, RateLimitExceeded)]
        assert len(held) + len(refused) == 150  # nothing else escaped
        assert len(held) == 20  # this instance's own bucket, fresh
        assert {r.code for r in refused} == {"user_rate_limit_exceeded"}
        warnings = [e for e in logs if e["event"] == "rate_limit_state_unavailable"]
        assert warnings, logs
        assert len(warnings) <= 3  # once per kind of operation, not once per request
        assert warnings[0]["on_state_failure"] == "local"
        # Ending them never raises either: local slots locally; the shared one by its lease.
        for admission in [*held, before]:
            await limiter.settle(admission, 5)
        # Once Redis answers again, the decisions are shared again.
        redis_server.reset()
        await limiter.state.shared.ping()
        again = await limiter.admit(principal, chat())
        assert again.limits_backend is limiter.state.shared


async def test_open_admits_everything_while_redis_is_down(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with AsyncExitStack() as stack:
        limiter, _ = await limiter_over(stack, redis_url, "open", ip_rpm=5)
        principal = who(owner=Scope(rpm=5, max_concurrent=1))
        redis_server.kill()
        with structlog.testing.capture_logs() as logs:
            results = await load(limiter, principal)()
        assert all(isinstance(r, Admission) for r in results)
        assert all(r.headers() == {} for r in results if isinstance(r, Admission))
        for admission in results:
            assert isinstance(admission, Admission)
            await limiter.settle(admission, 1)
        await limiter.note_failed_auth("203.0.113.9")
        assert any(e["on_state_failure"] == "open" for e in logs)


@pytest.mark.parametrize("failure", ["killed", "frozen"])
async def test_closed_refuses_with_503_and_retry_after(
    redis_url: str, redis_server: RedisServer, failure: str
) -> None:
    async with AsyncExitStack() as stack:
        limiter, state = await limiter_over(stack, redis_url, "closed")
        principal = who(owner=Scope(rpm=1000))
        if failure == "killed":
            redis_server.kill()
        else:
            redis_server.freeze()
        try:
            started = time.monotonic()
            results = await load(limiter, principal)()
            elapsed = time.monotonic() - started
            await limiter.note_failed_auth("203.0.113.9")  # never raises
        finally:
            redis_server.thaw()
        assert elapsed < 3.0, f"took {elapsed:.2f}s"
        assert all(isinstance(r, ServiceUnavailable) for r in results), results[:3]
        error = results[0]
        assert isinstance(error, ServiceUnavailable)
        assert error.status == 503
        assert error.retry_after == 5
        # Back to normal once Redis answers again.
        redis_server.reset()
        await state.ping()
        assert isinstance(await limiter.admit(principal, chat()), Admission)


async def test_a_slot_that_could_not_be_released_frees_itself_by_its_lease(
    redis_url: str, redis_server: RedisServer
) -> None:
    async with AsyncExitStack() as stack:
        limiter, state = await limiter_over(stack, redis_url, "local", concurrency_lease=1.0)
        principal = who(owner=Scope(max_concurrent=1))
        held = await limiter.admit(principal, chat())
        assert held.slots[0][1] is state  # held in Redis
        with redis_server.frozen():
            await limiter.settle(held, 3)  # the release times out: logged, not raised
        await state.ping()
        refusal = await outcome(limiter.admit(principal, chat()))
        assert isinstance(refusal, RateLimitExceeded)  # Redis still counts the slot...
        await asyncio.sleep(1.05)
        again = await limiter.admit(principal, chat())  # ...until its lease ended
        assert again.slots[0][1] is state
        await limiter.settle(again, 0)
