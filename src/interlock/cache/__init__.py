"""The response cache and single-flight (see ``interlock.cache.response_cache``).

- ``key``: the SHA-256 key over the tenant and the whole normalized request;
- ``policy``: what may be read or written (``[cache]``, per model, ``CacheDirective``);
- ``entry``: the stored answer (msgpack) and its replay as canonical events;
- ``recorder``: the tee that stores an answer only once it was delivered whole;
- ``store``: entries in a ``KeyValue`` (the cache's own in process, Redis when shared);
- ``response_cache``: ``ResponseCache.lookup`` -> ``CacheDecision``, single-flight.
"""

from interlock.cache.entry import CacheEntry, decode_entry, encode_entry
from interlock.cache.key import Tenant, cache_key, canonical_request
from interlock.cache.policy import CacheDirective, CacheRule, decide, is_deterministic
from interlock.cache.recorder import CacheRecorder
from interlock.cache.response_cache import (
    CACHE_HEADER,
    CacheDecision,
    CacheStats,
    CacheStatus,
    ResponseCache,
    build_cache,
)
from interlock.cache.store import EntryStore, memory_store

__all__ = [
    "CACHE_HEADER",
    "CacheDecision",
    "CacheDirective",
    "CacheEntry",
    "CacheRecorder",
    "CacheRule",
    "CacheStats",
    "CacheStatus",
    "EntryStore",
    "ResponseCache",
    "Tenant",
    "build_cache",
    "cache_key",
    "canonical_request",
    "decide",
    "decode_entry",
    "encode_entry",
    "is_deterministic",
    "memory_store",
]
