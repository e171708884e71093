"""The in-process key/value store: TTLs, a total byte budget with LRU eviction, and a
per-item size limit."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from interlock.state.expiry import SWEEP_BUDGET, ExpiryIndex

# What one entry costs beyond its key and value (dict slot, list node, the entry object,
# the bytes header), so that many tiny entries cannot outgrow the budget unseen.
ENTRY_OVERHEAD = 128


def footprint(key: str, value: bytes) -> int:
    """The bytes an entry counts against the budget."""
    return len(key) + len(value) + ENTRY_OVERHEAD


class _Item:
    __slots__ = ("expires_at", "size", "value")

    def __init__(self, value: bytes, expires_at: float, size: int) -> None:
        self.value = value
        self.expires_at = expires_at
        self.size = size


class MemoryKeyValue:
    """``KeyValue`` in process memory.

    ``used_bytes`` (the sum of ``footprint`` over live-or-not-yet-swept entries) never
    exceeds ``limit_bytes``: storing past it evicts the least recently used entries (a
    ``get`` hit counts as a use). Expired entries are dropped when read and swept a few at
    a time on each write.
    """

    def __init__(
        self, clock: Callable[[], float], *, limit_bytes: int, max_item_bytes: int
    ) -> None:
        if limit_bytes <= ENTRY_OVERHEAD:
            raise ValueError(f"memory_limit_bytes must exceed {ENTRY_OVERHEAD}")
        self._clock = clock
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._expiry = ExpiryIndex()
        self.limit_bytes = limit_bytes
        self._max_item_bytes = min(max_item_bytes, limit_bytes - ENTRY_OVERHEAD)
        self.used_bytes = 0
        self.evictions = 0

    @property
    def max_item_bytes(self) -> int:
        return self._max_item_bytes

    def __len__(self) -> int:
        return len(self._items)

    def _live(self, key: str, now: float) -> _Item | None:
        item = self._items.get(key)
        if item is not None and item.expires_at <= now:
            self._drop(key)
            return None
        return item

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.used_bytes -= item.size
            self._expiry.forget(key)

    def _sweep(self, now: float) -> None:
        for _ in range(SWEEP_BUDGET):
            key = self._expiry.pop_due(now)
            if key is None:
                return
            item = self._items.get(key)
            if item is None:
                continue
            if item.expires_at <= now:
                self._drop(key)
            else:
                self._expiry.schedule(key, item.expires_at)

    def _store(self, key: str, value: bytes, ttl: float, now: float) -> bool:
        if len(value) > self._max_item_bytes:
            return False
        self._sweep(now)
        self._drop(key)
        size = footprint(key, value)
        items = self._items
        while items and self.used_bytes + size > self.limit_bytes:
            oldest = next(iter(items))
            self._drop(oldest)
            self.evictions += 1
        expires_at = now + ttl
        items[key] = _Item(value, expires_at, size)
        self.used_bytes += size
        self._expiry.schedule(key, expires_at)
        return True

    async def get(self, key: str) -> bytes | None:
        item = self._live(key, self._clock())
        if item is None:
            return None
        self._items.move_to_end(key)
        return item.value

    async def set(self, key: str, value: bytes, *, ttl: float) -> bool:
        return self._store(key, value, ttl, self._clock())

    async def set_if_absent(self, key: str, value: bytes, *, ttl: float) -> bool:
        now = self._clock()
        if self._live(key, now) is not None:
            return False
        return self._store(key, value, ttl, now)

    async def delete(self, key: str) -> bool:
        if self._live(key, self._clock()) is None:
            return False
        self._drop(key)
        return True

    def purge(self) -> int:
        """Drop every expired entry now (housekeeping); how many were dropped."""
        now = self._clock()
        dead = [key for key, item in self._items.items() if item.expires_at <= now]
        for key in dead:
            self._drop(key)
        return len(dead)

    def clear(self) -> None:
        self._items.clear()
        self._expiry.clear()
        self.used_bytes = 0
