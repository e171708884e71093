"""The in-process shared state: the zero-configuration default for one gateway process.

Every operation is synchronous underneath (no awaits, so each is atomic on the event loop),
O(1) or O(log n), and never starts a task or a timer: expired entries are dropped when met
and by a small sweep on each write (``interlock.state.expiry``). Time comes from the
injected ``clock`` (``time.monotonic`` by default) so tests drive windows, leases and TTLs
without sleeping.

The operations every request makes also have a synchronous form (``admit_now``,
``acquire_now``...): in-process callers that know they hold a ``MemoryState`` call it
directly, and skip a coroutine per call and a task per settlement.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence

from interlock.state import defaults, gcra
from interlock.state.expiry import ExpiringMap
from interlock.state.interface import OUTCOME_BUCKETS, Decision, Limit, OutcomeStats
from interlock.state.memory_kv import MemoryKeyValue
from interlock.state.memory_pubsub import MemoryPubSub

Clock = Callable[[], float]


class _Bucket:
    __slots__ = ("expires_at", "level", "written_at")

    def __init__(self) -> None:
        self.level = 0.0
        self.written_at = 0.0
        self.expires_at = 0.0


class MemoryRateLimits:
    """``RateLimits`` in process memory (see ``interlock.state.gcra`` for the sums)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._buckets: ExpiringMap[_Bucket] = ExpiringMap()

    def _level(self, scope: Limit, now: float) -> float:
        bucket = self._buckets.get(scope.key, now)
        if bucket is None:
            return 0.0
        return gcra.drained(bucket.level, bucket.written_at, now, scope.limit / scope.window)

    def _write(self, scope: Limit, level: float, now: float) -> None:
        if level <= 0.0:
            self._buckets.pop(scope.key)
            return
        bucket = self._buckets.get(scope.key, now) or _Bucket()
        bucket.level = level
        bucket.written_at = now
        bucket.expires_at = now + gcra.expiry(level, scope.limit / scope.window)
        self._buckets.put(scope.key, bucket, now)

    async def admit(self, scopes: Sequence[Limit]) -> Decision:
        return self.admit_now(scopes)

    def admit_now(self, scopes: Sequence[Limit]) -> Decision:
        """``admit``, called synchronously (the in-process callers' fast path)."""
        now = self._clock()
        levels = [self._level(scope, now) for scope in scopes]
        allowed = True
        for scope, level in zip(scopes, levels, strict=True):
            if not gcra.fits(level, scope.cost, scope.limit):
                allowed = False
                break
        if allowed:
            for scope, level in zip(scopes, levels, strict=True):
                if scope.cost:
                    self._write(scope, level + scope.cost, now)
        status = gcra.status
        return Decision(
            allowed,
            tuple(
                [status(scope, level, allowed) for scope, level in zip(scopes, levels, strict=True)]
            ),
        )

    async def adjust(self, changes: Sequence[Limit]) -> None:
        self.adjust_now(changes)

    def adjust_now(self, changes: Sequence[Limit]) -> None:
        """``adjust``, called synchronously."""
        now = self._clock()
        for change in changes:
            if change.cost:
                self._write(change, max(0.0, self._level(change, now) + change.cost), now)

    def __len__(self) -> int:
        """Buckets held (for tests and memory accounting)."""
        return len(self._buckets)

    def purge(self) -> int:
        """Drop every bucket that has drained empty; how many."""
        return self._buckets.purge(self._clock())


class _Pool:
    """The live holders of one slot pool, with a heap of their lease ends for pruning."""

    __slots__ = ("expires_at", "holders", "leases")

    def __init__(self) -> None:
        self.holders: dict[str, float] = {}
        self.leases: list[tuple[float, str]] = []
        self.expires_at = 0.0

    def prune(self, now: float) -> None:
        leases = self.leases
        holders = self.holders
        while leases and leases[0][0] <= now:
            ends, holder = heapq.heappop(leases)
            if holders.get(holder) == ends:
                del holders[holder]

    def hold(self, holder: str, ends: float) -> None:
        self.holders[holder] = ends
        heapq.heappush(self.leases, (ends, holder))
        if len(self.leases) > 2 * len(self.holders) + 16:  # renewals left old lease ends
            self.leases = [(at, h) for h, at in self.holders.items()]
            heapq.heapify(self.leases)
        self.expires_at = max(self.expires_at, ends)


class MemorySlots:
    """``Slots`` in process memory."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._pools: ExpiringMap[_Pool] = ExpiringMap()

    def _live(self, name: str, now: float) -> _Pool | None:
        pool = self._pools.get(name, now)
        if pool is not None:
            pool.prune(now)
        return pool

    async def acquire(self, name: str, holder: str, *, limit: int, lease: float) -> bool:
        return self.acquire_now(name, holder, limit=limit, lease=lease)

    def acquire_now(self, name: str, holder: str, *, limit: int, lease: float) -> bool:
        """``acquire``, called synchronously."""
        now = self._clock()
        pool = self._live(name, now) or _Pool()
        if holder not in pool.holders and len(pool.holders) >= limit:
            return False
        pool.hold(holder, now + lease)
        self._pools.put(name, pool, now)
        return True

    async def renew(self, name: str, holder: str, *, lease: float) -> bool:
        now = self._clock()
        pool = self._live(name, now)
        if pool is None or holder not in pool.holders:
            return False
        pool.hold(holder, now + lease)
        self._pools.put(name, pool, now)
        return True

    async def release(self, name: str, holder: str) -> bool:
        return self.release_now(name, holder)

    def release_now(self, name: str, holder: str) -> bool:
        """``release``, called synchronously."""
        now = self._clock()
        pool = self._live(name, now)
        if pool is None or pool.holders.pop(holder, None) is None:
            return False
        if not pool.holders:
            self._pools.pop(name)
        return True

    def purge(self) -> int:
        """Drop every holder whose lease ended, and the pools left empty; how many holders."""
        now = self._clock()
        dropped = 0
        for name, pool in self._pools.items():
            before = len(pool.holders)
            pool.prune(now)
            dropped += before - len(pool.holders)
            if not pool.holders:
                self._pools.pop(name)
        self._pools.purge(now)
        return dropped

    async def counts(self, names: Sequence[str]) -> list[int]:
        now = self._clock()
        result = []
        for name in names:
            pool = self._live(name, now)
            result.append(0 if pool is None else len(pool.holders))
        return result


class _Window:
    __slots__ = ("counts", "expires_at", "failures", "successes")

    def __init__(self, expires_at: float) -> None:
        self.counts: dict[int, list[int]] = {}  # bucket number -> [successes, failures]
        self.expires_at = expires_at
        # The sums over ``counts``: recording is O(1), however many buckets there are.
        self.successes = self.failures = 0

    def bucket(self, current: int) -> list[int]:
        """The counts of bucket ``current``; opening it drops the buckets that slid out."""
        counts = self.counts
        bucket = counts.get(current)
        if bucket is None:
            for old in [b for b in counts if b <= current - OUTCOME_BUCKETS]:
                ok, failed = counts.pop(old)
                self.successes -= ok
                self.failures -= failed
            bucket = counts[current] = [0, 0]
        return bucket


class MemoryOutcomes:
    """``Outcomes`` in process memory: ten buckets per window."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._windows: ExpiringMap[_Window] = ExpiringMap()

    async def record(self, key: str, *, ok: bool, window: float) -> OutcomeStats:
        return self.record_now(key, ok=ok, window=window)

    def record_now(self, key: str, *, ok: bool, window: float) -> OutcomeStats:
        """``record``, called synchronously."""
        now = self._clock()
        entry = self._windows.get(key, now)
        if entry is None:
            entry = _Window(now + window)
            self._windows.put(key, entry, now)
        else:
            # A later deadline needs no re-filing (see ``ExpiryIndex``).
            entry.expires_at = now + window
        bucket = entry.bucket(bucket_of(now, window))
        if ok:
            bucket[0] += 1
            entry.successes += 1
        else:
            bucket[1] += 1
            entry.failures += 1
        return OutcomeStats(entry.successes, entry.failures)

    async def read(self, key: str, *, window: float) -> OutcomeStats:
        now = self._clock()
        entry = self._windows.get(key, now)
        if entry is None:
            return OutcomeStats(0, 0)
        return _sum(entry.counts, bucket_of(now, window))

    async def clear(self, key: str) -> None:
        self._windows.pop(key)

    def purge(self) -> int:
        """Drop every window without an event in its last ``window`` seconds; how many."""
        return self._windows.purge(self._clock())


def bucket_of(now: float, window: float) -> int:
    """The number of the tenth of ``window`` that ``now`` falls in."""
    return math.floor(now * OUTCOME_BUCKETS / window)


def _sum(counts: dict[int, list[int]], current: int) -> OutcomeStats:
    successes = failures = 0
    oldest = current - OUTCOME_BUCKETS
    for bucket, (ok, failed) in counts.items():
        if bucket > oldest:
            successes += ok
            failures += failed
    return OutcomeStats(successes, failures)


class _Lock:
    __slots__ = ("expires_at", "owner")

    def __init__(self, owner: str, expires_at: float) -> None:
        self.owner = owner
        self.expires_at = expires_at


class MemoryLocks:
    """``Locks`` in process memory."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._locks: ExpiringMap[_Lock] = ExpiringMap()

    async def acquire(self, name: str, owner: str, *, lease: float) -> bool:
        now = self._clock()
        lock = self._locks.get(name, now)
        if lock is not None and lock.owner != owner:
            return False
        self._locks.put(name, _Lock(owner, now + lease), now)
        return True

    async def renew(self, name: str, owner: str, *, lease: float) -> bool:
        now = self._clock()
        lock = self._locks.get(name, now)
        if lock is None or lock.owner != owner:
            return False
        lock.expires_at = now + lease
        self._locks.put(name, lock, now)
        return True

    async def release(self, name: str, owner: str) -> bool:
        now = self._clock()
        lock = self._locks.get(name, now)
        if lock is None or lock.owner != owner:
            return False
        self._locks.pop(name)
        return True

    def purge(self) -> int:
        """Drop every lock whose lease ended; how many."""
        return self._locks.purge(self._clock())


class MemoryState:
    """``SharedState`` for one process. Always healthy; ``aclose`` ends subscriptions."""

    backend = "memory"

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        memory_limit_bytes: int = defaults.MEMORY_LIMIT_BYTES,
        max_item_bytes: int = defaults.MAX_ITEM_BYTES,
    ) -> None:
        self.limits = MemoryRateLimits(clock)
        self.slots = MemorySlots(clock)
        self.outcomes = MemoryOutcomes(clock)
        self.kv = MemoryKeyValue(
            clock, limit_bytes=memory_limit_bytes, max_item_bytes=max_item_bytes
        )
        self.locks = MemoryLocks(clock)
        self.pubsub = MemoryPubSub()

    @property
    def healthy(self) -> bool:
        return True

    @property
    def last_error(self) -> str | None:
        return None

    async def ping(self) -> None:
        return None

    async def sweep(self) -> dict[str, int]:
        """Drop every expired entry now instead of when next met (see ``expiry``)."""
        return {
            "rate_limit_buckets": self.limits.purge(),
            "slot_holders": self.slots.purge(),
            "outcome_windows": self.outcomes.purge(),
            "kv_entries": self.kv.purge(),
            "locks": self.locks.purge(),
        }

    async def aclose(self) -> None:
        self.pubsub.close_all()
