"""The response cache over every backend: the in-process store (fake clock) and Redis (a
real server, real time). Hits replay the answer; TTLs, the entry size cap and eviction hold;
nothing partial is ever stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
import redis.asyncio as redis_client

from interlock.cache import CACHE_HEADER, CacheDirective, CacheStatus
from interlock.chat.types import Finish, TextDelta, Usage
from interlock.config_file import CacheConfig
from tests.fixtures.redis import redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures
from tests.integration.cache_harness import ANSWER, Backend, CountingUpstream, chat, serve, text_of

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


async def test_a_miss_is_stored_and_the_next_identical_request_replays_it(
    backend: Backend,
) -> None:
    cache = backend.cache()
    upstream = CountingUpstream()
    first, fresh = await serve(cache, chat(), upstream)
    assert first.status is CacheStatus.MISS
    assert first.headers == {CACHE_HEADER: "miss"}

    second, replayed = await serve(cache, chat(), upstream)
    assert upstream.calls == 1
    assert second.status is CacheStatus.HIT
    assert second.headers == {CACHE_HEADER: "hit"}
    assert not second.coalesced
    assert text_of(replayed) == text_of(fresh) == ANSWER
    assert sum(isinstance(e, TextDelta) for e in replayed) > 3  # replayed as a stream
    assert replayed[-2:] == [Usage(10, len(ANSWER) // 4), Finish("stop")]  # the original usage
    assert second.entry is not None
    assert (second.entry.model, second.entry.deployment) == ("gpt-4o-2024", "openai:gpt-4o")

    # another instance (with Redis: another process) sees it too
    other, _ = await serve(backend.cache(), chat(), upstream)
    assert other.hit
    assert upstream.calls == 1


async def test_entries_are_per_tenant_and_per_request(backend: Backend) -> None:
    cache = backend.cache()
    upstream = CountingUpstream()
    await serve(cache, chat(), upstream, user="alice")
    bob, _ = await serve(cache, chat(), upstream, user="bob")
    assert bob.status is CacheStatus.MISS
    other_prompt, _ = await serve(cache, chat("What is the question?"), upstream)
    assert other_prompt.status is CacheStatus.MISS
    hotter, _ = await serve(cache, chat(seed=1, temperature=0.5), upstream)
    assert hotter.status is CacheStatus.MISS
    assert upstream.calls == 4


async def test_shared_scope_serves_every_user(backend: Backend) -> None:
    cache = backend.cache(CacheConfig(scope="shared"), fresh=True)
    upstream = CountingUpstream()
    await serve(cache, chat(), upstream, user="alice")
    bob, _ = await serve(cache, chat(), upstream, user="bob")
    assert bob.hit
    assert upstream.calls == 1


async def test_sampled_requests_and_no_store_bypass_the_cache(backend: Backend) -> None:
    cache = backend.cache()
    upstream = CountingUpstream()
    for _ in range(2):
        sampled, _ = await serve(cache, chat(temperature=0.8), upstream)
        assert sampled.status is CacheStatus.BYPASS
        assert sampled.headers == {CACHE_HEADER: "bypass"}
        assert sampled.reason == "not_deterministic"
    for _ in range(2):
        no_store, _ = await serve(cache, chat(), upstream, directive=CacheDirective.NO_STORE)
        assert no_store.status is CacheStatus.BYPASS
    assert upstream.calls == 4
    first, _ = await serve(cache, chat(), upstream)
    assert first.status is CacheStatus.MISS  # no-store wrote nothing


async def test_no_cache_refreshes_the_entry_without_reading_it(backend: Backend) -> None:
    cache = backend.cache()
    upstream = CountingUpstream("old answer")
    await serve(cache, chat(), upstream)
    upstream.text = "new answer"
    refreshed, events = await serve(cache, chat(), upstream, directive=CacheDirective.NO_CACHE)
    assert refreshed.status is CacheStatus.MISS
    assert text_of(events) == "new answer"
    hit, replayed = await serve(cache, chat(), upstream)
    assert hit.hit
    assert text_of(replayed) == "new answer"
    assert upstream.calls == 2


async def test_an_entry_expires_after_its_ttl(backend: Backend) -> None:
    cache = backend.cache(CacheConfig(ttl=0.4), fresh=True)
    upstream = CountingUpstream()
    await serve(cache, chat(), upstream)
    await backend.advance(0.2)
    assert (await serve(cache, chat(), upstream))[0].hit
    await backend.advance(0.3)
    assert (await serve(cache, chat(), upstream))[0].status is CacheStatus.MISS
    assert upstream.calls == 2


async def test_an_answer_over_the_entry_cap_is_served_but_not_stored(backend: Backend) -> None:
    cache = backend.cache(CacheConfig(max_entry_bytes=2048), fresh=True)
    big = CountingUpstream("x" * 3000)
    decision, events = await serve(cache, chat(), big)
    assert text_of(events) == "x" * 3000  # the client still gets all of it
    assert decision.recorder is not None
    assert decision.recorder.overflowed
    assert (await serve(cache, chat(), big))[0].status is CacheStatus.MISS
    assert big.calls == 2
    small = CountingUpstream("y" * 1000)
    await serve(cache, chat("small"), small)
    assert (await serve(cache, chat("small"), small))[0].hit


async def test_a_failed_or_cancelled_answer_is_never_stored(backend: Backend) -> None:
    cache = backend.cache()
    failing = CountingUpstream()
    failing.fail_first = 1
    with pytest.raises(Exception, match="overloaded"):
        await serve(cache, chat(), failing)

    decision = await cache.lookup(chat(), user="alice")
    assert decision.status is CacheStatus.MISS
    upstream = CountingUpstream()
    stream = decision.tee(upstream.stream(chat()))
    async for _ in stream:
        break  # the client left after the first delta
    await decision.abandon()
    await decision.finish(model="m", deployment="d")  # too late: abandon counted
    third, _ = await serve(cache, chat(), upstream)
    assert third.status is CacheStatus.MISS
    assert cache.stats.stored == 1  # only the third answer


async def test_a_full_store_evicts_older_entries_and_keeps_working(backend: Backend) -> None:
    entry_size = 64 * 1024
    if backend.url is None:
        config = CacheConfig(memory_limit_bytes=4 * entry_size, max_entry_bytes=entry_size * 2)
    else:
        config = CacheConfig(max_entry_bytes=entry_size * 2)
        raw = redis_client.Redis.from_url(backend.url)
        used = int((await raw.info("memory"))["used_memory"])
        await raw.config_set("maxmemory-policy", "volatile-lru")
        await raw.config_set("maxmemory", used + 2 * 1024 * 1024)

        async def restore() -> None:
            await raw.config_set("maxmemory", 0)
            await raw.config_set("maxmemory-policy", "noeviction")
            await raw.aclose()

        backend.on_close(restore)
    cache = backend.cache(config, fresh=True)
    upstream = CountingUpstream("z" * entry_size)
    count = 8 if backend.url is None else 64  # with Redis: 4 MiB into 2 MiB of room
    for i in range(count):
        decision, _ = await serve(cache, chat(f"prompt {i}"), upstream)
        assert decision.status is CacheStatus.MISS
    assert cache.stats.stored == count  # every write succeeded: room was made
    assert (await serve(cache, chat(f"prompt {count - 1}"), upstream))[0].hit
    assert (await serve(cache, chat("prompt 0"), upstream))[0].status is CacheStatus.MISS
    assert cache.stats.unavailable == 0
