"""Where entries live: a ``KeyValue`` of the shared state, read and written fail-open.

In one process the cache has its own in-process store (``[cache] memory_limit_bytes``, LRU
eviction), apart from the shared state's, so cached answers never push out other state.
With Redis, entries are Redis strings with a TTL (``<prefix>kv:cache:<key>``) and Redis's
``maxmemory`` policy bounds them. Any failure of the store (Redis down, frozen, timing out)
is logged and treated as a miss or a skipped write: the cache never fails a request.

Entries cannot be listed per tenant (their keys are hashes), so a tenant's entries are
dropped by generation: ``cachegen:<kind>:<id>`` holds a random token that is part of the
tenant's keys once set. ``new_generation`` replaces it, and every entry stored before is
never found again; each expires by its TTL. The token lives ``MAX_CACHE_TTL``, as long as
any entry can: when it is gone, so are the entries it hid.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import structlog

from interlock.cache.entry import CacheEntry, decode_entry, encode_entry
from interlock.cache.key import Tenant
from interlock.config_file import MAX_CACHE_TTL
from interlock.state import KeyValue, StateUnavailable
from interlock.state.memory_kv import MemoryKeyValue

log = structlog.get_logger("interlock.cache")

ENTRY_PREFIX = "cache:"
GENERATION_PREFIX = "cachegen:"
# An outage is logged when first seen, then at most this often (seconds).
LOG_EVERY = 10.0


class OutageLog:
    """Logs state failures without a log line per request during an outage."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next = 0.0
        self.failures = 0

    def failed(self, operation: str, error: StateUnavailable) -> None:
        self.failures += 1
        now = self._clock()
        if now >= self._next:
            self._next = now + LOG_EVERY
            log.warning("cache_bypassed", operation=operation, error=str(error))


class EntryStore:
    """Entries by key in a ``KeyValue``; ``get`` and ``put`` raise ``StateUnavailable``
    (the cache turns it into a bypass)."""

    def __init__(self, kv: KeyValue, *, max_entry_bytes: int) -> None:
        self.kv = kv
        self.max_entry_bytes = min(max_entry_bytes, kv.max_item_bytes)

    async def get(self, key: str) -> CacheEntry | None:
        data = await self.kv.get(ENTRY_PREFIX + key)
        return None if data is None else decode_entry(data)

    async def put(self, key: str, entry: CacheEntry, ttl: float) -> bool:
        """Store ``entry``; False when it is over ``max_entry_bytes`` (nothing stored)."""
        data = encode_entry(entry)
        if len(data) > self.max_entry_bytes:
            return False
        return await self.kv.set(ENTRY_PREFIX + key, data, ttl=ttl)

    async def delete(self, key: str) -> bool:
        return await self.kv.delete(ENTRY_PREFIX + key)

    async def current(self, tenant: Tenant) -> Tenant:
        """``tenant`` as its entries are keyed now: with its generation, once it has one."""
        token = await self.kv.get(f"{GENERATION_PREFIX}{tenant.kind}:{tenant.id}")
        return tenant if token is None else Tenant(tenant.kind, f"{tenant.id}~{token.decode()}")

    async def new_generation(self, tenant: Tenant) -> None:
        """Orphan every entry of ``tenant`` stored until now (see the module doc)."""
        await self.kv.set(
            f"{GENERATION_PREFIX}{tenant.kind}:{tenant.id}",
            secrets.token_hex(8).encode(),
            ttl=MAX_CACHE_TTL,
        )


def memory_store(
    *, limit_bytes: int, max_entry_bytes: int, clock: Callable[[], float] = time.monotonic
) -> EntryStore:
    """The cache's own in-process store: ``limit_bytes`` in all, least recently used first
    out."""
    kv = MemoryKeyValue(clock, limit_bytes=limit_bytes, max_item_bytes=max_entry_bytes)
    return EntryStore(kv, max_entry_bytes=max_entry_bytes)
