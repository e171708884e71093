"""The arithmetic of the rate-limit buckets (GCRA, in its leaky-bucket form).

A bucket is a ``level`` (units in use) and the time it was last written. It drains
continuously at ``limit / window`` units per second; a request of ``cost`` fits when
``drained level + cost <= limit``. The in-process limiter runs these functions; the Redis
Lua script (``redis_scripts.ADMIT``) does the same sums on the server. Both report through
``status``, so the two backends answer identically.
"""

from __future__ import annotations

import math

from interlock.state.interface import Limit, ScopeStatus

# Float sums of integer costs are exact, but drains are not: this slack keeps a bucket that
# is full to the last bit of rounding from refusing a request that exactly fits.
EPSILON = 1e-9


def drained(level: float, written_at: float, now: float, rate: float) -> float:
    """The level at ``now`` of a bucket that held ``level`` at ``written_at``."""
    elapsed = now - written_at
    if elapsed <= 0.0:  # a clock that stepped back (Redis failover) never adds units
        return level
    level -= elapsed * rate
    return level if level > 0.0 else 0.0


def fits(level: float, cost: int, limit: int) -> bool:
    return level + cost <= limit + EPSILON


def status(scope: Limit, level: float, admitted: bool) -> ScopeStatus:
    """What to report for ``scope`` whose drained level (before this request) is ``level``.

    ``admitted`` says whether the whole decision admitted the request, i.e. whether this
    scope's cost was recorded.
    """
    limit = scope.limit
    rate = limit / scope.window
    if admitted:
        level += scope.cost
        retry_after = 0.0
    elif scope.cost > limit:
        retry_after = math.inf
    else:
        retry_after = max(0.0, (level + scope.cost - limit) / rate)
        if retry_after <= EPSILON / rate:
            retry_after = 0.0
    remaining = max(0, math.floor(limit - level + EPSILON))
    return ScopeStatus(
        key=scope.key,
        limit=limit,
        remaining=remaining,
        reset=level / rate,
        retry_after=retry_after,
    )


def expiry(level: float, rate: float) -> float:
    """Seconds until a bucket at ``level`` is empty: after that it need not be stored."""
    return level / rate
