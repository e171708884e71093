"""``build_state``: the one place that chooses the shared-state backend."""

from __future__ import annotations

import time
from collections.abc import Callable

from interlock.state import defaults
from interlock.state.interface import SharedState
from interlock.state.memory import MemoryState


def build_state(
    redis_url: str | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    memory_limit_bytes: int = defaults.MEMORY_LIMIT_BYTES,
    max_item_bytes: int = defaults.MAX_ITEM_BYTES,
    key_prefix: str = defaults.KEY_PREFIX,
    timeout: float = defaults.TIMEOUT,
    pool_timeout: float = defaults.POOL_TIMEOUT,
    max_connections: int = defaults.MAX_CONNECTIONS,
    retry_interval: float = defaults.RETRY_INTERVAL,
) -> SharedState:
    """The Redis state when ``redis_url`` is set, else the in-process one.

    No I/O happens here: a Redis that is down shows at the first operation (and in
    ``ping``) as ``StateUnavailable``. ``max_item_bytes`` bounds a ``kv`` value in both.
    In process, ``clock`` drives every window, lease and TTL, and ``memory_limit_bytes``
    bounds the key/value store. With Redis, the server's clock drives them (so instances
    agree) and ``clock`` only times the pause after an outage; Redis's ``maxmemory`` bounds
    its memory. ``key_prefix`` starts every Redis key and channel; ``timeout`` bounds
    connecting and each read, ``pool_timeout`` the wait for one of ``max_connections``
    pooled connections; after an outage is seen, Redis is left alone for
    ``retry_interval`` seconds (see ``interlock.state.redis_link``).
    """
    if redis_url:
        # Imported here so that the in-process default works without redis-py loaded.
        from interlock.state.redis_state import RedisState

        return RedisState(
            redis_url,
            prefix=key_prefix,
            timeout=timeout,
            pool_timeout=pool_timeout,
            max_connections=max_connections,
            retry_interval=retry_interval,
            max_item_bytes=max_item_bytes,
            clock=clock,
        )
    return MemoryState(
        clock=clock, memory_limit_bytes=memory_limit_bytes, max_item_bytes=max_item_bytes
    )
