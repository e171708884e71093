"""The shared-state interface: what gateway instances share, and nothing about how.

``SharedState`` groups six small capabilities plus health; a consumer takes only the one it
needs (a limiter takes ``RateLimits``, the response cache ``KeyValue``...)::

    SharedState
    ├── limits    RateLimits     token buckets (GCRA), one atomic decision over many scopes
    ├── slots     Slots          concurrency slots held under a lease
    ├── outcomes  Outcomes       success / failure counts over a sliding window
    ├── kv        KeyValue       bytes with a TTL, size-bounded; set-if-absent
    ├── locks     Locks          named locks with an owner and a lease
    └── pubsub    PubSub         fire-and-forget messages between instances

Two implementations: ``MemoryState`` (one process, the default) and ``RedisState`` (every
instance sharing one Redis). Every guarantee written here holds across instances with Redis
and within the process without it. Every call on ``RedisState`` fails fast with
``StateUnavailable`` when Redis is down, frozen or slow; callers decide whether that means
fail open or closed. Nothing is stored forever: every record carries a TTL or lease.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import NamedTuple, Protocol, Self


class StateUnavailable(Exception):
    """The shared state could not answer (Redis down, frozen, timed out, out of memory...).

    The only exception a state operation raises for a backend failure; the backend's own
    exception is chained as ``__cause__``. The message never contains credentials.
    """


# --- rate limits ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limit:
    """One scope of a rate-limit decision: ``limit`` units per ``window`` seconds.

    ``key`` names the bucket (e.g. ``"key:abc:tokens"``); the same key must always be used
    with the same ``limit`` and ``window``. ``cost`` is what this request takes (1 for a
    request, the reserved tokens for tokens); in ``RateLimits.adjust`` it is a signed change.
    """

    key: str
    limit: int
    window: float
    cost: int = 1

    def __post_init__(self) -> None:
        if self.limit <= 0 or self.window <= 0:
            raise ValueError(f"rate limit {self.key!r} needs a positive limit and window")


class ScopeStatus(NamedTuple):
    """The state of one scope after a decision: what ``x-ratelimit-*`` headers report.

    ``remaining``: whole units still available now. ``reset``: seconds until the bucket is
    full again. ``retry_after``: seconds until this request's cost would fit (0 when it fits
    now; ``math.inf`` when the cost exceeds the limit and can never fit).
    """

    key: str
    limit: int
    remaining: int
    reset: float
    retry_after: float


class Decision(NamedTuple):
    """The answer to one ``RateLimits.admit`` call.

    ``scopes`` are in the order they were asked. When refused, ``refused`` is the scope that
    needs the longest wait and ``retry_after`` that wait (every refusing scope fits by then,
    since buckets refill independently); ``math.inf`` if some cost can never fit.
    """

    allowed: bool
    scopes: tuple[ScopeStatus, ...]

    @property
    def refused(self) -> ScopeStatus | None:
        if self.allowed:
            return None
        return max(self.scopes, key=lambda s: s.retry_after)

    @property
    def retry_after(self) -> float:
        refused = self.refused
        return 0.0 if refused is None else refused.retry_after

    @property
    def never(self) -> bool:
        """True when no amount of waiting admits this request (a cost above its limit)."""
        return math.isinf(self.retry_after)


class RateLimits(Protocol):
    """Token buckets in the GCRA form: each scope holds up to ``limit`` units and refills
    continuously at ``limit / window`` units per second — the semantics of OpenAI's
    ``x-ratelimit-*`` headers. A full bucket admits a burst of ``limit`` at once, so over
    any ``t`` seconds at most ``limit * (1 + t / window)`` units are admitted; in the long
    run, ``limit`` per ``window``. A bucket nobody touched for a window is gone (full)."""

    async def admit(self, scopes: Sequence[Limit]) -> Decision:
        """Atomically check every scope and, only if all admit, record every cost.

        All or nothing: a refusal records nothing in any scope. With Redis this is one
        script round trip on the server's clock, so concurrent callers on any instance never
        admit more than the limit. Keys must be distinct within one call; costs are ``>= 0``
        (a cost of 0 only asks whether the scope is over its limit). Raises
        ``StateUnavailable``.
        """
        ...

    async def adjust(self, changes: Sequence[Limit]) -> None:
        """Apply signed ``cost`` changes: negative gives units back (a reservation larger
        than the real usage), positive charges more (never refused; the scope may go over
        its limit and then refuses until it has refilled). Atomic over all changes. Raises
        ``StateUnavailable``."""
        ...


# --- concurrency slots ---------------------------------------------------------------------


class Slots(Protocol):
    """Named pools of at most ``limit`` concurrent holders, each holding under a lease.

    A holder that is never released (its instance crashed) stops counting when its lease
    ends; nothing runs per holder. A holder whose work outlives its lease must ``renew``.
    """

    async def acquire(self, name: str, holder: str, *, limit: int, lease: float) -> bool:
        """Take a slot for ``holder`` if fewer than ``limit`` live holders exist; True if
        held. Idempotent: a holder that already holds one keeps it with a fresh lease. Atomic
        across instances. Raises ``StateUnavailable``."""
        ...

    async def renew(self, name: str, holder: str, *, lease: float) -> bool:
        """Extend a live slot's lease to ``lease`` seconds from now; False if the slot was
        released or its lease already ended (the holder no longer counts)."""
        ...

    async def release(self, name: str, holder: str) -> bool:
        """Give the slot back; False if ``holder`` held none (already released or expired)."""
        ...

    async def counts(self, names: Sequence[str]) -> list[int]:
        """Live holders of each pool, in order, in one round trip (the router's load)."""
        ...


# --- outcome windows -----------------------------------------------------------------------


class OutcomeStats(NamedTuple):
    """Successes and failures over a window (a tuple: one is made per upstream call)."""

    successes: int
    failures: int

    @property
    def total(self) -> int:
        return self.successes + self.failures

    @property
    def failure_rate(self) -> float:
        """Failures / total; 0.0 with no events."""
        total = self.successes + self.failures
        return self.failures / total if total else 0.0


# Outcome windows slide in steps of window / OUTCOME_BUCKETS.
OUTCOME_BUCKETS = 10


class Outcomes(Protocol):
    """Success / failure counters over a sliding window (a circuit breaker's input).

    The window slides in tenths: a count covers between ``0.9 * window`` and ``window``
    seconds back. A key must always be used with the same ``window``. Counters expire one
    window after their last event.
    """

    async def record(self, key: str, *, ok: bool, window: float) -> OutcomeStats:
        """Count one outcome and return the window's counts including it (one round trip)."""
        ...

    async def read(self, key: str, *, window: float) -> OutcomeStats:
        """The window's counts."""
        ...

    async def clear(self, key: str) -> None:
        """Forget every count for ``key`` (e.g. when a circuit closes again)."""
        ...


# --- key / value ---------------------------------------------------------------------------


class KeyValue(Protocol):
    """Bytes under string keys, each with a TTL; bounded in item size (and, in process, in
    total bytes with least-recently-used eviction). A stored value may disappear before its
    TTL (eviction, Redis flushed); callers treat a miss as normal."""

    @property
    def max_item_bytes(self) -> int:
        """The largest value ``set`` stores, in bytes."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The value, or None if absent or expired."""
        ...

    async def set(self, key: str, value: bytes, *, ttl: float) -> bool:
        """Store ``value`` for ``ttl`` seconds, replacing any value. False (nothing stored,
        any old value kept) when ``value`` is over ``max_item_bytes``."""
        ...

    async def set_if_absent(self, key: str, value: bytes, *, ttl: float) -> bool:
        """Store only if ``key`` holds no live value (atomic across instances): True if
        stored. The single-flight leader is whoever gets True."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove the value; True if there was one."""
        ...


# --- locks ---------------------------------------------------------------------------------


class Locks(Protocol):
    """Named mutual-exclusion locks with an owner and a lease (a scheduled job's leader).

    A lock whose owner vanished frees itself when the lease ends. Only the owner can renew
    or release it.
    """

    async def acquire(self, name: str, owner: str, *, lease: float) -> bool:
        """Take the lock if free (or already ours: the lease is refreshed); True if held."""
        ...

    async def renew(self, name: str, owner: str, *, lease: float) -> bool:
        """Extend our lease to ``lease`` seconds from now; False if we no longer hold it."""
        ...

    async def release(self, name: str, owner: str) -> bool:
        """Free the lock if ``owner`` holds it (atomic compare-and-delete); True if freed."""
        ...


# --- pub/sub -------------------------------------------------------------------------------


class Subscription(Protocol):
    """Messages of the subscribed channels, in publish order per publisher.

    Delivery is at most once: a message published while a subscriber is disconnected (Redis
    restarting) or too far behind is lost, so subscribers must only use messages as hints
    (e.g. invalidate a cache whose entries also expire on their own). Close it with
    ``aclose`` or ``async with``.
    """

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...


class PubSub(Protocol):
    async def publish(self, channel: str, message: bytes) -> int:
        """Send ``message`` to every current subscriber of ``channel``; how many got it
        (across all instances with Redis). Raises ``StateUnavailable``."""
        ...

    async def subscribe(self, *channels: str) -> Subscription:
        """Subscribe; messages published after this returns are delivered. Raises
        ``StateUnavailable`` if the subscription cannot be made now; once made, it survives
        Redis outages by reconnecting (losing what was published meanwhile)."""
        ...


# --- the whole ------------------------------------------------------------------------------


class SharedState(Protocol):
    """Everything gateway instances share. Build one with ``build_state``; close it with
    ``aclose``. ``backend`` is ``"memory"`` or ``"redis"`` (for logs and health only: no
    code should branch on it)."""

    @property
    def backend(self) -> str: ...

    @property
    def limits(self) -> RateLimits: ...

    @property
    def slots(self) -> Slots: ...

    @property
    def outcomes(self) -> Outcomes: ...

    @property
    def kv(self) -> KeyValue: ...

    @property
    def locks(self) -> Locks: ...

    @property
    def pubsub(self) -> PubSub: ...

    @property
    def healthy(self) -> bool:
        """False since the last failed operation, until one succeeds again."""
        ...

    @property
    def last_error(self) -> str | None:
        """What the last failure was (no credentials), or None if none yet."""
        ...

    async def ping(self) -> None:
        """Check the backend answers now (readiness); raises ``StateUnavailable``."""
        ...

    async def sweep(self) -> dict[str, int]:
        """Housekeeping: drop the expired entries now rather than when next met; how many of
        each kind (rate-limit and budget buckets, slot holders, ...). Entries expire without
        it; this only gives their memory back sooner. Raises ``StateUnavailable``."""
        ...

    async def aclose(self) -> None:
        """Release connections. The state must not be used afterwards."""
        ...
