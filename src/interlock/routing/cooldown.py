"""Cooldowns: a deployment that said "come back in N seconds" gets no traffic for N seconds.

A provider's ``Retry-After`` (on a 429, a 503…) is a statement about the deployment, not
about one request: every instance should honour it. The cooldown is a small shared record,
``cooldown:<deployment>`` holding the moment it ends, written with a TTL of its length (so
it expires on its own) and read through ``FailSafeState``'s cached reads (no round trip per
request in the steady state; other instances see it within a second).

Times are on the injected ``clock`` (wall time by default, so that instances agree).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec

from interlock.routing.failsafe import FailSafeState

_decode_until = msgspec.json.Decoder(float).decode


class Cooldowns:
    """Per-deployment cooldowns, shared between instances."""

    def __init__(
        self,
        state: FailSafeState,
        *,
        max_cooldown: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._max = max_cooldown
        self._clock = clock
        self._decoded: dict[str, tuple[bytes, float]] = {}  # the last record seen, decoded

    @staticmethod
    def key(deployment: str) -> str:
        return "cooldown:" + deployment

    async def remaining(self, deployment: str) -> float:
        """Seconds left in the deployment's cooldown; 0.0 when it may be called."""
        raw = await self._state.read(self.key(deployment))
        if raw is None:
            return 0.0
        seen = self._decoded.get(deployment)
        if seen is not None and seen[0] is raw:
            until = seen[1]
        else:
            try:
                until = _decode_until(raw)
            except msgspec.DecodeError:
                return 0.0  # not ours: ignore rather than block a deployment for ever
            self._decoded[deployment] = (raw, until)
        return max(0.0, until - self._clock())

    async def start(self, deployment: str, seconds: float) -> None:
        """No traffic to ``deployment`` for ``seconds`` (capped at ``max_cooldown``); an
        existing longer cooldown is kept."""
        seconds = min(seconds, self._max)
        if seconds <= 0:
            return
        if await self.remaining(deployment) >= seconds:
            return
        until = self._clock() + seconds
        await self._state.write(self.key(deployment), msgspec.json.encode(until), ttl=seconds)
