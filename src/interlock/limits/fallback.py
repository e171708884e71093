"""The shared state as the rate limiter uses it, and what happens when it cannot answer.

``[limits] on_state_failure`` decides, per operation that finds the shared state down:

- ``local`` (default): the same operation on this instance's own in-memory state, so every
  limit still holds per instance (with N instances, up to N times a limit is admitted until
  the shared state is back);
- ``open``: no limit is checked (the request goes through without ``x-ratelimit-*``);
- ``closed``: the request is refused with 503 and a ``Retry-After``.

Each is logged as a warning, at most once per ``log_interval`` seconds per operation, so an
outage under load is one line, not one per request. Whatever was taken from a backend (a
slot, tokens) is given back to the same backend: ``run`` says which one answered.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from interlock.errors import ServiceUnavailable
from interlock.settings import StateFailure
from interlock.state import MemoryState, SharedState, StateUnavailable

T = TypeVar("T")

log = structlog.get_logger("interlock.limits")

DEFAULT_LOG_INTERVAL = 10.0
# How long a caller refused because the state is down (policy "closed") should wait.
UNAVAILABLE_RETRY_AFTER = 5.0

_EFFECTS = {
    "local": "rate limits are counted per instance until it recovers",
    "open": "rate limits are not checked until it recovers",
    "closed": "requests are refused with 503 until it recovers",
}


class LimitState:
    """``shared`` with the configured behaviour when it is unavailable."""

    def __init__(
        self,
        shared: SharedState,
        policy: StateFailure,
        *,
        local: SharedState | None = None,
        clock: Callable[[], float] = time.monotonic,
        log_interval: float = DEFAULT_LOG_INTERVAL,
    ) -> None:
        self.shared = shared
        self.policy = policy
        self.local: SharedState = local if local is not None else MemoryState()
        self._clock = clock
        self._log_interval = log_interval
        self._logged_at: dict[str, float] = {}

    async def run(
        self, what: str, operation: Callable[[SharedState], Awaitable[T]]
    ) -> tuple[T, SharedState] | None:
        """``operation`` on the shared state; if that is unavailable, on the local one
        (``local``), nowhere (``open``: None), or raise ``ServiceUnavailable`` (``closed``).
        Returns the result and the state that answered."""
        try:
            return await operation(self.shared), self.shared
        except StateUnavailable as exc:
            self.degraded(what, exc)
            if self.policy == "local":
                return await operation(self.local), self.local
            if self.policy == "closed":
                raise ServiceUnavailable(
                    "Rate limits cannot be checked right now; try again shortly.",
                    retry_after=UNAVAILABLE_RETRY_AFTER,
                ) from exc
            return None

    async def undo(self, what: str, operation: Awaitable[object]) -> None:
        """Await ``operation``, which gives something back to the state that granted it;
        never raises. If that is the shared state and it is down now, leases and refills
        settle it later."""
        try:
            await operation
        except StateUnavailable as exc:
            self.degraded(what, exc)

    def degraded(self, what: str, exc: StateUnavailable) -> None:
        """Log that ``what`` could not use the shared state (at most once per interval)."""
        now = self._clock()
        last = self._logged_at.get(what)
        if last is None or now - last >= self._log_interval:
            self._logged_at[what] = now
            log.warning(
                "rate_limit_state_unavailable",
                operation=what,
                error=str(exc),
                on_state_failure=self.policy,
                effect=_EFFECTS[self.policy],
            )

    async def aclose(self) -> None:
        """Close the private local state (the shared one belongs to the app)."""
        await self.local.aclose()
