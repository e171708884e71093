"""The cache when Redis fails (killed, frozen): it steps aside — a bypass, never an
exception, in bounded time — and works again once Redis is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from interlock.cache import CacheStatus, ResponseCache, build_cache
from interlock.config_file import CacheConfig
from interlock.state import SharedState, build_state
from tests.fixtures.redis import RedisServer, redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures
from tests.integration.cache_harness import ANSWER, CountingUpstream, chat, serve, text_of

pytestmark = pytest.mark.anyio

Instance = Callable[..., ResponseCache]


@pytest.fixture
async def instance(redis_url: str) -> AsyncIterator[Instance]:
    """Builds gateway instances' caches on the test's Redis with the default time bounds."""
    built: list[tuple[ResponseCache, SharedState]] = []

    def build(config: CacheConfig | None = None, **options: float) -> ResponseCache:
        state = build_state(redis_url, **options)
        cache = build_cache(config or CacheConfig(), state, shared=True)
        built.append((cache, state))
        return cache

    yield build
    for cache, state in built:
        await cache.aclose()
        await state.aclose()


async def test_a_killed_redis_is_bypassed_fast_and_used_again_once_back(
    instance: Instance, redis_server: RedisServer
) -> None:
    cache = instance(retry_interval=0.2)
    upstream = CountingUpstream()
    await serve(cache, chat(), upstream)
    assert (await serve(cache, chat(), upstream))[0].hit
    redis_server.kill()
    for _ in range(5):
        started = time.monotonic()
        decision, events = await serve(cache, chat(), upstream)
        assert time.monotonic() - started < 1.0
        assert decision.status is CacheStatus.BYPASS
        assert decision.reason == "unavailable"
        assert text_of(events) == ANSWER  # the request itself is served
    assert upstream.calls == 6
    assert cache.stats.unavailable == 5

    redis_server.reset()  # back, and empty
    await asyncio.sleep(0.25)  # the pause after an outage
    assert (await serve(cache, chat(), upstream))[0].status is CacheStatus.MISS
    assert (await serve(cache, chat(), upstream))[0].hit


async def test_a_frozen_redis_is_bypassed_within_the_state_timeout(
    instance: Instance, redis_server: RedisServer
) -> None:
    cache = instance()
    upstream = CountingUpstream()
    await serve(cache, chat(), upstream)
    with redis_server.frozen():
        started = time.monotonic()
        decision, events = await serve(cache, chat(), upstream)
        assert time.monotonic() - started < 1.0
        assert decision.status is CacheStatus.BYPASS
        assert text_of(events) == ANSWER

        async def one() -> CacheStatus:
            return (await cache.lookup(chat(), user="alice")).status

        started = time.monotonic()
        statuses = await asyncio.gather(*(one() for _ in range(100)))  # beyond the pool
        assert time.monotonic() - started < 3.0
        assert set(statuses) == {CacheStatus.BYPASS}


async def test_redis_dying_before_the_answer_is_stored_fails_nothing(
    instance: Instance, redis_server: RedisServer
) -> None:
    cache = instance()
    upstream = CountingUpstream()
    upstream.gate = asyncio.Event()
    leader = asyncio.create_task(serve(cache, chat(), upstream))
    await upstream.started.wait()
    waiter = asyncio.create_task(serve(cache, chat(), upstream))  # same instance
    async with asyncio.timeout(5):
        while cache.waiting < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    redis_server.kill()
    upstream.gate.set()
    started = time.monotonic()
    decision, events = await asyncio.wait_for(leader, timeout=5)  # finish: store + unlock fail
    assert time.monotonic() - started < 1.0
    assert decision.status is CacheStatus.MISS
    assert text_of(events) == ANSWER
    waited, replayed = await asyncio.wait_for(waiter, timeout=5)
    assert waited.hit  # handed over in process, no Redis needed
    assert text_of(replayed) == ANSWER
    assert upstream.calls == 1
    assert cache.stats.stored == 0


async def test_a_remote_waiter_whose_redis_dies_calls_upstream_itself(
    instance: Instance, redis_server: RedisServer
) -> None:
    leading, waiting = instance(), instance()
    upstream = CountingUpstream()
    upstream.gate = asyncio.Event()
    leader = asyncio.create_task(serve(leading, chat(), upstream))
    await upstream.started.wait()
    waiter = asyncio.create_task(waiting.lookup(chat(), user="alice"))
    async with asyncio.timeout(5):
        while waiting.waiting < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    redis_server.kill()
    started = time.monotonic()
    decision = await asyncio.wait_for(waiter, timeout=5)
    assert time.monotonic() - started < 1.5  # not the 30 s wait_timeout
    assert decision.status is CacheStatus.MISS  # so it calls upstream itself
    assert decision.reason == "unavailable"
    upstream.gate.set()
    leading_decision, events = await asyncio.wait_for(leader, timeout=5)
    assert text_of(events) == ANSWER
    assert leading_decision.status is CacheStatus.MISS
