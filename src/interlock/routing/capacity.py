"""Deployment capacity: requests and tokens per minute, and concurrent requests.

A deployment may declare ``rpm``, ``tpm`` and ``max_concurrent``. Before an attempt, the
guard reserves what it needs here; after it, the reservation is settled:

- concurrency is a slot in the pool ``deployment:<name>`` held under a lease by the
  request (``state.slots``): released when the attempt ends, however it ends; renewed while
  a long stream is still flowing; freed on its own by the lease if the instance died;
- requests and tokens are GCRA buckets (``state.limits``) refilled over 60 seconds: one
  request, and the tokens estimated from the prompt plus ``max_tokens``, are taken up front
  and the token count is corrected with ``adjust`` once the real usage is known.

Deployments that share a priority are also tracked in the slot pool (with no limit of their
own) so that the balancer can send the request to the least busy one; ``loads`` reads every
pool a request may use in one round trip.

The shared state goes through ``FailSafeState``: if it is down, capacity is counted per
instance (see that module).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from interlock.routing.failsafe import FailSafeState
from interlock.routing.router import Candidate
from interlock.state import Limit, SharedState, StateUnavailable

# No one knows when a concurrency slot frees up; a full pool is worth asking about this soon.
SLOT_RETRY_AFTER = 1.0
TOKEN_WINDOW = 60.0


class Reservation:
    """What one attempt holds on a deployment; give it back with ``Capacity.release``."""

    __slots__ = ("holder", "renew_at", "slot_backend", "tokens", "tokens_backend")

    def __init__(
        self,
        holder: str,
        slot_backend: SharedState | None,
        tokens: int,
        tokens_backend: SharedState | None,
        renew_at: float,
    ) -> None:
        self.holder = holder
        self.slot_backend = slot_backend  # where the slot is held; None: no slot
        self.tokens = tokens  # tokens taken from the tpm bucket
        self.tokens_backend = tokens_backend  # where they were taken; None: not counted
        self.renew_at = renew_at  # event-loop time after which the slot's lease is renewed


class Capacity:
    """Reserves and releases deployment capacity (see the module docstring)."""

    def __init__(self, state: FailSafeState) -> None:
        self._state = state

    async def loads(self, slot_names: Sequence[str]) -> list[int]:
        """How many requests each pool holds now, in one round trip."""
        counts, _ = await self._state.run("load", lambda s: s.slots.counts(slot_names))
        return counts

    async def reserve(self, candidate: Candidate, holder: str, tokens: int) -> Reservation | float:
        """Take a slot and admit one request and ``tokens`` on ``candidate``'s deployment;
        the reservation, or the seconds until it might fit if it does not fit now."""
        slot_backend: SharedState | None = None
        limit = candidate.slot_limit
        if limit is not None:
            name, lease = candidate.slot_name, candidate.lease
            held, slot_backend = await self._state.run(
                "capacity", lambda s: s.slots.acquire(name, holder, limit=limit, lease=lease)
            )
            if not held:
                return SLOT_RETRY_AFTER
        tokens_backend: SharedState | None = None
        scopes = _scopes(candidate, tokens)
        if scopes:
            decision, backend = await self._state.run("capacity", lambda s: s.limits.admit(scopes))
            if not decision.allowed:
                if slot_backend is not None:
                    await self._state.release_slot(slot_backend, candidate.slot_name, holder)
                return decision.retry_after
            if candidate.tpm is not None:
                tokens = min(tokens, candidate.tpm)
                tokens_backend = backend
        renew_at = asyncio.get_running_loop().time() + candidate.lease / 2
        return Reservation(holder, slot_backend, tokens, tokens_backend, renew_at)

    async def renew(self, candidate: Candidate, reservation: Reservation) -> None:
        """Extend the slot's lease (called while a long answer is still streaming)."""
        reservation.renew_at = asyncio.get_running_loop().time() + candidate.lease / 2
        backend = reservation.slot_backend
        if backend is None:
            return
        try:
            await backend.slots.renew(
                candidate.slot_name, reservation.holder, lease=candidate.lease
            )
        except StateUnavailable as exc:
            self._state.degraded("renew", exc)

    async def release(
        self, candidate: Candidate, reservation: Reservation, used_tokens: int
    ) -> None:
        """Free the slot and correct the tokens taken to ``used_tokens``."""
        backend = reservation.slot_backend
        if backend is not None:
            reservation.slot_backend = None
            await self._state.release_slot(backend, candidate.slot_name, reservation.holder)
        backend = reservation.tokens_backend
        if backend is not None and candidate.tpm is not None:
            reservation.tokens_backend = None
            change = used_tokens - reservation.tokens
            if change:
                scope = Limit(candidate.tpm_key, candidate.tpm, TOKEN_WINDOW, change)
                try:
                    await backend.limits.adjust((scope,))
                except StateUnavailable as exc:
                    self._state.degraded("adjust", exc)


def _scopes(candidate: Candidate, tokens: int) -> tuple[Limit, ...]:
    rpm, tpm = candidate.rpm, candidate.tpm
    if tpm is None:
        return () if rpm is None else (rpm,)
    # A request larger than the whole bucket could never fit: take the whole bucket, and
    # let the correction after it charge the rest.
    tokens_scope = Limit(candidate.tpm_key, tpm, TOKEN_WINDOW, min(tokens, tpm))
    return (tokens_scope,) if rpm is None else (rpm, tokens_scope)
