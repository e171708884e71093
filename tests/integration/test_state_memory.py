"""What only the in-process state promises: a byte budget with LRU eviction, memory that stays
bounded as entries expire (with no timers), and the bounded-age local copies of
``CachedReads``. Time is a fake clock: nothing here sleeps."""

from __future__ import annotations

import anyio
import pytest

from interlock.state import CachedReads, Limit, MemoryState, StateUnavailable, build_state
from interlock.state.expiry import ExpiryIndex
from interlock.state.memory_kv import footprint
from interlock.state.memory_pubsub import BACKLOG

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_build_state_without_a_url_is_in_process() -> None:
    state = build_state(None)
    assert isinstance(state, MemoryState)
    assert state.backend == "memory"


# --- key/value budget ----------------------------------------------------------------------


async def test_kv_evicts_least_recently_used_entries_to_stay_in_budget() -> None:
    entry = footprint("a", b"x" * 100)
    state = MemoryState(clock=FakeClock(), memory_limit_bytes=3 * entry)
    kv = state.kv
    for key in ("a", "b", "c"):
        assert await kv.set(key, b"x" * 100, ttl=60)
    assert kv.used_bytes == 3 * entry
    assert await kv.get("a") is not None  # "a" is now the most recently used
    assert await kv.set("d", b"x" * 100, ttl=60)
    assert await kv.get("b") is None  # the least recently used went
    assert [await kv.get(k) is not None for k in ("a", "c", "d")] == [True, True, True]
    assert kv.used_bytes == 3 * entry
    assert kv.evictions == 1


async def test_kv_counts_bytes_through_overwrites_deletes_and_refusals() -> None:
    state = MemoryState(clock=FakeClock(), memory_limit_bytes=10_000, max_item_bytes=500)
    kv = state.kv
    assert kv.max_item_bytes == 500
    assert await kv.set("k", b"x" * 100, ttl=60)
    assert kv.used_bytes == footprint("k", b"x" * 100)
    assert await kv.set("k", b"y" * 300, ttl=60)
    assert kv.used_bytes == footprint("k", b"y" * 300)
    assert not await kv.set("k", b"z" * 501, ttl=60)
    assert kv.used_bytes == footprint("k", b"y" * 300)
    assert await kv.delete("k")
    assert kv.used_bytes == 0
    assert len(kv) == 0


async def test_a_value_larger_than_the_whole_budget_is_refused() -> None:
    state = MemoryState(clock=FakeClock(), memory_limit_bytes=1000, max_item_bytes=10_000)
    assert state.kv.max_item_bytes < 1000
    assert not await state.kv.set("k", b"x" * 1000, ttl=60)
    assert await state.kv.set("k", b"x" * state.kv.max_item_bytes, ttl=60)


async def test_expired_kv_entries_are_swept_without_being_read() -> None:
    clock = FakeClock()
    kv = MemoryState(clock=clock).kv
    for i in range(100):
        await kv.set(f"old{i}", b"v", ttl=1)
    clock.now += 2
    for i in range(30):  # writes sweep a few expired entries each
        await kv.set(f"new{i}", b"v", ttl=60)
    assert len(kv) == 30
    assert kv.used_bytes == sum(footprint(f"new{i}", b"v") for i in range(30))


# --- bounded memory ------------------------------------------------------------------------


async def test_rate_limit_buckets_do_not_outlive_their_refill() -> None:
    clock = FakeClock()
    state = MemoryState(clock=clock)
    for i in range(1000):  # a scan from many addresses
        await state.limits.admit([Limit(f"ip:{i}", limit=10, window=1)])
    assert len(state.limits) == 1000
    clock.now += 0.2  # each bucket (1 unit at 10 per second) is empty after 0.1 s
    for i in range(300):
        await state.limits.admit([Limit(f"ip:new{i}", limit=10, window=1)])
    assert len(state.limits) == 300


async def test_an_index_churned_by_rescheduling_stays_compact() -> None:
    index = ExpiryIndex()
    for round_ in range(1000):
        index.forget("k")
        index.schedule("k", 100.0 - round_ * 0.01)  # always earlier: a new heap entry
    assert len(index) == 1
    assert len(index._heap) <= 2 * len(index) + 65
    assert index.pop_due(1000.0) == "k"
    assert index.pop_due(1000.0) is None


async def test_a_clock_that_steps_back_adds_no_capacity() -> None:
    clock = FakeClock()
    limits = MemoryState(clock=clock).limits
    scope = Limit("k", limit=1, window=10)
    assert (await limits.admit([scope])).allowed
    clock.now -= 5
    assert not (await limits.admit([scope])).allowed


# --- pub/sub -------------------------------------------------------------------------------


async def test_a_subscriber_far_behind_loses_its_oldest_messages() -> None:
    state = MemoryState()
    subscription = await state.pubsub.subscribe("c")
    for i in range(BACKLOG + 10):
        await state.pubsub.publish("c", str(i).encode())
    assert await subscription.__anext__() == b"10"
    await state.aclose()  # ends every subscription
    assert [message async for message in subscription] == []


# --- cached reads --------------------------------------------------------------------------


class CountingKeyValue:
    """A key/value store that counts reads and can hold one read open, or fail."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.reads = 0
        self.hold: anyio.Event | None = None
        self.fail = False

    @property
    def max_item_bytes(self) -> int:
        return 1000

    async def get(self, key: str) -> bytes | None:
        self.reads += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            raise StateUnavailable("down")
        return self.values.get(key)

    async def set(self, key: str, value: bytes, *, ttl: float) -> bool:
        self.values[key] = value
        return True

    async def set_if_absent(self, key: str, value: bytes, *, ttl: float) -> bool:
        return self.values.setdefault(key, value) is value

    async def delete(self, key: str) -> bool:
        return self.values.pop(key, None) is not None


async def test_cached_reads_fetch_at_most_once_per_max_age() -> None:
    clock, kv = FakeClock(), CountingKeyValue()
    cached = CachedReads(kv, max_age=0.5, clock=clock)
    kv.values["c"] = b"open"
    assert [await cached.get("c") for _ in range(100)] == [b"open"] * 100
    assert kv.reads == 1
    kv.values["c"] = b"closed"  # written by another instance
    clock.now += 0.49
    assert await cached.get("c") == b"open"
    clock.now += 0.01
    assert await cached.get("c") == b"closed"
    assert kv.reads == 2


async def test_while_one_reader_refreshes_the_others_get_the_copy() -> None:
    clock, kv = FakeClock(), CountingKeyValue()
    cached = CachedReads(kv, max_age=0.5, clock=clock)
    kv.values["c"] = b"old"
    await cached.get("c")
    kv.values["c"] = b"new"
    clock.now += 0.6
    kv.hold = anyio.Event()
    seen: list[bytes | None] = []

    async def refresh() -> None:
        seen.append(await cached.get("c"))

    async with anyio.create_task_group() as group:
        group.start_soon(refresh)  # finds the copy 0.6 s old, refreshes, is held open
        await anyio.wait_all_tasks_blocked()
        assert kv.reads == 2
        assert [await cached.get("c") for _ in range(5)] == [b"old"] * 5
        assert kv.reads == 2
        clock.now += 0.4  # the copy is now 1 s old: too old to serve even meanwhile
        group.start_soon(refresh)
        await anyio.wait_all_tasks_blocked()
        assert kv.reads == 3
        kv.hold.set()
    assert seen == [b"new", b"new"]
    assert await cached.get("c") == b"new"
    assert kv.reads == 3


async def test_a_failed_refresh_raises_and_never_serves_a_stale_copy() -> None:
    clock, kv = FakeClock(), CountingKeyValue()
    cached = CachedReads(kv, max_age=0.5, clock=clock)
    kv.values["c"] = b"open"
    await cached.get("c")
    clock.now += 1
    kv.fail = True
    with pytest.raises(StateUnavailable):
        await cached.get("c")
    with pytest.raises(StateUnavailable):
        await cached.get("c")  # no copy left to hide the failure behind
    kv.fail = False
    assert await cached.get("c") == b"open"


async def test_cached_reads_see_their_own_writes_at_once() -> None:
    clock, kv = FakeClock(), CountingKeyValue()
    cached = CachedReads(kv, max_age=10, clock=clock)
    assert await cached.get("c") is None
    assert await cached.set("c", b"open", ttl=30)
    assert await cached.get("c") == b"open"
    assert await cached.delete("c")
    assert await cached.get("c") is None
    kv.values["c"] = b"elsewhere"
    cached.forget()
    assert await cached.get("c") == b"elsewhere"
    assert kv.reads == 2
