"""Dropping one user's cached answers (an erasure), over the in-process store and Redis:
every entry of theirs is missed from then on, on every instance, and nobody else's is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from interlock.cache import CacheStatus
from interlock.cache.key import Tenant
from interlock.cache.store import EntryStore
from interlock.config_file import CacheConfig
from tests.fixtures.redis import redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures
from tests.integration.cache_harness import Backend, CountingUpstream, chat, serve

pytestmark = pytest.mark.anyio


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


async def test_forgetting_a_user_misses_all_their_entries_and_only_theirs(
    backend: Backend,
) -> None:
    cache = backend.cache()
    upstream = CountingUpstream()
    for user in ("alice", "bob"):
        for prompt in ("first question", "second question"):
            decision, _ = await serve(cache, chat(prompt), upstream, user=user)
            assert decision.status is CacheStatus.MISS
    assert upstream.calls == 4
    hit, _ = await serve(cache, chat("first question"), upstream, user="alice")
    assert hit.hit

    await cache.forget_user("alice")

    # another instance (with Redis: another process) misses too
    elsewhere, _ = await serve(backend.cache(), chat("first question"), upstream, user="alice")
    here, _ = await serve(cache, chat("second question"), upstream, user="alice")
    assert (elsewhere.status, here.status) == (CacheStatus.MISS, CacheStatus.MISS)
    for prompt in ("first question", "second question"):
        bob, _ = await serve(backend.cache(), chat(prompt), upstream, user="bob")
        assert bob.hit
    assert upstream.calls == 6
    # what alice asks from now on is cached again, under the new generation
    again, _ = await serve(cache, chat("first question"), upstream, user="alice")
    assert again.hit


async def test_the_generation_is_part_of_the_tenant_only_once_set(backend: Backend) -> None:
    store: EntryStore = backend.cache(CacheConfig(), fresh=True).store
    tenant = Tenant("user", "carol")
    assert await store.current(tenant) == tenant
    await store.new_generation(tenant)
    first = await store.current(tenant)
    assert first.kind == "user" and first.id.startswith("carol~")
    await store.new_generation(tenant)
    assert (await store.current(tenant)).id not in (tenant.id, first.id)
    assert await store.current(Tenant("user", "dave")) == Tenant("user", "dave")
