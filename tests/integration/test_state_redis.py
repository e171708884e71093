"""What only the Redis state promises: TTLs on every key, key prefixes, agreement between
separate instances (each with its own client and pool, as two gateway processes), and
bounded-age reads of shared records through ``CachedReads``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import pytest
import redis.asyncio as redis_client

from interlock.state import CachedReads, Limit, SharedState, build_state
from interlock.state.redis_state import RedisState
from tests.fixtures.redis import redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures

pytestmark = pytest.mark.anyio

Factory = Callable[..., SharedState]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def instances(redis_url: str) -> AsyncIterator[Factory]:
    """Builds gateway instances' states on the test's Redis; closes them all afterwards."""
    built: list[SharedState] = []

    def build(**options: Any) -> SharedState:
        state = build_state(redis_url, **options)
        built.append(state)
        return state

    yield build
    for state in built:
        await state.aclose()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis_client.Redis]:
    """A plain client, to look at what the state layer left in Redis."""
    client = redis_client.Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_build_state_picks_redis_for_a_url(instances: Factory) -> None:
    state = instances()
    assert isinstance(state, RedisState)
    assert state.backend == "redis"


async def test_every_key_written_has_a_ttl(instances: Factory, raw: redis_client.Redis) -> None:
    state = instances()
    await state.limits.admit([Limit("k", limit=10, window=60), Limit("t", 1000, 60, cost=5)])
    await state.limits.adjust([Limit("t", 1000, 60, cost=100)])
    await state.slots.acquire("pool", "holder", limit=2, lease=30)
    await state.outcomes.record("dep", ok=False, window=30)
    await state.kv.set("value", b"v", ttl=30)
    await state.kv.set_if_absent("leader", b"me", ttl=30)
    await state.locks.acquire("job", "me", lease=30)
    keys = sorted(await raw.keys("*"))
    assert keys == [
        b"interlock:kv:leader",
        b"interlock:kv:value",
        b"interlock:lock:job",
        b"interlock:out:dep",
        b"interlock:rl:k",
        b"interlock:rl:t",
        b"interlock:slot:pool",
    ]
    for key in keys:
        ttl = await raw.pttl(key)
        assert 0 < ttl <= 61_000, key


async def test_an_emptied_bucket_is_deleted(instances: Factory, raw: redis_client.Redis) -> None:
    state = instances()
    await state.limits.admit([Limit("tokens", 1000, 60, cost=300)])
    await state.limits.adjust([Limit("tokens", 1000, 60, cost=-300)])
    assert await raw.exists("interlock:rl:tokens") == 0


async def test_key_prefixes_keep_deployments_apart(
    instances: Factory, raw: redis_client.Redis
) -> None:
    blue, green = instances(key_prefix="blue:"), instances(key_prefix="green:")
    assert await blue.kv.set("k", b"blue", ttl=30)
    assert await green.kv.get("k") is None
    assert (await blue.limits.admit([Limit("r", limit=1, window=60)])).allowed
    assert (await green.limits.admit([Limit("r", limit=1, window=60)])).allowed
    assert not (await blue.limits.admit([Limit("r", limit=1, window=60)])).allowed
    assert {key.split(b":")[0] for key in await raw.keys("*")} == {b"blue", b"green"}
    subscription = await green.pubsub.subscribe("news")
    async with subscription:
        assert await blue.pubsub.publish("news", b"hello") == 0
        assert await green.pubsub.publish("news", b"hello") == 1


async def test_binary_values_round_trip(instances: Factory) -> None:
    state = instances()
    value = bytes(range(256)) * 4
    assert await state.kv.set("bin", value, ttl=30)
    assert await state.kv.get("bin") == value


async def test_slots_hold_under_concurrency_across_instances(instances: Factory) -> None:
    first, second = instances(timeout=2.0), instances(timeout=2.0)
    granted = 0

    async def one(state: SharedState, holder: str) -> None:
        nonlocal granted
        if await state.slots.acquire("dep:busy", holder, limit=10, lease=30):
            granted += 1

    async with anyio.create_task_group() as group:
        for i in range(100):
            group.start_soon(one, first if i % 2 else second, f"r{i}")
    assert granted == 10
    assert await first.slots.counts(["dep:busy"]) == [10]


async def test_one_lock_owner_under_concurrency_across_instances(instances: Factory) -> None:
    first, second = instances(timeout=2.0), instances(timeout=2.0)
    owners: list[str] = []

    async def one(state: SharedState, owner: str) -> None:
        if await state.locks.acquire("job:nightly", owner, lease=30):
            owners.append(owner)

    async with anyio.create_task_group() as group:
        for i in range(20):
            group.start_soon(one, first if i % 2 else second, f"instance-{i}")
    assert len(owners) == 1
    assert not await second.locks.release("job:nightly", "someone-else")
    assert await first.locks.release("job:nightly", owners[0])


async def test_cached_reads_see_another_instance_within_their_max_age(
    instances: Factory,
) -> None:
    writer, reader = instances(), instances()
    circuits = CachedReads(reader.kv, max_age=0.3)
    assert await circuits.get("circuit:dep") is None  # cached: "closed"
    assert await writer.kv.set("circuit:dep", b"open", ttl=30)
    assert await circuits.get("circuit:dep") is None  # still the local copy
    await anyio.sleep(0.35)
    assert await circuits.get("circuit:dep") == b"open"

    assert await circuits.set("circuit:dep", b"half-open", ttl=30)
    assert await circuits.get("circuit:dep") == b"half-open"  # its own write at once
    assert await writer.kv.get("circuit:dep") == b"half-open"

    assert await writer.kv.delete("circuit:dep")
    circuits.forget("circuit:dep")  # e.g. told by a pub/sub message
    assert await circuits.get("circuit:dep") is None
