"""When a failed attempt is tried again on the same deployment, and how long to wait first.

The provider adapters classify every failure once (``interlock.errors``); this module only
reads that classification:

- a client fault (the request itself was refused) is never retried nor failed over;
- a transient failure of the deployment — a refused or reset connection, a 5xx — is
  retried on the same deployment up to ``max_retries`` times, after an exponential backoff
  with full jitter, while the retry budget allows;
- a timeout, a malformed reply, a refusal of our credentials, and any reply that names a
  ``Retry-After`` move on to the next deployment at once (waiting on a slow or
  rate-limited deployment only adds latency; the caller puts the deployment in cooldown for
  the ``Retry-After``).

The retry budget keeps a full outage from multiplying traffic: over a sliding window, the
retries of one gateway instance stay within ``ratio`` of its requests (plus a small floor,
so that a quiet instance can still retry). The budget is per instance on purpose: each
instance bounds its own amplification, so the sum over instances is bounded alike, and the
budget costs no shared-state round trip. Failing over to another deployment is not a retry
in this sense: it sends no more traffic to any one deployment than the requests themselves.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from interlock.errors import (
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamTimeout,
)
from interlock.settings import RetryConfig

# Failures that say nothing good will come of asking this deployment again right away.
_MOVE_ON: tuple[type[UpstreamError], ...] = (
    UpstreamTimeout,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamProtocolError,  # a server that sends garbage tends to send it again
)

_BUDGET_BUCKETS = 10


class RetryBudget:
    """Retries allowed as a share of requests over a sliding window, in this process.

    ``allow_retry`` is true while the window's retries are fewer than
    ``max(minimum, ratio * requests)``; each allowed retry is counted. No I/O, no task:
    ten buckets of two counters, rotated as the clock moves.
    """

    __slots__ = ("_buckets", "_clock", "_current", "_minimum", "_ratio", "_span")

    def __init__(
        self,
        *,
        ratio: float,
        minimum: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ratio = ratio
        self._minimum = minimum
        self._span = window / _BUDGET_BUCKETS
        self._clock = clock
        self._buckets = [[0, 0] for _ in range(_BUDGET_BUCKETS)]  # [requests, retries]
        self._current = math.floor(clock() / self._span)

    def _bucket(self) -> list[int]:
        number = math.floor(self._clock() / self._span)
        if number != self._current:
            # Empty the buckets the clock skipped over (all of them after a long pause).
            for skipped in range(max(self._current + 1, number - _BUDGET_BUCKETS + 1), number + 1):
                bucket = self._buckets[skipped % _BUDGET_BUCKETS]
                bucket[0] = bucket[1] = 0
            self._current = number
        return self._buckets[number % _BUDGET_BUCKETS]

    def note_request(self) -> None:
        """Count one request (its first attempt)."""
        self._bucket()[0] += 1

    def allow_retry(self) -> bool:
        """True, and the retry counted, if one more retry fits in the budget."""
        bucket = self._bucket()
        requests = retries = 0
        for counts in self._buckets:
            requests += counts[0]
            retries += counts[1]
        if retries >= max(self._minimum, self._ratio * requests):
            return False
        bucket[1] += 1
        return True


class RetryPolicy:
    """Decides, after a failed attempt, whether to retry the same deployment and when."""

    def __init__(
        self,
        config: RetryConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._max_retries = config.max_retries
        self._base = config.backoff_base
        self._cap = config.backoff_max
        self._rng = rng or random.Random()
        self.budget = RetryBudget(
            ratio=config.budget_ratio,
            minimum=config.budget_min,
            window=config.budget_window,
            clock=clock,
        )

    @staticmethod
    def retries_in_place(error: UpstreamError) -> bool:
        """Whether this kind of failure is worth another try on the same deployment."""
        return (
            error.retryable
            and not error.client_fault
            and error.retry_after is None
            and not isinstance(error, _MOVE_ON)
        )

    def backoff(self, retry: int) -> float:
        """The wait before retry number ``retry`` (0-based): full jitter over an exponential
        ceiling, ``uniform(0, min(cap, base * 2**retry))``."""
        return self._rng.uniform(0.0, min(self._cap, self._base * (2.0**retry)))

    def retry_delay(self, error: UpstreamError, retries: int, time_left: float) -> float | None:
        """Seconds to wait before retrying the same deployment, or None to move on.

        ``retries`` is how many retries this deployment already had for this request;
        ``time_left`` the seconds before the request's deadline (``math.inf`` for none).
        A retry is only allowed if the wait leaves time for the attempt and the budget has
        room (checked last, since an allowed retry is counted).
        """
        if retries >= self._max_retries or not self.retries_in_place(error):
            return None
        delay = self.backoff(retries)
        if delay >= time_left:
            return None
        if not self.budget.allow_retry():
            return None
        return delay
