"""Admission to a deployment for one attempt, and the bookkeeping when the attempt ends.

``DeploymentGuard.admit`` lets an attempt through only if the deployment is not in a
``Retry-After`` cooldown, its circuit lets it pass (closed, or a free half-open probe), and
it has capacity (a concurrency slot, requests and tokens per minute). The attempt then ends
in exactly one of three ways, each of which gives back everything it held:

- ``succeeded``: the answer finished; the breaker counts a success and the tokens taken
  are corrected to the real usage;
- ``failed``: the deployment failed; the breaker counts a failure (unless the request
  itself was at fault, or it was a rate limit), and a ``Retry-After`` starts a cooldown;
- ``abandoned``: the client left or the gateway gave up; nothing is said about the
  deployment.

Settling twice is harmless (the second call does nothing), so every exit path may settle.
Settling is also where an attempt is observed: its ``observer`` (a trace span) is told how it
ended, and ``on_failure`` (the metrics) hears of every failure.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from interlock.chat.types import Finish, Usage
from interlock.errors import UpstreamError, UpstreamRateLimited
from interlock.routing.breaker import CircuitBreakers, Gate, Probe
from interlock.routing.capacity import Capacity, Reservation
from interlock.routing.cooldown import Cooldowns
from interlock.routing.failsafe import FailSafeState
from interlock.routing.router import Candidate
from interlock.settings import RoutingConfig


class Refusal(NamedTuple):
    """Why a deployment cannot take the attempt now, and when to ask again (seconds)."""

    reason: str  # "cooldown", "circuit_open" or "capacity"
    retry_after: float


class AttemptObserver(Protocol):
    """Watches one attempt (``interlock.telemetry.tracing.AttemptTrace``): the stream reports
    the answer, the guard how the attempt ended."""

    def answered(self, usage: Usage, finish: Finish) -> None: ...

    def ended(self, error: UpstreamError | None) -> None: ...

    def abandoned(self) -> None: ...


FailureHook = Callable[[str, UpstreamError], None]
"""Called with the deployment's name and the error of every failed attempt."""


class Admission:
    """One attempt's hold on a deployment."""

    __slots__ = ("candidate", "observer", "probe", "reservation", "settled")

    def __init__(self, candidate: Candidate, probe: Probe | None, reservation: Reservation) -> None:
        self.candidate = candidate
        self.probe = probe
        self.reservation = reservation
        self.settled = False
        self.observer: AttemptObserver | None = None


class DeploymentGuard:
    def __init__(
        self,
        state: FailSafeState,
        config: RoutingConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.breakers = CircuitBreakers(state, config.breaker, clock=clock)
        self.cooldowns = Cooldowns(state, max_cooldown=config.max_cooldown, clock=clock)
        self.capacity = Capacity(state)
        self._rate_limit_cooldown = config.rate_limit_cooldown
        # Slot holders must be unique across instances: a random instance id and a counter.
        self._instance = os.urandom(6).hex()
        self._counter = itertools.count()
        self.on_failure: FailureHook | None = None  # set by the app when metrics are on

    def holder(self) -> str:
        """A fresh holder id for one request's slots."""
        return f"{self._instance}-{next(self._counter)}"

    async def admit(self, candidate: Candidate, holder: str, tokens: int) -> Admission | Refusal:
        """Let one attempt through to ``candidate``, or say why not."""
        name = candidate.name
        wait = await self.cooldowns.remaining(name)
        if wait > 0:
            return Refusal("cooldown", wait)
        gate, retry_after, probe = await self.breakers.enter(name, holder, lease=candidate.lease)
        if gate is Gate.OPEN:
            return Refusal("circuit_open", retry_after)
        reserved = await self.capacity.reserve(candidate, holder, tokens)
        if not isinstance(reserved, Reservation):
            if probe is not None:
                await self.breakers.abandon(name, probe)
            return Refusal("capacity", reserved)
        return Admission(candidate, probe, reserved)

    async def succeeded(self, admission: Admission, used_tokens: int) -> None:
        if admission.settled:
            return
        admission.settled = True
        candidate = admission.candidate
        if admission.observer is not None:
            admission.observer.ended(None)
        try:
            await self.breakers.record(candidate.name, ok=True, probe=admission.probe)
        finally:
            await self.capacity.release(candidate, admission.reservation, used_tokens)

    async def failed(self, admission: Admission, error: UpstreamError) -> None:
        if admission.settled:
            return
        admission.settled = True
        candidate = admission.candidate
        if admission.observer is not None:
            admission.observer.ended(error)
        if self.on_failure is not None:
            self.on_failure(candidate.name, error)
        try:
            if isinstance(error, UpstreamRateLimited) or error.retry_after is not None:
                seconds = error.retry_after
                await self.cooldowns.start(
                    candidate.name, self._rate_limit_cooldown if seconds is None else seconds
                )
            if error.client_fault or isinstance(error, UpstreamRateLimited):
                if admission.probe is not None:
                    await self.breakers.abandon(candidate.name, admission.probe)
            else:
                await self.breakers.record(candidate.name, ok=False, probe=admission.probe)
        finally:
            await self.capacity.release(candidate, admission.reservation, 0)

    async def abandoned(self, admission: Admission, used_tokens: int) -> None:
        if admission.settled:
            return
        admission.settled = True
        candidate = admission.candidate
        if admission.observer is not None:
            admission.observer.abandoned()
        try:
            if admission.probe is not None:
                await self.breakers.abandon(candidate.name, admission.probe)
        finally:
            await self.capacity.release(candidate, admission.reservation, used_tokens)
