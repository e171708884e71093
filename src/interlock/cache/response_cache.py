"""``ResponseCache``: look an answer up, or lead or join the one call that will produce it.

    decision = await cache.lookup(chat, user=principal.user_id, directive=directive)
    headers.update(decision.headers)          # x-interlock-cache: hit | miss | bypass
    if decision.hit:
        events = decision.replay()            # canonical events; record cost 0, cache_hit
    else:
        events = decision.tee(upstream_events)
        ... on a clean end: await decision.finish(model=..., deployment=...)
        ... on an error, a cut or a client that left: await decision.abandon()

Single-flight. Identical requests (same key) in flight at once make one upstream call.
Within a process the first one *leads*: the others await its answer on a future until at
most ``[cache] wait_timeout`` seconds after the flight started, shielded so that a waiter
that is cancelled (its client left) changes nothing for the leader or the other waiters. A
flight older than that is no longer joined. Across instances the leader is whoever takes
the lock ``cache:<key>`` in the shared state (a lease of ``wait_timeout``, not renewed: once
it ends nobody should still be waiting); on every other instance one task per key polls the
store for the entry,
backing off from 25 ms to 250 ms, and probes the lock: a free lock and no entry mean the
leader failed (or its answer was not storable). Then, or when the wait times out, each
waiter gets a miss and calls upstream itself: a failing leader never makes the waiters
fail, and its failure is not repeated in line, waiter after waiter.

Fail open. When the shared state cannot answer (Redis down or frozen), ``lookup`` returns
a bypass (no read, no write) and logs it; a failed write or unlock is logged and ignored.
The cache never raises to the request.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

from interlock.cache.entry import REPLAY_CHUNK_CHARS, CacheEntry
from interlock.cache.key import Tenant, cache_key
from interlock.cache.policy import CacheDirective, CacheRule, decide, is_deterministic
from interlock.cache.recorder import CacheRecorder
from interlock.cache.store import EntryStore, OutageLog, memory_store
from interlock.chat.types import ChatRequest, Event
from interlock.config_file import CacheConfig
from interlock.state import Locks, SharedState, StateUnavailable

CACHE_HEADER = "x-interlock-cache"
LOCK_PREFIX = "cache:"
POLL_FIRST = 0.025  # seconds: a remote waiter's first look at the store
POLL_MAX = 0.25  # ... and its longest pause between looks
PROBE_LEASE = 1.0  # seconds a probe holds the lock it found free (released at once)


class CacheStatus(StrEnum):
    HIT = "hit"  # answered from the cache (stored, or a concurrent identical call)
    MISS = "miss"  # called upstream; the answer may be stored
    BYPASS = "bypass"  # the cache took no part (disabled, not cacheable, or unavailable)


@dataclass(slots=True)
class CacheStats:
    """Counts since start, per instance (for metrics and tests)."""

    hits: int = 0
    coalesced: int = 0  # hits served by a concurrent call rather than the store
    misses: int = 0
    bypasses: int = 0
    stored: int = 0
    unavailable: int = 0


class CacheDecision(msgspec.Struct):  # built per request: a Struct is made in C
    """The cache's answer for one request: replay ``entry`` (a hit), or record the fresh
    answer through ``recorder`` (a miss that may be stored), or stay out (a bypass).

    ``reason`` says why when it was not a plain hit or miss (``"no-store"``,
    ``"not_deterministic"``, ``"unavailable"``, ``"wait_timeout"``, ``"leader_failed"``...).
    """

    status: CacheStatus
    key: str | None = None
    entry: CacheEntry | None = None
    recorder: CacheRecorder | None = None
    coalesced: bool = False
    reason: str = ""

    @property
    def hit(self) -> bool:
        return self.status is CacheStatus.HIT

    @property
    def records(self) -> bool:
        """Whether the fresh answer is recorded: else ``feed``, ``finish`` and ``abandon``
        do nothing, and need not be called."""
        return self.recorder is not None

    @property
    def headers(self) -> dict[str, str]:
        """The response header every protocol adapter sends."""
        return {CACHE_HEADER: self.status.value}

    def replay(self, chunk_chars: int = REPLAY_CHUNK_CHARS) -> AsyncGenerator[Event, None]:
        """A hit's answer as canonical events, in deltas a streaming client sees stream,
        with the original ``Usage`` and ``Finish``."""
        if self.entry is None:
            raise RuntimeError("only a cache hit can be replayed")
        return self.entry.replay(chunk_chars)

    def feed(self, event: Event) -> None:
        if self.recorder is not None:
            self.recorder.feed(event)

    def tee(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """``events`` passed through, recorded on the way when the answer may be stored."""
        return events if self.recorder is None else self.recorder.tee(events)

    async def finish(self, *, model: str, deployment: str) -> None:
        """The fresh answer was delivered whole (store it; hand it to the waiters)."""
        if self.recorder is not None:
            await self.recorder.finish(model=model, deployment=deployment)

    async def abandon(self) -> None:
        """The fresh answer failed or was cut (store nothing; let the waiters go on)."""
        if self.recorder is not None:
            await self.recorder.abandon()


@dataclass(slots=True, eq=False)
class _Flight:
    """One key's call in progress in this process, and what its waiters await."""

    future: asyncio.Future[CacheEntry | None]
    expires_at: float  # loop time: a flight older than this is no longer joined
    owner: str
    waiter: asyncio.Task[None] | None = field(default=None)
    # why the waiters get no answer, if they do not: set before the future is resolved
    reason: str = "leader_failed"


class ResponseCache:
    """The response cache of one gateway instance (see the module doc)."""

    def __init__(
        self,
        config: CacheConfig,
        store: EntryStore,
        locks: Locks,
        *,
        clock: Callable[[], float] = time.time,
        poll_first: float = POLL_FIRST,
        poll_max: float = POLL_MAX,
    ) -> None:
        """``clock`` (wall time) stamps entries; ``poll_*`` pace remote waiters."""
        self.config = config
        self.store = store
        self._locks = locks
        self._clock = clock
        self._poll_first = poll_first
        self._poll_max = poll_max
        self._wait_timeout = config.wait_timeout
        self._flights: dict[str, _Flight] = {}
        self._rules: dict[tuple[str | None, bool, CacheDirective], CacheRule] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._instance = uuid.uuid4().hex[:12]
        self._numbers = itertools.count()
        self._outage = OutageLog()
        self._waiting = 0
        self.stats = CacheStats()

    @property
    def waiting(self) -> int:
        """Requests waiting right now for an identical call in flight."""
        return self._waiting

    async def lookup(
        self,
        request: ChatRequest,
        *,
        user: str,
        team: str | None = None,
        directive: CacheDirective = CacheDirective.DEFAULT,
    ) -> CacheDecision:
        """Decide for ``request`` of ``user`` (in ``team``, if any); never raises for a
        state failure (see the module doc). A miss may wait up to ``wait_timeout`` for an
        identical call in flight."""
        # The rule depends on the model's own settings (if any), determinism and the
        # directive only: one per combination, decided once.
        model = request.model if request.model in self.config.models else None
        rule_key = (model, is_deterministic(request), directive)
        rule = self._rules.get(rule_key)
        if rule is None:
            rule = self._rules[rule_key] = decide(self.config, request, directive)
        if rule.bypass:
            return self._bypass(rule.reason)
        try:
            tenant = await self.store.current(
                Tenant.resolve(self.config.scope, user=user, team=team)
            )
        except StateUnavailable as error:
            return self._unavailable("get", error)
        key = cache_key(request, tenant)
        if not rule.read:
            return self._miss(key, rule, rule.reason)
        try:
            entry = await self.store.get(key)
        except StateUnavailable as error:
            return self._unavailable("get", error)
        if entry is not None:
            self.stats.hits += 1
            return CacheDecision(CacheStatus.HIT, key, entry=entry)
        return await self._join_or_lead(key, rule)

    async def forget_user(self, user: str) -> None:
        """Make every entry of ``user``'s own tenant unreachable (an erasure); raises
        ``StateUnavailable`` when the store cannot be written."""
        await self.store.new_generation(Tenant("user", user))

    async def aclose(self) -> None:
        """Stop remote waits (their waiters get a miss) and finish pending writes."""
        for flight in list(self._flights.values()):
            if flight.waiter is not None:
                flight.waiter.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- decisions ----------------------------------------------------------------------

    def _bypass(self, reason: str) -> CacheDecision:
        self.stats.bypasses += 1
        return CacheDecision(CacheStatus.BYPASS, reason=reason)

    def _unavailable(self, operation: str, error: StateUnavailable) -> CacheDecision:
        self.stats.unavailable += 1
        self._outage.failed(operation, error)
        return self._bypass("unavailable")

    def _miss(self, key: str, rule: CacheRule, reason: str = "") -> CacheDecision:
        self.stats.misses += 1
        recorder = None
        if rule.write:

            async def commit(entry: CacheEntry | None) -> None:
                if entry is not None:
                    await self._shielded(self._put(key, entry, rule.ttl))

            recorder = CacheRecorder(self.store.max_entry_bytes, commit, clock=self._clock)
        return CacheDecision(CacheStatus.MISS, key, recorder=recorder, reason=reason)

    # --- single flight ------------------------------------------------------------------

    async def _join_or_lead(self, key: str, rule: CacheRule) -> CacheDecision:
        loop = asyncio.get_running_loop()
        now = loop.time()
        flight = self._flights.get(key)
        if flight is not None and flight.expires_at > now:
            return await self._follow(key, flight, rule)
        owner = f"{self._instance}:{next(self._numbers)}"
        flight = _Flight(loop.create_future(), now + self._wait_timeout, owner)
        self._flights[key] = flight  # no await since the look-up above: one leader here
        try:
            held = await self._locks.acquire(LOCK_PREFIX + key, owner, lease=self._wait_timeout)
        except StateUnavailable as error:
            self._land(key, flight, None)
            return self._unavailable("lock", error)
        except BaseException:
            self._land(key, flight, None)
            raise
        if not held:  # another instance leads: one task here waits for its answer
            flight.waiter = self._spawn(self._wait_remote(key, flight))
            return await self._follow(key, flight, rule)

        async def commit(entry: CacheEntry | None) -> None:
            await self._shielded(self._settle_leader(key, flight, entry, rule.ttl))

        self.stats.misses += 1
        recorder = CacheRecorder(self.store.max_entry_bytes, commit, clock=self._clock)
        return CacheDecision(CacheStatus.MISS, key, recorder=recorder)

    async def _follow(self, key: str, flight: _Flight, rule: CacheRule) -> CacheDecision:
        self._waiting += 1
        try:
            # Bounded from the flight's start, as its lock's lease is on other instances.
            async with asyncio.timeout_at(flight.expires_at):
                # Shielded: a waiter cancelled here leaves the shared future alone.
                entry = await asyncio.shield(flight.future)
            reason = flight.reason
        except TimeoutError:
            entry, reason = None, "wait_timeout"
        finally:
            self._waiting -= 1
        if entry is None:
            return self._miss(key, rule, reason)
        self.stats.hits += 1
        self.stats.coalesced += 1
        return CacheDecision(CacheStatus.HIT, key, entry=entry, coalesced=True)

    def _land(self, key: str, flight: _Flight, entry: CacheEntry | None) -> None:
        """The flight is over: wake its waiters with ``entry`` (None: call upstream)."""
        if not flight.future.done():
            flight.future.set_result(entry)
        if self._flights.get(key) is flight:
            del self._flights[key]

    async def _settle_leader(
        self, key: str, flight: _Flight, entry: CacheEntry | None, ttl: float
    ) -> None:
        self._land(key, flight, entry)  # waiters here need no store round trip
        try:
            if entry is not None:
                await self._put(key, entry, ttl)  # before the unlock: see _wait_remote
        finally:
            try:
                await self._locks.release(LOCK_PREFIX + key, flight.owner)
            except StateUnavailable as error:
                self._outage.failed("unlock", error)  # the lease ends it

    async def _wait_remote(self, key: str, flight: _Flight) -> None:
        """Poll for the entry another instance's leader will store (see the module doc)."""
        loop = asyncio.get_running_loop()
        entry: CacheEntry | None = None
        delay = self._poll_first
        probe = flight.owner + ":probe"
        try:
            while (left := flight.expires_at - loop.time()) > 0:
                await asyncio.sleep(min(delay, left))
                entry = await self.store.get(key)
                if entry is not None:
                    break
                if await self._locks.acquire(LOCK_PREFIX + key, probe, lease=PROBE_LEASE):
                    # The leader is gone. It stores before it unlocks, so look once more.
                    await self._locks.release(LOCK_PREFIX + key, probe)
                    entry = await self.store.get(key)
                    break
                delay = min(delay * 2, self._poll_max)
            else:
                flight.reason = "wait_timeout"
        except StateUnavailable as error:
            flight.reason = "unavailable"
            self._outage.failed("wait", error)
        finally:
            self._land(key, flight, entry)

    # --- writes -------------------------------------------------------------------------

    async def _put(self, key: str, entry: CacheEntry, ttl: float) -> None:
        try:
            stored = await self.store.put(key, entry, ttl)
        except StateUnavailable as error:
            self._outage.failed("put", error)
            return
        if stored:
            self.stats.stored += 1

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _shielded(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` to the end even if the caller is cancelled meanwhile."""
        await asyncio.shield(self._spawn(work))


def build_cache(
    config: CacheConfig,
    state: SharedState,
    *,
    shared: bool,
    clock: Callable[[], float] = time.monotonic,
) -> ResponseCache:
    """The cache as the app runs it. ``shared`` (Redis is configured): entries and locks
    live in ``state``, seen by every instance. Otherwise entries live in the cache's own
    in-process store, bounded by ``memory_limit_bytes`` with LRU eviction, and ``clock``
    drives its TTLs."""
    if shared:
        store = EntryStore(state.kv, max_entry_bytes=config.max_entry_bytes)
    else:
        store = memory_store(
            limit_bytes=config.memory_limit_bytes,
            max_entry_bytes=config.max_entry_bytes,
            clock=clock,
        )
    return ResponseCache(config, store, state.locks)
