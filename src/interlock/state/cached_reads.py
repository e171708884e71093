"""Reads of small shared records through a local copy of bounded age.

For state that every request consults but that changes rarely (a circuit "open until"
record per deployment), a round trip to Redis per request per record is waste. A
``CachedReads`` keeps the last value read of each key for at most ``max_age`` seconds:

- a copy younger than ``max_age`` is answered locally, with no I/O;
- the first reader to find a copy older refreshes it; readers arriving while that refresh
  is in flight get the old copy instead of piling onto Redis, as long as it is younger
  than twice ``max_age``. So no value served is older than ``2 * max_age`` (one second
  with the default), counting from when the read that fetched it started;
- writes through ``set`` / ``delete`` update the local copy at once, so this instance sees
  its own writes; a subscriber to an invalidation channel can ``forget`` a key early.

No task or timer is created. A failed refresh raises ``StateUnavailable`` (the stale copy
is dropped, never served past its bound), and the caller chooses its fallback.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from interlock.state.interface import KeyValue

DEFAULT_MAX_AGE = 0.5  # so nothing served is a second old
DEFAULT_MAX_ENTRIES = 10_000


class _Copy:
    __slots__ = ("fetched_at", "refreshing", "value")

    def __init__(self, value: bytes | None, fetched_at: float) -> None:
        self.value = value
        self.fetched_at = fetched_at
        self.refreshing = False


class CachedReads:
    """A read-through local copy of ``kv`` records, served while younger than ``max_age``
    (``2 * max_age`` while a refresh is in flight)."""

    def __init__(
        self,
        kv: KeyValue,
        *,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self._kv = kv
        self._max_age = max_age
        self._clock = clock
        self._max_entries = max_entries
        self._copies: dict[str, _Copy] = {}

    async def get(self, key: str) -> bytes | None:
        """The record's value as of less than ``2 * max_age`` ago (see the module docstring).

        Raises ``StateUnavailable`` when it has to read and the state cannot answer.
        """
        now = self._clock()
        copy = self._copies.get(key)
        if copy is not None:
            age = now - copy.fetched_at
            if age < self._max_age or (copy.refreshing and age < 2 * self._max_age):
                return copy.value
        if copy is not None:
            copy.refreshing = True
        try:
            value = await self._kv.get(key)
        except BaseException:
            if self._copies.get(key) is copy:
                self._copies.pop(key, None)
            raise
        if self._copies.get(key) is copy:  # else a write here meanwhile is newer: keep it
            self._keep(key, value, now)
        return value

    async def set(self, key: str, value: bytes, *, ttl: float) -> bool:
        """Write through to the shared store, then keep the new value locally."""
        now = self._clock()
        stored = await self._kv.set(key, value, ttl=ttl)
        if stored:
            self._keep(key, value, now)
        return stored

    async def delete(self, key: str) -> bool:
        """Delete from the shared store and locally."""
        now = self._clock()
        removed = await self._kv.delete(key)
        self._keep(key, None, now)
        return removed

    def forget(self, key: str | None = None) -> None:
        """Drop the local copy of ``key`` (of every key with None): the next read fetches."""
        if key is None:
            self._copies.clear()
        else:
            self._copies.pop(key, None)

    def _keep(self, key: str, value: bytes | None, fetched_at: float) -> None:
        copies = self._copies
        if key not in copies and len(copies) >= self._max_entries:
            del copies[next(iter(copies))]  # the oldest key: bounded, not a hot path
        copies[key] = _Copy(value, fetched_at)
