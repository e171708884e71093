"""Single-flight: identical requests in flight at once make one upstream call, in one process
and across instances sharing Redis; waiters never wait beyond their bound, a failing or
cancelled leader lets them go on, and a cancelled waiter changes nothing for the others."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from interlock.cache import CacheDecision, CacheStatus, ResponseCache
from interlock.config_file import CacheConfig
from interlock.errors import UpstreamOverloaded
from tests.fixtures.redis import redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures
from tests.integration.cache_harness import ANSWER, Backend, CountingUpstream, chat, serve, text_of

pytestmark = pytest.mark.anyio

N = 20


@pytest.fixture(params=["memory", "redis"])
def state_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "memory":
        return None
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def backend(state_url: str | None) -> AsyncIterator[Backend]:
    async with AsyncExitStack() as stack:
        yield Backend(state_url, stack)


async def settle() -> None:
    """Time for every request started to reach its wait (and remote waiters to poll)."""
    await asyncio.sleep(0.15)


async def joined(caches: list[ResponseCache], count: int) -> None:
    """Until ``count`` requests wait on a flight, over these instances."""
    distinct = {id(cache): cache for cache in caches}.values()
    async with asyncio.timeout(5):
        while sum(cache.waiting for cache in distinct) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_n_identical_requests_make_one_upstream_call(backend: Backend) -> None:
    caches = [backend.cache(), backend.cache()]  # two instances with Redis
    upstream = CountingUpstream()
    upstream.gate = asyncio.Event()
    tasks = [
        asyncio.create_task(serve(caches[i % 2], chat(), upstream, user="alice")) for i in range(N)
    ]
    await upstream.started.wait()
    await joined(caches, N - 1)
    upstream.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert upstream.calls == 1
    statuses = sorted(decision.status for decision, _ in results)
    assert statuses == [CacheStatus.HIT] * (N - 1) + [CacheStatus.MISS]
    assert all(decision.coalesced for decision, _ in results if decision.hit)
    assert all(text_of(events) == ANSWER for _, events in results)


async def test_different_tenants_do_not_share_a_flight(backend: Backend) -> None:
    cache = backend.cache()
    upstream = CountingUpstream()
    upstream.gate = asyncio.Event()
    tasks = [
        asyncio.create_task(serve(cache, chat(), upstream, user=user))
        for user in ("alice", "bob", "carol")
    ]
    await settle()
    upstream.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert upstream.calls == 3
    assert [decision.status for decision, _ in results] == [CacheStatus.MISS] * 3


async def test_when_the_leader_fails_every_waiter_calls_upstream_itself(
    backend: Backend,
) -> None:
    caches = [backend.cache(), backend.cache()]
    upstream = CountingUpstream()
    upstream.gate = asyncio.Event()
    upstream.fail_first = 1  # the leader's call
    leader = asyncio.create_task(serve(caches[0], chat(), upstream))
    await upstream.started.wait()
    waiters = [asyncio.create_task(serve(caches[i % 2], chat(), upstream)) for i in range(N - 1)]
    await joined(caches, N - 1)
    assert upstream.calls == 1
    started = time.monotonic()
    upstream.gate.set()
    with pytest.raises(UpstreamOverloaded):
        await leader
    results = await asyncio.wait_for(asyncio.gather(*waiters), timeout=10)
    assert time.monotonic() - started < 5  # they went on at once, not after wait_timeout
    assert all(text_of(events) == ANSWER for _, events in results)
    # The leader's own instance learns at once: each of its waiters calls upstream itself,
    # side by side (not one after the other, each waiting for the previous one to fail).
    local = [decision for i, (decision, _) in enumerate(results) if i % 2 == 0 or backend.exact]
    assert [(d.status, d.reason) for d in local] == [(CacheStatus.MISS, "leader_failed")] * len(
        local
    )
    # With Redis, the other instance's waiters may instead find the answer one of those
    # stored meanwhile: never more calls than requests.
    assert 1 + len(local) <= upstream.calls <= N
    if backend.exact:
        assert upstream.calls == N


async def test_waiters_wait_no_longer_than_the_timeout(backend: Backend) -> None:
    """The bound runs from the flight's start: its lock's lease is as long."""
    config = CacheConfig(wait_timeout=0.3)
    caches = [backend.cache(config, fresh=True), backend.cache(config)]
    upstream = CountingUpstream()
    upstream.gate = asyncio.Event()  # the leader's upstream stalls
    started = time.monotonic()
    leader = asyncio.create_task(serve(caches[0], chat(), upstream))
    await upstream.started.wait()

    async def wait(index: int) -> tuple[CacheDecision, float]:
        decision = await caches[index % 2].lookup(chat(), user="alice")
        return decision, time.monotonic() - started

    results = await asyncio.wait_for(asyncio.gather(*(wait(i) for i in range(6))), timeout=5)
    for index, (decision, waited) in enumerate(results):
        assert decision.status is CacheStatus.MISS
        assert 0.25 < waited < 1.5
        if index % 2 == 0 or backend.exact:  # on the leader's instance
            assert decision.reason == "wait_timeout"
        else:  # elsewhere: the bound, or the leader's lock lease (as long) ended first
            assert decision.reason in ("wait_timeout", "leader_failed")
        await decision.abandon()
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader


async def test_a_cancelled_waiter_does_not_break_the_leader_or_the_others(
    backend: Backend,
) -> None:
    caches = [backend.cache(), backend.cache()]
    upstream = CountingUpstream()
    upstream.gate = asyncio.Event()
    leader = asyncio.create_task(serve(caches[0], chat(), upstream))
    await upstream.started.wait()
    waiters = [asyncio.create_task(serve(caches[i % 2], chat(), upstream)) for i in range(6)]
    await joined(caches, 6)
    waiters[0].cancel()
    waiters[1].cancel()
    await settle()
    assert sum(c.waiting for c in {id(c): c for c in caches}.values()) == 4
    upstream.gate.set()
    decision, events = await asyncio.wait_for(leader, timeout=5)
    assert decision.status is CacheStatus.MISS
    assert text_of(events) == ANSWER
    for cancelled in waiters[:2]:
        with pytest.raises(asyncio.CancelledError):
            await cancelled
    results = await asyncio.wait_for(asyncio.gather(*waiters[2:]), timeout=5)
    assert all(d.hit and text_of(e) == ANSWER for d, e in results)
    assert upstream.calls == 1
    assert (await serve(caches[1], chat(), upstream))[0].hit  # and it was stored


async def test_a_leader_whose_client_left_lets_the_waiters_go_on(backend: Backend) -> None:
    caches = [backend.cache(), backend.cache()]
    upstream = CountingUpstream()
    upstream.gate = asyncio.Event()
    leader = asyncio.create_task(serve(caches[0], chat(), upstream))
    await upstream.started.wait()
    waiters = [asyncio.create_task(serve(caches[i % 2], chat(), upstream)) for i in range(4)]
    await joined(caches, 4)
    leader.cancel()  # the client left mid-answer: serve abandons
    with pytest.raises(asyncio.CancelledError):
        await leader
    upstream.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*waiters), timeout=5)
    assert all(text_of(e) == ANSWER for _, e in results)
    local = [d for i, (d, _) in enumerate(results) if i % 2 == 0 or backend.exact]
    assert [d.reason for d in local] == ["leader_failed"] * len(local)
    assert 1 + len(local) <= upstream.calls <= 5  # see the failing-leader test


async def test_a_stale_flight_is_not_joined(backend: Backend) -> None:
    """A leader that never reports (a bug) holds nobody back after ``wait_timeout``."""
    config = CacheConfig(wait_timeout=0.2)
    cache = backend.cache(config, fresh=True)
    forgotten = await cache.lookup(chat(), user="alice")  # never finished nor abandoned
    assert forgotten.status is CacheStatus.MISS
    await asyncio.sleep(0.25)
    if backend.url is None:
        backend.clock.now += 0.25  # the in-process lock's lease runs on the fake clock
    started = time.monotonic()
    upstream = CountingUpstream()
    decision, _ = await serve(cache, chat(), upstream)
    assert decision.status is CacheStatus.MISS
    assert decision.reason == ""  # a new leader, not a timed-out waiter
    assert time.monotonic() - started < 0.15
    assert (await serve(cache, chat(), upstream))[0].hit
