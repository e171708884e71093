"""Expiry bookkeeping for the in-process state: drop dead entries without a timer per key.

Each in-process map keeps its entries' deadlines in an ``ExpiryIndex`` (a min-heap with at
most one live entry per key) and, on every write, sweeps a few entries whose deadline has
passed. Reads also drop an expired entry they meet. So memory stays bounded by the live
entries plus the few written since the last sweep, at O(log n) per write.
"""

from __future__ import annotations

import heapq
from typing import Generic, Protocol, TypeVar

# Entries swept per write: more than one, so sweeping outpaces writing and the backlog of
# dead entries shrinks whenever traffic continues.
SWEEP_BUDGET = 4


class ExpiryIndex:
    """Deadlines by key, earliest first.

    A key is (re)scheduled only when its new deadline is earlier than the scheduled one; a
    key whose deadline moved later is found alive when its old deadline comes up and is
    scheduled again then. Heap entries left behind by ``forget`` are skipped when popped and
    compacted away when they outnumber the live ones.
    """

    __slots__ = ("_heap", "_scheduled")

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._scheduled: dict[str, float] = {}

    def schedule(self, key: str, deadline: float) -> None:
        current = self._scheduled.get(key)
        if current is not None and current <= deadline:
            return
        self._scheduled[key] = deadline
        heapq.heappush(self._heap, (deadline, key))
        if len(self._heap) > 2 * len(self._scheduled) + 64:
            self._heap[:] = [(at, k) for k, at in self._scheduled.items()]
            heapq.heapify(self._heap)

    def forget(self, key: str) -> None:
        self._scheduled.pop(key, None)

    def pop_due(self, now: float) -> str | None:
        """A key whose scheduled deadline is ``<= now`` (unscheduling it), or None.

        The caller checks the key's real deadline: it drops the entry if expired, else
        schedules it again.
        """
        heap = self._heap
        scheduled = self._scheduled
        while heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            if scheduled.get(key) == deadline:
                del scheduled[key]
                return key
            # else: left behind by forget or by an earlier reschedule
        return None

    def __len__(self) -> int:
        return len(self._scheduled)

    def clear(self) -> None:
        self._heap.clear()
        self._scheduled.clear()


class Expiring(Protocol):
    expires_at: float


E = TypeVar("E", bound=Expiring)


class ExpiringMap(Generic[E]):
    """A dict of entries that carry their own ``expires_at``; expired entries are invisible
    and are dropped lazily on read and by a small sweep on every ``put``."""

    __slots__ = ("_entries", "_index")

    def __init__(self) -> None:
        self._entries: dict[str, E] = {}
        self._index = ExpiryIndex()

    def get(self, key: str, now: float) -> E | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            del self._entries[key]
            self._index.forget(key)
            return None
        return entry

    def put(self, key: str, entry: E, now: float) -> None:
        """Store (or re-file after changing its ``expires_at``) ``entry`` under ``key``."""
        self._entries[key] = entry
        self._index.schedule(key, entry.expires_at)
        self.sweep(now)

    def pop(self, key: str) -> E | None:
        self._index.forget(key)
        return self._entries.pop(key, None)

    def sweep(self, now: float) -> None:
        entries = self._entries
        index = self._index
        for _ in range(SWEEP_BUDGET):
            key = index.pop_due(now)
            if key is None:
                return
            entry = entries.get(key)
            if entry is None:
                continue
            if entry.expires_at <= now:
                del entries[key]
            else:
                index.schedule(key, entry.expires_at)

    def purge(self, now: float) -> int:
        """Drop every expired entry now (housekeeping); how many were dropped."""
        entries = self._entries
        dead = [key for key, entry in entries.items() if entry.expires_at <= now]
        for key in dead:
            del entries[key]
            self._index.forget(key)
        return len(dead)

    def items(self) -> list[tuple[str, E]]:
        """The entries, expired ones included (for housekeeping)."""
        return list(self._entries.items())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()
