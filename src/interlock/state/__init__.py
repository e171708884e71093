"""Shared state: what gateway instances share (rate-limit buckets, concurrency slots, outcome
windows, a key/value store, locks, pub/sub), in process memory by default or in Redis.

Build it with ``build_state(settings.redis_url)``; consumers depend on the capability they
use (``state.limits``, ``state.kv``...), never on the backend. See ``interface`` for every
guarantee. The Redis backend lives in ``interlock.state.redis_state`` and is imported only
when a Redis URL is given.
"""

from interlock.state.build import build_state
from interlock.state.cached_reads import CachedReads
from interlock.state.interface import (
    OUTCOME_BUCKETS,
    Decision,
    KeyValue,
    Limit,
    Locks,
    Outcomes,
    OutcomeStats,
    PubSub,
    RateLimits,
    ScopeStatus,
    SharedState,
    Slots,
    StateUnavailable,
    Subscription,
)
from interlock.state.memory import MemoryState

__all__ = [
    "OUTCOME_BUCKETS",
    "CachedReads",
    "Decision",
    "KeyValue",
    "Limit",
    "Locks",
    "MemoryState",
    "OutcomeStats",
    "Outcomes",
    "PubSub",
    "RateLimits",
    "ScopeStatus",
    "SharedState",
    "Slots",
    "StateUnavailable",
    "Subscription",
    "build_state",
]
