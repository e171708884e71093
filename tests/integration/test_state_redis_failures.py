"""The Redis state when Redis fails: killed, frozen (SIGSTOP), flushed. Every operation must
raise ``StateUnavailable`` (never a redis-py exception) quickly, and work again once Redis is
back. Time bounds are generous: they catch a hang, not a slow machine."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import pytest

from interlock.state import Limit, SharedState, StateUnavailable, build_state
from tests.fixtures.redis import RedisServer, redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def state(redis_url: str) -> AsyncIterator[SharedState]:
    # A long pause after an outage, so the tests decide when Redis is tried again (ping).
    state = build_state(redis_url, retry_interval=30)
    yield state
    await state.aclose()


def every_operation(state: SharedState) -> list[Callable[[], Awaitable[Any]]]:
    scope = Limit("key:a", limit=10, window=60)
    return [
        lambda: state.limits.admit([scope]),
        lambda: state.limits.adjust([scope]),
        lambda: state.slots.acquire("dep", "r1", limit=1, lease=5),
        lambda: state.slots.renew("dep", "r1", lease=5),
        lambda: state.slots.release("dep", "r1"),
        lambda: state.slots.counts(["dep"]),
        lambda: state.outcomes.record("dep", ok=True, window=30),
        lambda: state.outcomes.read("dep", window=30),
        lambda: state.outcomes.clear("dep"),
        lambda: state.kv.get("k"),
        lambda: state.kv.set("k", b"v", ttl=5),
        lambda: state.kv.set_if_absent("k", b"v", ttl=5),
        lambda: state.kv.delete("k"),
        lambda: state.locks.acquire("job", "me", lease=5),
        lambda: state.locks.renew("job", "me", lease=5),
        lambda: state.locks.release("job", "me"),
        lambda: state.pubsub.publish("news", b"x"),
        lambda: state.pubsub.subscribe("news"),
        lambda: state.ping(),
    ]


async def assert_unavailable(operation: Callable[[], Awaitable[Any]], within: float) -> None:
    started = time.monotonic()
    with pytest.raises(StateUnavailable):
        await operation()
    elapsed = time.monotonic() - started
    assert elapsed < within, f"took {elapsed:.2f}s"


async def test_a_killed_redis_fails_fast_then_recovers(
    state: SharedState, redis_server: RedisServer
) -> None:
    assert (await state.limits.admit([Limit("key:a", limit=10, window=60)])).allowed
    redis_server.kill()
    for operation in every_operation(state):
        await assert_unavailable(operation, within=1.0)
    assert not state.healthy
    assert state.last_error is not None
    assert "ConnectionError" in state.last_error

    redis_server.reset()  # back, and empty
    # Redis was seen down: operations are not even tried until the pause ends...
    with pytest.raises(StateUnavailable, match="next attempt"):
        await state.kv.get("k")
    # ...or a readiness probe finds it back.
    await state.ping()
    assert state.healthy
    decision = await state.limits.admit([Limit("key:a", limit=10, window=60)])
    assert decision.scopes[0].remaining == 9


async def test_an_unreachable_redis_is_reported_by_build_then_first_use(
    redis_server: RedisServer,
) -> None:
    redis_server.kill()
    state = build_state(redis_server.url)  # no I/O yet: building never fails
    try:
        await assert_unavailable(state.ping, within=1.0)
        assert not state.healthy
    finally:
        await state.aclose()


async def test_a_frozen_redis_times_out_then_recovers(
    state: SharedState, redis_server: RedisServer
) -> None:
    await state.kv.set("k", b"before", ttl=60)
    with redis_server.frozen():
        await assert_unavailable(lambda: state.kv.get("k"), within=1.0)
        await assert_unavailable(
            lambda: state.limits.admit([Limit("key:a", limit=10, window=60)]), within=1.0
        )
        await assert_unavailable(state.ping, within=1.0)
        assert state.last_error is not None
        assert "Timeout" in state.last_error
    await state.ping()
    assert await state.kv.get("k") == b"before"
    assert (await state.limits.admit([Limit("key:a", limit=10, window=60)])).allowed


async def test_a_frozen_redis_under_load_fails_every_caller_in_bounded_time(
    redis_url: str, redis_server: RedisServer
) -> None:
    state = build_state(redis_url)
    try:
        await state.ping()  # connected before the freeze
        outcomes: list[str] = []

        async def request() -> None:
            try:
                await state.limits.admit([Limit("key:a", limit=1000, window=60)])
            except StateUnavailable:
                outcomes.append("unavailable")
            else:
                outcomes.append("admitted")

        started = time.monotonic()
        with redis_server.frozen():
            async with anyio.create_task_group() as group:
                for _ in range(150):  # more than the pool's 64 connections
                    group.start_soon(request)
        elapsed = time.monotonic() - started
        assert outcomes == ["unavailable"] * 150
        assert elapsed < 3.0, f"took {elapsed:.2f}s"
    finally:
        await state.aclose()


async def test_flushed_data_and_scripts_leave_an_empty_working_state(
    state: SharedState, redis_server: RedisServer
) -> None:
    scope = Limit("key:a", limit=2, window=60)
    assert (await state.limits.admit([scope])).allowed
    assert (await state.limits.admit([scope])).allowed
    assert not (await state.limits.admit([scope])).allowed
    assert await state.slots.acquire("dep", "r1", limit=1, lease=30)
    assert await state.locks.acquire("job", "me", lease=30)

    assert redis_server.command("FLUSHALL") == b"+OK"
    assert redis_server.command("SCRIPT", "FLUSH") == b"+OK"

    decision = await state.limits.admit([scope])  # the script is loaded again
    assert decision.allowed
    assert decision.scopes[0].remaining == 1
    assert await state.slots.acquire("dep", "r2", limit=1, lease=30)
    assert await state.locks.acquire("job", "someone-else", lease=30)
    assert (await state.outcomes.record("dep", ok=True, window=30)).successes == 1
    assert state.healthy


async def test_a_subscription_survives_a_redis_restart(
    redis_url: str, redis_server: RedisServer
) -> None:
    listener, publisher = build_state(redis_url), build_state(redis_url)
    try:
        subscription = await listener.pubsub.subscribe("keys")
        async with subscription:
            await publisher.pubsub.publish("keys", b"before")
            with anyio.fail_after(5):
                assert await subscription.__anext__() == b"before"
            redis_server.kill()
            redis_server.reset()
            await publisher.ping()

            received: list[bytes] = []
            arrived = anyio.Event()

            async def listen() -> None:
                received.append(await subscription.__anext__())
                arrived.set()

            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    group.start_soon(listen)
                    # Messages published before it has resubscribed are lost (at most
                    # once); keep publishing until one gets through.
                    while not arrived.is_set():
                        await publisher.pubsub.publish("keys", b"after")
                        with anyio.move_on_after(0.1):
                            await arrived.wait()
            assert received == [b"after"]
    finally:
        await listener.aclose()
        await publisher.aclose()


async def test_a_redis_restart_fails_no_request(redis_url: str, redis_server: RedisServer) -> None:
    state = build_state(redis_url)
    try:
        async with anyio.create_task_group() as group:  # several pooled connections
            for i in range(10):
                group.start_soon(partial(state.kv.set, f"k{i}", b"v", ttl=30))
        redis_server.kill()
        redis_server.reset()
        # every pooled connection is now broken: each is found out and replaced on use
        async with anyio.create_task_group() as group:
            for i in range(10):
                group.start_soon(state.kv.get, f"k{i}")
        assert state.healthy
    finally:
        await state.aclose()


async def test_after_an_outage_redis_is_tried_again_by_itself(
    redis_url: str, redis_server: RedisServer
) -> None:
    state = build_state(redis_url, retry_interval=0.2)
    try:
        redis_server.kill()
        for _ in range(3):
            with pytest.raises(StateUnavailable):
                await state.kv.get("k")
        redis_server.reset()
        with pytest.raises(StateUnavailable, match="next attempt"):
            await state.kv.get("k")
        await anyio.sleep(0.25)
        assert await state.kv.get("k") is None
        assert state.healthy
    finally:
        await state.aclose()
