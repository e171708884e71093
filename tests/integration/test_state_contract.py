"""One contract for every shared-state backend: the in-process state (driven by a fake clock)
and the Redis state (a real server; real time, so its waits are short and its timings are
compared with a small tolerance)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from interlock.state import Limit, SharedState, build_state
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
    """A backend under test, with the means to let time pass and to reach it from a second
    gateway instance (the same object in process; another client and pool with Redis)."""

    def __init__(self, backend: str, url: str | None, stack: AsyncExitStack) -> None:
        self.backend = backend
        self.url = url
        self.clock = FakeClock()
        self._stack = stack
        self.state = self._build()
        self.exact = url is None

    def _build(self, **options: Any) -> SharedState:
        state = build_state(self.url, clock=self.clock, **options)
        self._stack.push_async_callback(state.aclose)
        return state

    def peer(self, **options: Any) -> SharedState:
        return self.state if self.url is None else self._build(**options)

    async def advance(self, seconds: float) -> None:
        if self.url is None:
            self.clock.now += seconds
        else:
            await anyio.sleep(seconds)

    def approx(self, expected: float, slack: float = 0.05) -> Any:
        """Equal in process; within ``slack`` seconds with Redis (real time runs on)."""
        if self.exact:
            return pytest.approx(expected, rel=1e-9, abs=1e-9)
        return pytest.approx(expected, abs=slack)


@pytest.fixture(params=["memory", "redis"])
def state_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def harness(state_url: str | None) -> AsyncIterator[Harness]:
    async with AsyncExitStack() as stack:
        yield Harness("memory" if state_url is None else "redis", state_url, stack)


# --- rate limits ---------------------------------------------------------------------------


async def test_admits_exactly_the_limit_then_says_when_to_retry(harness: Harness) -> None:
    limits = harness.state.limits
    scope = Limit("key:a:requests", limit=5, window=100)
    remaining = []
    for _ in range(5):
        decision = await limits.admit([scope])
        assert decision.allowed
        assert decision.refused is None
        assert decision.retry_after == 0
        remaining.append(decision.scopes[0].remaining)
    assert remaining == [4, 3, 2, 1, 0]
    assert decision.scopes[0].limit == 5
    assert decision.scopes[0].reset == harness.approx(100.0)  # 5 units at 1 per 20 s

    refused = await limits.admit([scope])
    assert not refused.allowed
    assert refused.refused is not None
    assert refused.refused.key == "key:a:requests"
    assert refused.retry_after == harness.approx(20.0)  # one unit drains in window / limit
    assert refused.scopes[0].remaining == 0
    assert not refused.never


async def test_a_bucket_refills_at_the_limit_rate(harness: Harness) -> None:
    limits = harness.state.limits
    scope = Limit("ip:1.2.3.4", limit=2, window=0.4)
    assert (await limits.admit([scope])).allowed
    assert (await limits.admit([scope])).allowed
    refused = await limits.admit([scope])
    assert not refused.allowed
    assert refused.retry_after == harness.approx(0.2, slack=0.03)
    if harness.exact:  # the boundary, to the microsecond: only a fake clock can show it
        await harness.advance(refused.retry_after - 1e-6)
        assert not (await limits.admit([scope])).allowed
        await harness.advance(1e-6)
    else:
        await harness.advance(refused.retry_after + 0.02)
    again = await limits.admit([scope])
    assert again.allowed
    assert again.scopes[0].remaining == 0
    await harness.advance(0.45)  # a whole window: full again
    full = await limits.admit([scope])
    assert full.allowed
    assert full.scopes[0].remaining == 1


async def test_several_scopes_are_all_or_nothing(harness: Harness) -> None:
    limits = harness.state.limits
    wide = Limit("user:u", limit=10, window=100)
    narrow = Limit("model:m", limit=1, window=100)
    first = await limits.admit([wide, narrow])
    assert first.allowed
    assert [s.remaining for s in first.scopes] == [9, 0]

    second = await limits.admit([wide, narrow])
    assert not second.allowed
    assert second.refused is not None
    assert second.refused.key == "model:m"
    assert [s.key for s in second.scopes] == ["user:u", "model:m"]  # in the order asked
    assert second.scopes[0].remaining == 9  # what it would still admit: nothing recorded
    assert second.scopes[0].retry_after == 0

    third = await limits.admit([wide])
    assert third.allowed
    assert third.scopes[0].remaining == 8  # the refused request took nothing from "user:u"


async def test_the_longest_wait_is_the_one_reported(harness: Harness) -> None:
    limits = harness.state.limits
    per_second = Limit("a", limit=1, window=10)  # refills 1 unit in 10 s
    per_minute = Limit("b", limit=1, window=60)  # refills 1 unit in 60 s
    assert (await limits.admit([per_second, per_minute])).allowed
    refused = await limits.admit([per_second, per_minute])
    assert not refused.allowed
    assert refused.refused is not None
    assert refused.refused.key == "b"
    assert refused.retry_after == harness.approx(60.0)
    assert refused.scopes[0].retry_after == harness.approx(10.0)


async def test_tokens_reserved_then_refunded_or_charged(harness: Harness) -> None:
    limits = harness.state.limits
    tokens = Limit("key:a:tokens", limit=1000, window=100)  # refills 10 tokens a second

    reserved = await limits.admit([Limit(tokens.key, 1000, 100, cost=800)])
    assert reserved.allowed
    assert reserved.scopes[0].remaining == 200
    refused = await limits.admit([Limit(tokens.key, 1000, 100, cost=300)])
    assert not refused.allowed
    assert refused.retry_after == harness.approx(10.0)  # 100 tokens too many at 10/s

    await limits.adjust([Limit(tokens.key, 1000, 100, cost=-500)])  # used 300 of 800
    after_refund = await limits.admit([Limit(tokens.key, 1000, 100, cost=300)])
    assert after_refund.allowed
    assert after_refund.scopes[0].remaining == 400

    await limits.adjust([Limit(tokens.key, 1000, 100, cost=700)])  # used more than reserved
    over = await limits.admit([Limit(tokens.key, 1000, 100, cost=0)])
    assert not over.allowed  # over its limit: even a zero cost waits
    assert over.scopes[0].remaining == 0
    assert over.retry_after == harness.approx(30.0)  # 1300 in use, 300 over at 10/s

    await limits.adjust([Limit(tokens.key, 1000, 100, cost=-5000)])  # never below empty
    empty = await limits.admit([Limit(tokens.key, 1000, 100, cost=0)])
    assert empty.scopes[0].remaining == 1000
    assert empty.scopes[0].reset == 0


async def test_a_cost_above_the_limit_can_never_be_admitted(harness: Harness) -> None:
    limits = harness.state.limits
    huge = Limit("key:a:tokens", limit=1000, window=60, cost=1001)
    decision = await limits.admit([huge, Limit("key:a:requests", limit=10, window=60)])
    assert not decision.allowed
    assert decision.never
    assert math.isinf(decision.retry_after)
    assert decision.refused is not None
    assert decision.refused.key == "key:a:tokens"
    requests = await limits.admit([Limit("key:a:requests", limit=10, window=60)])
    assert requests.scopes[0].remaining == 9  # the refused call recorded nothing


async def test_concurrent_admissions_never_exceed_the_limit(harness: Harness) -> None:
    # Two instances, each opening its pool under the burst: a generous timeout, since this
    # test is about atomicity, and a 2-core machine can take longer than the default 0.25 s
    # to connect 64 sockets while running 200 requests.
    first, second = harness.peer(timeout=2.0), harness.peer(timeout=2.0)
    scope = Limit("key:hot", limit=50, window=3600)
    admitted = 0

    async def one(state: SharedState) -> None:
        nonlocal admitted
        if (await state.limits.admit([scope])).allowed:
            admitted += 1

    async with anyio.create_task_group() as group:
        for i in range(200):
            group.start_soon(one, first if i % 2 else second)
    assert admitted == 50


# --- concurrency slots ---------------------------------------------------------------------


async def test_slots_up_to_the_limit_and_release(harness: Harness) -> None:
    slots = harness.state.slots
    assert await slots.acquire("dep:a", "r1", limit=2, lease=30)
    assert await slots.acquire("dep:a", "r2", limit=2, lease=30)
    assert not await slots.acquire("dep:a", "r3", limit=2, lease=30)
    assert await slots.acquire("dep:a", "r1", limit=2, lease=30)  # already held: kept
    assert await slots.counts(["dep:a", "dep:b"]) == [2, 0]

    assert await slots.release("dep:a", "r1")
    assert not await slots.release("dep:a", "r1")  # already released
    assert not await slots.release("dep:b", "r1")  # never held
    assert await slots.counts(["dep:a"]) == [1]
    assert await slots.acquire("dep:a", "r3", limit=2, lease=30)
    assert await slots.counts(["dep:b", "dep:a"]) == [0, 2]


async def test_a_slot_lease_ends_by_itself(harness: Harness) -> None:
    slots = harness.state.slots
    assert await slots.acquire("dep:a", "crashed", limit=1, lease=0.2)
    assert await slots.acquire("dep:a", "alive", limit=2, lease=0.2)
    assert await slots.renew("dep:a", "alive", lease=0.6)
    await harness.advance(0.3)
    assert await slots.counts(["dep:a"]) == [1]  # only the renewed holder still counts
    assert not await slots.renew("dep:a", "crashed", lease=1)
    assert not await slots.release("dep:a", "crashed")
    assert await slots.acquire("dep:a", "next", limit=2, lease=1)
    assert not await slots.acquire("dep:a", "one-too-many", limit=2, lease=1)
    assert await slots.release("dep:a", "alive")


async def test_slots_are_shared_between_instances(harness: Harness) -> None:
    first, second = harness.state, harness.peer()
    assert await first.slots.acquire("dep:a", "r1", limit=1, lease=30)
    assert not await second.slots.acquire("dep:a", "r2", limit=1, lease=30)
    assert await second.slots.counts(["dep:a"]) == [1]
    assert await second.slots.release("dep:a", "r1")
    assert await second.slots.acquire("dep:a", "r2", limit=1, lease=30)


# --- outcome windows -----------------------------------------------------------------------


async def test_outcomes_count_successes_and_failures(harness: Harness) -> None:
    outcomes = harness.state.outcomes
    assert (await outcomes.read("dep:a", window=30)).total == 0
    for ok in (True, True, False, True):
        stats = await outcomes.record("dep:a", ok=ok, window=30)
    assert (stats.successes, stats.failures) == (3, 1)
    assert stats.failure_rate == 0.25
    read = await outcomes.read("dep:a", window=30)
    assert (read.successes, read.failures) == (3, 1)
    assert (await outcomes.read("dep:b", window=30)).total == 0
    await outcomes.clear("dep:a")
    assert (await outcomes.read("dep:a", window=30)).total == 0


async def test_outcomes_slide_out_of_the_window(harness: Harness) -> None:
    outcomes = harness.state.outcomes
    await outcomes.record("dep:a", ok=False, window=0.5)
    await outcomes.record("dep:a", ok=False, window=0.5)
    await harness.advance(0.3)
    stats = await outcomes.record("dep:a", ok=True, window=0.5)
    assert (stats.successes, stats.failures) == (1, 2)
    await harness.advance(0.3)  # the failures are 0.6 s old, the success 0.3 s
    stats = await outcomes.read("dep:a", window=0.5)
    assert (stats.successes, stats.failures) == (1, 0)
    stats = await outcomes.record("dep:a", ok=True, window=0.5)  # counts what slid out no more
    assert (stats.successes, stats.failures) == (2, 0)
    await harness.advance(0.6)
    assert (await outcomes.read("dep:a", window=0.5)).total == 0
    stats = await outcomes.record("dep:a", ok=False, window=0.5)
    assert (stats.successes, stats.failures) == (0, 1)


async def test_outcomes_are_shared_between_instances(harness: Harness) -> None:
    first, second = harness.state, harness.peer()
    await first.outcomes.record("dep:a", ok=False, window=30)
    stats = await second.outcomes.record("dep:a", ok=False, window=30)
    assert stats.failures == 2
    assert stats.failure_rate == 1.0


# --- key / value ---------------------------------------------------------------------------


async def test_kv_set_get_delete(harness: Harness) -> None:
    kv = harness.state.kv
    assert await kv.get("a") is None
    assert await kv.set("a", b"one", ttl=30)
    assert await kv.get("a") == b"one"
    assert await kv.set("a", b"two", ttl=30)
    assert await kv.get("a") == b"two"
    assert await kv.delete("a")
    assert not await kv.delete("a")
    assert await kv.get("a") is None
    assert await kv.set("empty", b"", ttl=30)
    assert await kv.get("empty") == b""


async def test_kv_values_expire(harness: Harness) -> None:
    kv = harness.state.kv
    assert await kv.set("short", b"x", ttl=0.2)
    assert await kv.set("long", b"y", ttl=30)
    await harness.advance(0.25)
    assert await kv.get("short") is None
    assert not await kv.delete("short")
    assert await kv.get("long") == b"y"


async def test_kv_refuses_a_value_over_the_item_limit(harness: Harness) -> None:
    kv = harness.state.kv
    assert await kv.set("a", b"small", ttl=30)
    too_big = b"x" * (kv.max_item_bytes + 1)
    assert not await kv.set("a", too_big, ttl=30)
    assert not await kv.set_if_absent("b", too_big, ttl=30)
    assert await kv.get("a") == b"small"  # the old value is kept
    assert await kv.get("b") is None
    assert await kv.set("c", b"x" * kv.max_item_bytes, ttl=30)


async def test_kv_set_if_absent_elects_one_leader(harness: Harness) -> None:
    first, second = harness.state.kv, harness.peer().kv
    assert await first.set_if_absent("flight:abc", b"instance-1", ttl=0.2)
    assert not await second.set_if_absent("flight:abc", b"instance-2", ttl=0.2)
    assert await second.get("flight:abc") == b"instance-1"
    await harness.advance(0.25)
    assert await second.set_if_absent("flight:abc", b"instance-2", ttl=30)
    assert await second.delete("flight:abc")
    assert await first.set_if_absent("flight:abc", b"instance-1", ttl=30)

    results = []

    async def claim(kv: Any, name: str) -> None:
        results.append(await kv.set_if_absent("flight:race", name.encode(), ttl=30))

    async with anyio.create_task_group() as group:
        for i in range(20):
            group.start_soon(claim, first if i % 2 else second, f"w{i}")
    assert sorted(results) == [False] * 19 + [True]


# --- locks ---------------------------------------------------------------------------------


async def test_only_the_owner_renews_or_releases_a_lock(harness: Harness) -> None:
    first, second = harness.state.locks, harness.peer().locks
    assert await first.acquire("job:backup", "instance-1", lease=30)
    assert not await second.acquire("job:backup", "instance-2", lease=30)
    assert await first.acquire("job:backup", "instance-1", lease=30)  # ours: refreshed
    assert not await second.release("job:backup", "instance-2")
    assert not await second.renew("job:backup", "instance-2", lease=30)
    assert await first.renew("job:backup", "instance-1", lease=30)
    assert await first.release("job:backup", "instance-1")
    assert not await first.release("job:backup", "instance-1")
    assert await second.acquire("job:backup", "instance-2", lease=30)


async def test_a_lock_lease_ends_by_itself(harness: Harness) -> None:
    first, second = harness.state.locks, harness.peer().locks
    assert await first.acquire("job:cleanup", "instance-1", lease=0.2)
    await harness.advance(0.25)
    assert await second.acquire("job:cleanup", "instance-2", lease=30)
    assert not await first.renew("job:cleanup", "instance-1", lease=30)
    assert not await first.release("job:cleanup", "instance-1")
    assert await second.release("job:cleanup", "instance-2")


# --- pub/sub -------------------------------------------------------------------------------


async def test_published_messages_reach_every_subscriber_in_order(harness: Harness) -> None:
    publisher = harness.peer().pubsub
    assert await publisher.publish("keys", b"nobody listens") == 0
    one = await harness.state.pubsub.subscribe("keys")
    two = await harness.state.pubsub.subscribe("keys", "tiers")
    async with one, two:
        assert await publisher.publish("keys", b"k1") == 2
        assert await publisher.publish("tiers", b"t1") == 1
        assert await publisher.publish("keys", b"k2") == 2
        with anyio.fail_after(5):
            assert [await one.__anext__(), await one.__anext__()] == [b"k1", b"k2"]
            assert [await two.__anext__() for _ in range(3)] == [b"k1", b"t1", b"k2"]
    assert await publisher.publish("keys", b"after close") == 0


async def test_a_closed_subscription_ends_its_iteration(harness: Harness) -> None:
    subscription = await harness.state.pubsub.subscribe("keys")
    received: list[bytes] = []
    first_received = anyio.Event()

    async def consume() -> None:
        async for message in subscription:
            received.append(message)
            first_received.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(consume)
            await harness.peer().pubsub.publish("keys", b"one")
            await first_received.wait()
            await subscription.aclose()  # consume() must return by itself
    assert received == [b"one"]


# --- health --------------------------------------------------------------------------------


async def test_a_working_state_is_healthy(harness: Harness) -> None:
    await harness.state.ping()
    assert harness.state.healthy
    assert harness.state.last_error is None
    assert harness.state.backend == harness.backend
