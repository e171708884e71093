"""What a caller has left: the values of OpenAI's ``x-ratelimit-*`` response headers.

A request is held to several scopes at once (its IP, key, user, tier, model); the headers
report, for requests and for tokens separately, the tightest of them: the one with the
fewest units remaining (on a tie, the one that takes longest to refill). ``reset`` is when
that scope is full again, written the way OpenAI writes it (Go durations: ``20ms``, ``1s``,
``1.5s``, ``6m0s``, ``1h0m0s``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from interlock.state import ScopeStatus


@dataclass(frozen=True, slots=True)
class Quota:
    """One unit's tightest scope: its ``limit``, whole units ``remaining``, and seconds
    until it is full again (``reset``)."""

    limit: int
    remaining: int
    reset: float

    def tighter(self, other: Quota | None) -> Quota:
        """The tighter of the two (fewest remaining; then the later reset)."""
        if other is None:
            return self
        if (other.remaining, -other.reset) < (self.remaining, -self.reset):
            return other
        return self


def tightest(statuses: Iterable[ScopeStatus]) -> Quota | None:
    """The tightest of ``statuses`` as a ``Quota``; None when there are none."""
    found: Quota | None = None
    for status in statuses:
        found = Quota(status.limit, status.remaining, status.reset).tighter(found)
    return found


@dataclass(frozen=True, slots=True)
class Quotas:
    """The requests and tokens quotas of one request (None: no such limit applies)."""

    requests: Quota | None = None
    tokens: Quota | None = None

    def merged(self, other: Quotas) -> Quotas:
        """The tighter quota of each unit from both."""
        return Quotas(
            requests=_tighter(self.requests, other.requests),
            tokens=_tighter(self.tokens, other.tokens),
        )

    def headers(self) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` for the units that have
        a limit; empty when none applies."""
        headers: dict[str, str] = {}
        for unit, quota in (("requests", self.requests), ("tokens", self.tokens)):
            if quota is not None:
                headers[f"x-ratelimit-limit-{unit}"] = str(quota.limit)
                headers[f"x-ratelimit-remaining-{unit}"] = str(quota.remaining)
                headers[f"x-ratelimit-reset-{unit}"] = duration(quota.reset)
        return headers


NO_QUOTAS = Quotas()


def _tighter(a: Quota | None, b: Quota | None) -> Quota | None:
    return b if a is None else a.tighter(b)


def duration(seconds: float) -> str:
    """``seconds`` as a Go duration string, rounded up to the millisecond: ``0s``, ``20ms``,
    ``1s``, ``1.5s``, ``6m0s``, ``1h2m3.004s`` (OpenAI's ``x-ratelimit-reset-*`` format)."""
    if not math.isfinite(seconds) or seconds <= 0:
        return "0s"
    millis = math.ceil(seconds * 1000 - 1e-6)  # 0.3 s is 300 ms, not 301
    if millis <= 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    whole, fraction = divmod(millis, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text
