"""What an admitted request holds against the rate limits, what settling it changes, and
how a refusal reads: the parts of ``rate_limits`` that are data, not decisions.

A limit's key is ``rl:<scope>:<who>:<unit>`` (``rl:key:<key id>:tokens``,
``rl:user:<user id>:concurrent``...): ``scope_kind`` and ``unit_of`` read it back for the
refusal's message and the ``x-ratelimit-*`` values.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

from interlock.errors import RateLimited
from interlock.limits.quota import Quota, Quotas, tightest
from interlock.state import Limit, ScopeStatus, SharedState

# No one knows when a concurrent request ends; a full pool is worth asking about this soon.
CONCURRENCY_RETRY_AFTER = 1.0

SCOPE_NAMES = {
    "ip": "this IP address",
    "key": "this API key",
    "user": "this user",
    "tier": "this tier (all its users together)",
    "model": "this user on this model",
}


class RateLimitExceeded(RateLimited):
    """A rate limit refused the request. ``code`` names the scope (``key_rate_limit_exceeded``,
    ``concurrency_limit_exceeded``...); ``quotas`` are the ``x-ratelimit-*`` values."""

    def __init__(
        self, message: str, *, code: str, retry_after: float | None, quotas: Quotas
    ) -> None:
        super().__init__(message, code=code, retry_after=retry_after)
        self.quotas = quotas

    @property
    def headers(self) -> dict[str, str]:
        return self.quotas.headers()


def whole_seconds(seconds: float) -> float:
    """A wait as ``Retry-After`` gives it: whole seconds, rounded up, at least 1."""
    return float(max(1, math.ceil(seconds - 1e-9)))


def scope_kind(key: str) -> str:
    return key.split(":", 2)[1]


def unit_of(key: str) -> str:
    return key.rsplit(":", 1)[1]


def requests_quota(status: ScopeStatus) -> Quotas:
    return Quotas(requests=Quota(status.limit, status.remaining, status.reset))


def refunds(buckets: Sequence[Limit]) -> list[Limit]:
    """What gives back the costs ``buckets`` took."""
    return [Limit(b.key, b.limit, b.window, -b.cost) for b in buckets]


def pool_full(name: str, cap: int, quotas: Quotas) -> RateLimitExceeded:
    return RateLimitExceeded(
        f"Too many requests at once for {SCOPE_NAMES[scope_kind(name)]} (at most {cap}); retry "
        "when one has finished.",
        code="concurrency_limit_exceeded",
        retry_after=CONCURRENCY_RETRY_AFTER,
        quotas=quotas,
    )


def quotas_of(statuses: Sequence[ScopeStatus]) -> Quotas:
    return Quotas(
        requests=tightest(s for s in statuses if unit_of(s.key) == "requests"),
        tokens=tightest(s for s in statuses if unit_of(s.key) == "tokens"),
    )


def token_changes(admission: Admission, used_tokens: int) -> list[Limit]:
    """What replaces the admission's token reservation by ``used_tokens`` (none if nothing
    was charged, or nothing changes)."""
    change = used_tokens - admission.reserved
    if admission.limits_backend is None or not admission.tokens or not change:
        return []
    return [Limit(b.key, b.limit, b.window, change) for b in admission.tokens]


class Admission:
    """What one admitted request holds; give it back with ``RateLimiter.settle``."""

    __slots__ = (
        "holder",
        "limits_backend",
        "quotas",
        "renew_at",
        "reserved",
        "settled",
        "slots",
        "tokens",
    )

    def __init__(
        self,
        quotas: Quotas,
        *,
        holder: str = "",
        tokens: tuple[Limit, ...] = (),
        reserved: int = 0,
        limits_backend: SharedState | None = None,
        slots: tuple[tuple[str, SharedState], ...] = (),
        renew_at: float = math.inf,
    ) -> None:
        self.quotas = quotas  # the x-ratelimit-* values of this request
        self.holder = holder  # this request's id in the slot pools
        self.tokens = tokens  # the token buckets charged, each with ``reserved`` tokens
        self.reserved = reserved
        self.limits_backend = limits_backend  # where the tokens were taken; None: nowhere
        self.slots = slots  # the pools holding a slot, each with the state that granted it
        self.renew_at = renew_at  # event-loop time after which the slots' leases are renewed
        self.settled = False

    def headers(self) -> dict[str, str]:
        return self.quotas.headers()

    def renew_due(self) -> bool:
        """Whether the slots' leases should be renewed now (``RateLimiter.renew``)."""
        return bool(self.slots) and asyncio.get_running_loop().time() >= self.renew_at
