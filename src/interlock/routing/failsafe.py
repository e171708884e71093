"""The shared state as routing uses it: shared when it answers, this process's own when not.

Routing must never turn a Redis outage into a storm of 500s. Every operation it makes goes
through ``FailSafeState.run``: the shared state first; if that raises ``StateUnavailable``,
the same operation on a private in-process ``MemoryState``. So while Redis is down, each
instance enforces capacity, keeps circuits and cooldowns on its own (fail open to a
per-instance view: with N instances up to N times a deployment's limits may be admitted),
and routing goes on. A warning is logged per kind of operation, at most once per
``log_interval`` seconds.

Small records that every request reads (a circuit, a cooldown) go through ``CachedReads``:
read at most every ``max_age`` seconds from the shared store, so that reading them costs
no round trip in the steady state, and a change made by one instance is seen by the others
within ``2 * max_age``.

Whoever takes something here (a slot, tokens) must give it back to the backend that gave
it: ``run`` says which one answered.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from interlock.state import CachedReads, MemoryState, SharedState, StateUnavailable

T = TypeVar("T")

log = structlog.get_logger("interlock.routing")

DEFAULT_LOG_INTERVAL = 10.0


class FailSafeState:
    """``shared`` with a per-instance fallback (see the module docstring)."""

    def __init__(
        self,
        shared: SharedState,
        *,
        max_age: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = DEFAULT_LOG_INTERVAL,
    ) -> None:
        self.shared = shared
        # The in-process shared state never fails and never awaits: callers on the request
        # path call its synchronous forms directly (``MemoryState``), None for Redis.
        self.in_process = shared if isinstance(shared, MemoryState) else None
        self.local: SharedState = MemoryState()
        self.records = CachedReads(shared.kv, max_age=max_age, clock=clock)
        self._clock = clock
        self._log_interval = log_interval
        self._logged_at: dict[str, float] = {}

    async def run(
        self, what: str, operation: Callable[[SharedState], Awaitable[T]]
    ) -> tuple[T, SharedState]:
        """``operation`` on the shared state, or on the local one if the shared one is
        unavailable; its result and the state that answered."""
        try:
            return await operation(self.shared), self.shared
        except StateUnavailable as exc:
            self.degraded(what, exc)
            return await operation(self.local), self.local

    async def release_slot(self, backend: SharedState, name: str, holder: str) -> None:
        """Give a slot back to the state that granted it. If that is the shared one and it
        is down now, the slot's lease frees it later."""
        try:
            await backend.slots.release(name, holder)
        except StateUnavailable as exc:
            self.degraded("release", exc)

    async def read(self, key: str) -> bytes | None:
        """A small record, through the cached reads (the local store if shared is down)."""
        try:
            return await self.records.get(key)
        except StateUnavailable as exc:
            self.degraded("read", exc)
            return await self.local.kv.get(key)

    async def write(self, key: str, value: bytes, *, ttl: float) -> None:
        """Store a small record where ``read`` finds it (the local store if shared is down)."""
        try:
            await self.records.set(key, value, ttl=ttl)
        except StateUnavailable as exc:
            self.degraded("write", exc)
            await self.local.kv.set(key, value, ttl=ttl)

    async def delete(self, key: str) -> None:
        """Remove a small record, from the shared store and the local one."""
        await self.local.kv.delete(key)
        try:
            await self.records.delete(key)
        except StateUnavailable as exc:
            self.records.forget(key)
            self.degraded("delete", exc)

    def degraded(self, what: str, exc: StateUnavailable) -> None:
        """Log that ``what`` fell back to this instance's own state (rate-limited)."""
        now = self._clock()
        last = self._logged_at.get(what)
        if last is None or now - last >= self._log_interval:
            self._logged_at[what] = now
            log.warning(
                "shared_state_unavailable_using_local",
                operation=what,
                error=str(exc),
                effect="capacity, circuits and cooldowns are per instance until it recovers",
            )

    async def aclose(self) -> None:
        """Close the private local state (the shared one belongs to the app)."""
        await self.local.aclose()
