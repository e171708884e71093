"""The rate limiter's contract, over the in-process state (a fake clock) and a real Redis (real
time: every limit here refills over a minute, so a test that takes a second sees at most a
sliver of refill, and waits are compared with a small tolerance)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from interlock.auth.principal import Principal, Scope
from interlock.chat.types import ChatRequest, Message, TextPart
from interlock.errors import RateLimited
from interlock.limits.admission import RateLimitExceeded
from interlock.limits.quota import NO_QUOTAS, Quota
from interlock.limits.rate_limits import RateLimiter
from interlock.settings import LimitsConfig, RateConfig
from interlock.state import SharedState, build_state
from tests.fixtures.redis import redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A state backend under test and the means to build limiters over it."""

    def __init__(self, url: str | None, stack: AsyncExitStack) -> None:
        self.url = url
        self.exact = url is None
        self.clock = FakeClock()
        self._stack = stack
        self.state = build_state(url, clock=self.clock)
        stack.push_async_callback(self.state.aclose)

    def limiter(
        self, state: SharedState | None = None, *, default_output: int = 100, **config: Any
    ) -> RateLimiter:
        limiter = RateLimiter(
            state or self.state, LimitsConfig(**config), default_output_tokens=default_output
        )
        self._stack.push_async_callback(limiter.aclose)
        return limiter

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass: on the fake clock in process, really with Redis."""
        if self.url is None:
            self.clock.now += seconds
        else:
            await anyio.sleep(seconds)

    def remaining(self, quota: Quota | None, expected: int) -> None:
        """``quota`` has ``expected`` units left: exactly in process; with Redis, real time
        also refills a few (a token bucket of 1000 a minute refills 17 a second)."""
        assert quota is not None
        if self.exact:
            assert quota.remaining == expected
        else:
            assert expected <= quota.remaining <= expected + 3, (quota.remaining, expected)


@pytest.fixture(params=["memory", "redis"])
def state_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def harness(state_url: str | None) -> AsyncIterator[Harness]:
    async with AsyncExitStack() as stack:
        yield Harness(state_url, stack)


def who(
    user: str = "u1",
    key: str | None = "k1",
    *,
    tier: str = "free",
    owner: Scope | None = None,
    scope: Scope | None = None,
) -> Principal:
    """A principal whose key narrows the user's ``owner`` scope by ``scope``."""
    owner = owner or Scope()
    return Principal(
        user_id=user,
        user_name=user,
        role="member",
        tier=tier,
        key_id=key,
        scope=owner.narrowed_by(scope or Scope()),
        owner_scope=owner,
    )


def chat(text: str = "hi", max_tokens: int | None = 10, model: str = "gpt") -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=[Message(role="user", content=[TextPart(text=text)])],
        max_tokens=max_tokens,
    )


async def refused(coroutine: Any) -> RateLimitExceeded:
    with pytest.raises(RateLimitExceeded) as caught:
        await coroutine
    error = caught.value
    assert isinstance(error, RateLimited)
    assert error.status == 429
    return error


# --- requests per minute, scope by scope ---------------------------------------------------


async def test_a_key_limit_refuses_with_its_scope_wait_and_headers(harness: Harness) -> None:
    limiter = harness.limiter()
    key = who(owner=Scope(rpm=10), scope=Scope(rpm=3))
    remaining = []
    for _ in range(3):
        admission = await limiter.admit(key, chat())
        assert admission.quotas.requests is not None
        remaining.append(admission.quotas.requests.remaining)
        assert admission.quotas.requests.limit == 3  # the key's, tighter than the user's
    assert remaining == [2, 1, 0]
    assert admission.headers()["x-ratelimit-limit-requests"] == "3"
    assert admission.headers()["x-ratelimit-remaining-requests"] == "0"
    if harness.exact:
        assert admission.headers()["x-ratelimit-reset-requests"] == "1m0s"

    error = await refused(limiter.admit(key, chat()))
    assert error.code == "key_rate_limit_exceeded"
    assert error.retry_after == 20  # one request drains in 60 / 3 s, in whole seconds
    assert "API key" in error.message
    assert error.headers["x-ratelimit-remaining-requests"] == "0"
    assert error.headers["x-ratelimit-limit-requests"] == "3"

    # The same user's other key is held to the user's limit, which counted those three.
    other = await limiter.admit(who(key="k2", owner=Scope(rpm=10)), chat())
    assert other.quotas.requests is not None
    assert other.quotas.requests.limit == 10
    harness.remaining(other.quotas.requests, 6)


async def test_a_user_limit_counts_every_key_and_session(harness: Harness) -> None:
    limiter = harness.limiter()
    owner = Scope(rpm=4)
    for key in ("k1", "k2", None, "k1"):
        await limiter.admit(who(key=key, owner=owner), chat())
    for key in ("k1", "k3", None):
        error = await refused(limiter.admit(who(key=key, owner=owner), chat()))
        assert error.code == "user_rate_limit_exceeded"
        assert error.retry_after == 15
    # Another user is untouched.
    await limiter.admit(who("u2", "k9", owner=owner), chat())


async def test_a_tier_limit_counts_all_its_users_together(harness: Harness) -> None:
    limiter = harness.limiter(tiers={"free": RateConfig(rpm=3)})
    for user in ("u1", "u2", "u3"):
        await limiter.admit(who(user, None), chat())
    error = await refused(limiter.admit(who("u4", None), chat()))
    assert error.code == "tier_rate_limit_exceeded"
    assert error.retry_after == 20
    await limiter.admit(who("u5", None, tier="premium"), chat())


async def test_a_model_limit_holds_each_user_on_that_model(harness: Harness) -> None:
    limiter = harness.limiter(models={"gpt": RateConfig(rpm=2)})
    await limiter.admit(who(), chat())
    await limiter.admit(who(), chat())
    error = await refused(limiter.admit(who(), chat()))
    assert error.code == "model_rate_limit_exceeded"
    await limiter.admit(who(), chat(model="other"))  # another model
    await limiter.admit(who("u2", "k2"), chat())  # another user


async def test_no_limit_means_no_state_call_and_no_headers(harness: Harness) -> None:
    limiter = harness.limiter(failed_auth_per_minute=None)
    admission = await limiter.admit(who(), chat())
    assert admission.headers() == {}
    assert await limiter.before_auth("203.0.113.9") == NO_QUOTAS
    await limiter.settle(admission, 5)


async def test_an_ip_limit_applies_before_authentication(harness: Harness) -> None:
    limiter = harness.limiter(ip_rpm=3)
    for remaining in (2, 1, 0):
        quotas = await limiter.before_auth("203.0.113.9")
        assert quotas.requests is not None
        assert quotas.requests.remaining == remaining
    error = await refused(limiter.before_auth("203.0.113.9"))
    assert error.code == "ip_rate_limit_exceeded"
    assert error.retry_after == 20
    await limiter.before_auth("198.51.100.1")  # another client
    # IPv6 clients are counted per /64.
    for _ in range(3):
        await limiter.before_auth("2001:db8:0:1::a")
    await refused(limiter.before_auth("2001:db8:0:1::b"))
    # The IP's quota is reported after authentication when it is the tightest.
    quotas = await limiter.before_auth("198.51.100.1")
    admission = await limiter.admit(who(owner=Scope(rpm=100)), chat(), before=quotas)
    assert admission.quotas.requests is not None
    assert admission.quotas.requests.limit == 3
    assert admission.quotas.requests.remaining == 1


# --- bursts ---------------------------------------------------------------------------------


async def test_no_double_burst_at_a_minute_boundary(harness: Harness) -> None:
    """A fixed-window counter admits the limit just before a minute ends and again just
    after; GCRA admits only what has refilled since the burst."""
    harness.clock.now = 60 * 1000 - 0.25  # a quarter second before a whole minute
    limiter = harness.limiter()
    user = who(owner=Scope(rpm=30))
    for _ in range(30):
        await limiter.admit(user, chat())
    await refused(limiter.admit(user, chat()))
    await harness.advance(0.5)  # past the minute boundary
    error = await refused(limiter.admit(user, chat()))
    assert error.retry_after == 2  # one request every two seconds, now ~1.5 s away
    await harness.advance(1.6)
    await limiter.admit(user, chat())  # exactly the refill: one
    await refused(limiter.admit(user, chat()))


# --- tokens ---------------------------------------------------------------------------------


async def test_tokens_are_reserved_up_front_and_settled_to_the_real_usage(
    harness: Harness,
) -> None:
    limiter = harness.limiter()
    user = who(owner=Scope(tpm=1000))
    request = chat("x" * 400, max_tokens=300)  # about 100 prompt tokens + 300 = 400
    assert limiter.reserved_tokens(request) == 400
    first = await limiter.admit(user, request)
    harness.remaining(first.quotas.tokens, 600)
    assert first.headers()["x-ratelimit-limit-tokens"] == "1000"
    second = await limiter.admit(user, request)
    harness.remaining(second.quotas.tokens, 200)
    assert second.quotas.requests is None  # no rpm: no request headers

    error = await refused(limiter.admit(user, request))
    assert error.code == "user_rate_limit_exceeded"
    assert error.retry_after == 12  # 200 tokens short at 1000 / 60 a second
    harness.remaining(error.quotas.tokens, 200)

    await limiter.settle(first, 50)  # it used 50: 350 come back
    third = await limiter.admit(user, request)
    harness.remaining(third.quotas.tokens, 150)

    await limiter.settle(first, 999)  # settling twice changes nothing
    await limiter.settle(second, 0)  # failed before the provider: everything back
    await limiter.settle(third, 500)  # more than reserved: the extra is charged
    probe = await limiter.admit(user, chat("", max_tokens=1))
    harness.remaining(probe.quotas.tokens, 1000 - 50 - 500 - 1)


async def test_a_request_larger_than_the_limit_is_refused_for_good(harness: Harness) -> None:
    limiter = harness.limiter()
    user = who(owner=Scope(tpm=1000), scope=Scope(tpm=500))
    error = await refused(limiter.admit(user, chat(max_tokens=600)))
    assert error.code == "key_rate_limit_exceeded"
    assert error.retry_after is None  # waiting cannot help
    assert "max_tokens" in error.message
    # Nothing was taken by the refusal.
    admission = await limiter.admit(user, chat(max_tokens=400))
    harness.remaining(admission.quotas.tokens, 500 - 401)


async def test_our_default_output_allowance_never_refuses_a_request_for_good(
    harness: Harness,
) -> None:
    limiter = harness.limiter(default_output=10_000)
    user = who(owner=Scope(tpm=1000))
    admission = await limiter.admit(user, chat(max_tokens=None))
    assert admission.reserved == 1000  # the whole bucket, corrected by settle
    harness.remaining(admission.quotas.tokens, 0)
    await limiter.settle(admission, 30)
    # The next one waits for the whole bucket, but it can come: a wait, not a "never".
    error = await refused(limiter.admit(user, chat(max_tokens=None)))
    assert error.retry_after == 2  # 30 tokens at 1000 / 60 a second: 1.8 s


# --- concurrency ----------------------------------------------------------------------------


async def test_concurrency_is_released_on_success_failure_and_cancellation(
    harness: Harness,
) -> None:
    limiter = harness.limiter()
    user = who(owner=Scope(rpm=100, max_concurrent=2))
    first = await limiter.admit(user, chat())
    second = await limiter.admit(user, chat())
    error = await refused(limiter.admit(user, chat()))
    assert error.code == "concurrency_limit_exceeded"
    assert error.retry_after == 1
    assert "this user" in error.message

    await limiter.settle(first, 12)  # finished
    third = await limiter.admit(user, chat())
    # The refused request took no request from the rpm bucket: 100 - 3.
    harness.remaining(third.quotas.requests, 97)
    await limiter.settle(second, 0)  # failed
    started = anyio.Event()

    async def request_then_client_leaves() -> None:
        admission = await limiter.admit(user, chat())
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await limiter.settle(admission, 3)

    async with anyio.create_task_group() as group:
        group.start_soon(request_then_client_leaves)
        await started.wait()
        await refused(limiter.admit(user, chat()))  # third + the streaming one
        group.cancel_scope.cancel()
    await limiter.settle(third, 1)
    await limiter.admit(user, chat())
    await limiter.admit(user, chat())


async def test_a_key_may_have_fewer_concurrent_requests_than_its_user(harness: Harness) -> None:
    limiter = harness.limiter()
    owner = Scope(max_concurrent=5)
    await limiter.admit(who(key="k1", owner=owner, scope=Scope(max_concurrent=1)), chat())
    error = await refused(
        limiter.admit(who(key="k1", owner=owner, scope=Scope(max_concurrent=1)), chat())
    )
    assert "API key" in error.message
    await limiter.admit(who(key="k2", owner=owner), chat())


async def test_a_slot_never_released_frees_itself_when_its_lease_ends(harness: Harness) -> None:
    limiter = harness.limiter(concurrency_lease=0.3)
    user = who(owner=Scope(max_concurrent=1))
    await limiter.admit(user, chat())  # its instance "crashes": never settled
    await refused(limiter.admit(user, chat()))
    await harness.advance(0.35)
    await limiter.admit(user, chat())


async def test_a_long_request_keeps_its_slot_by_renewing_it(harness: Harness) -> None:
    limiter = harness.limiter(concurrency_lease=0.4)
    user = who(owner=Scope(max_concurrent=1))
    admission = await limiter.admit(user, chat())
    for _ in range(3):
        await anyio.sleep(0.25)  # past half the lease (event-loop time)
        if harness.exact:
            harness.clock.now += 0.25
        await limiter.renew(admission)
    await refused(limiter.admit(user, chat()))  # 0.75 s on, still held
    await limiter.settle(admission, 0)
    await limiter.admit(user, chat())


# --- failed authentication ------------------------------------------------------------------


async def test_failed_authentications_lock_out_that_ip_only(harness: Harness) -> None:
    limiter = harness.limiter(failed_auth_per_minute=3)
    ip = "203.0.113.9"
    for _ in range(2):
        await limiter.before_auth(ip)
        await limiter.note_failed_auth(ip)
    await limiter.before_auth(ip)  # two failures: the third attempt may still be made
    await limiter.note_failed_auth(ip)
    error = await refused(limiter.before_auth(ip))
    assert error.code == "auth_attempts_exceeded"
    assert error.retry_after == 20  # one failure drains in 60 / 3 s
    await limiter.before_auth("198.51.100.1")  # other clients are not affected
    if harness.exact:  # (20 s is too long to wait for with Redis: see the next test)
        await harness.advance(20.05)
        await limiter.before_auth(ip)


async def test_failed_authentications_drain_at_their_rate(harness: Harness) -> None:
    limiter = harness.limiter(failed_auth_per_minute=120)
    ip = "2001:db8::1"
    for _ in range(120):
        await limiter.note_failed_auth(ip)
    error = await refused(limiter.before_auth("2001:db8::2"))  # the same /64
    assert error.retry_after == 1
    await harness.advance(0.55)  # one failure drains every 0.5 s
    await limiter.before_auth(ip)


async def test_successful_requests_never_count_as_failures(harness: Harness) -> None:
    limiter = harness.limiter(failed_auth_per_minute=1)
    for _ in range(200):
        await limiter.before_auth("203.0.113.9")


async def test_two_instances_share_one_view(harness: Harness) -> None:
    peer = harness.state if harness.url is None else build_state(harness.url)
    try:
        one, two = harness.limiter(), harness.limiter(peer)
        user = who(owner=Scope(rpm=5, max_concurrent=3))
        held = [await one.admit(user, chat()), await two.admit(user, chat())]
        held.append(await one.admit(user, chat()))
        assert (await refused(two.admit(user, chat()))).code == "concurrency_limit_exceeded"
        await one.settle(held[0], 1)
        held.append(await two.admit(user, chat()))  # the fourth request
        assert (await refused(one.admit(user, chat()))).code == "concurrency_limit_exceeded"
        await two.settle(held[1], 1)
        await one.admit(user, chat())  # the fifth: the last one of the minute
        assert (await refused(two.admit(user, chat()))).code == "user_rate_limit_exceeded"
    finally:
        if peer is not harness.state:
            await peer.aclose()


async def test_settle_soon_runs_from_synchronous_code(harness: Harness) -> None:
    limiter = harness.limiter()
    user = who(owner=Scope(max_concurrent=1, tpm=1000))
    admission = await limiter.admit(user, chat(max_tokens=500))
    limiter.settle_soon(admission, 2)  # e.g. from a stream's end callback
    await limiter.wait_settled()
    again = await limiter.admit(user, chat(max_tokens=10))  # the slot is free again
    harness.remaining(again.quotas.tokens, 1000 - 2 - 11)


async def test_a_caller_cancelled_while_being_admitted_leaves_nothing_held(
    harness: Harness,
) -> None:
    limiter = harness.limiter()
    user = who(owner=Scope(max_concurrent=1, tpm=1000))
    for delay in (0.0, 0.0005, 0.001, 0.002):
        admitting = asyncio.ensure_future(limiter.admit(user, chat(max_tokens=500)))
        await asyncio.sleep(delay)
        admitting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            finished = await admitting  # too late to cancel: the caller settles it
            await limiter.settle(finished, 0)
        await limiter.wait_settled()
        # Whatever point it was cancelled at, its slot and its tokens are back.
        admission = await limiter.admit(user, chat(max_tokens=500))
        harness.remaining(admission.quotas.tokens, 1000 - 501)
        await limiter.settle(admission, 0)
