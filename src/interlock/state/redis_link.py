"""The connection to Redis shared by every capability: the pooled client, the key prefix, and
the one place where a Redis failure becomes ``StateUnavailable``.

Time bounds: connecting and each read are bounded by ``timeout``; waiting for a free pooled
connection (only when ``max_connections`` operations are already in flight) by
``pool_timeout``. A call is tried again only when its connection turns out to be broken
(reconnecting at once); otherwise it fails and the caller decides.

Once Redis is seen down (``DOWN_AFTER`` operations in a row refused, reset or timed out),
operations fail at once, without touching the network, for ``retry_interval`` seconds; then
the next operations try again. So an outage costs each request nothing rather than a
timeout per call, while one slow connection under a burst does not stop everything.
``ping`` always tries (it is the readiness probe). A busy pool does not count as down.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from interlock.state import defaults
from interlock.state.interface import StateUnavailable

T = TypeVar("T")

# socket errors, timeouts (the built-in TimeoutError is an OSError), everything redis-py raises
FAILURES = (RedisError, OSError)
# ... and those that mean the server cannot be reached (as opposed to, say, a refused write)
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
DOWN_AFTER = 3


def _pool_exhausted(exc: BaseException) -> bool:
    """redis-py's blocking pool gave up waiting for a free connection: local load, not a
    Redis outage (it raises ConnectionError from the wait's TimeoutError)."""
    return isinstance(exc, RedisConnectionError) and isinstance(exc.__cause__, TimeoutError)


class RedisLink:
    """The pooled client, the key prefix and the health record that every Redis capability
    of one state object shares."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = defaults.KEY_PREFIX,
        timeout: float = defaults.TIMEOUT,
        pool_timeout: float = defaults.POOL_TIMEOUT,
        max_connections: int = defaults.MAX_CONNECTIONS,
        retry_interval: float = defaults.RETRY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry, on a broken connection only: a pooled connection that
            # Redis closed (it restarted, or dropped idle clients) is found out on use, and
            # must not fail a request. A timeout is never retried: that is the bound.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.client: Redis = Redis.from_pool(pool)
        self.prefix = prefix
        self.timeout = timeout
        self.healthy = True
        self.last_error: str | None = None
        self._retry_interval = retry_interval
        self._clock = clock
        self._down_until = 0.0
        self._unreachable_in_a_row = 0

    def unavailable(self, exc: BaseException) -> StateUnavailable:
        """Record ``exc`` as the latest failure; the exception to raise for it."""
        self.healthy = False
        self.last_error = f"{type(exc).__name__}: {str(exc) or 'no detail'}"
        if isinstance(exc, _UNREACHABLE) and not _pool_exhausted(exc):
            self._unreachable_in_a_row += 1
            if self._unreachable_in_a_row >= DOWN_AFTER:
                self._down_until = self._clock() + self._retry_interval
        return StateUnavailable(f"Redis is unavailable ({self.last_error})")

    async def call(self, operation: Awaitable[T], *, probe: bool = False) -> T:
        """Run one Redis operation; any failure raises ``StateUnavailable``.

        While Redis is known to be down (see the module docstring), the operation is not
        started unless ``probe`` is set.
        """
        if self._down_until and not probe:
            wait = self._down_until - self._clock()
            if wait > 0:
                if inspect.iscoroutine(operation):
                    operation.close()  # never started: close it, or Python warns it leaked
                raise StateUnavailable(
                    f"Redis is unavailable ({self.last_error}); next attempt in {wait:.2f}s"
                )
        try:
            result = await operation
        except FAILURES as exc:
            raise self.unavailable(exc) from exc
        self._down_until = 0.0
        self._unreachable_in_a_row = 0
        self.healthy = True
        return result

    async def aclose(self) -> None:
        await self.client.aclose()
