"""The Redis shared state: every guarantee of ``interlock.state.interface`` across instances.

Each operation is one round trip: a plain command, or an atomic Lua script
(``redis_scripts``) run by EVALSHA and loaded again when Redis answers NOSCRIPT (after a
restart, ``SCRIPT FLUSH`` or ``FLUSHALL``, which simply leave the state empty). Time bounds,
failure translation to ``StateUnavailable`` and the fast failure while Redis is down are
``RedisLink``'s. A call that times out may still take effect on the server (a frozen Redis
that resumes runs what it had received).

Keys are ``<prefix><kind>:<name>`` (kinds: ``rl`` buckets, ``slot``, ``out`` outcomes,
``kv``, ``lock``; channels ``ch``), so several deployments can share one Redis. Redis
Cluster is not supported (a rate-limit decision touches several keys at once).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from interlock.state import defaults, gcra, redis_scripts
from interlock.state.interface import OUTCOME_BUCKETS, Decision, Limit, OutcomeStats
from interlock.state.redis_link import RedisLink
from interlock.state.redis_pubsub import RedisPubSubHub


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


class RedisRateLimits:
    """``RateLimits`` as one ``ADMIT`` / ``ADJUST`` script call per decision."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._prefix = link.prefix + "rl:"
        self._admit = link.client.register_script(redis_scripts.ADMIT)
        self._adjust = link.client.register_script(redis_scripts.ADJUST)

    def _arguments(self, scopes: Sequence[Limit]) -> tuple[list[str], list[float]]:
        keys = [self._prefix + scope.key for scope in scopes]
        args: list[float] = []
        for scope in scopes:
            args += (scope.limit, scope.window, scope.cost)
        return keys, args

    async def admit(self, scopes: Sequence[Limit]) -> Decision:
        if not scopes:
            return Decision(True, ())
        keys, args = self._arguments(scopes)
        reply: list[Any] = await self._link.call(self._admit(keys=keys, args=args))
        admitted = reply[0] == 1
        return Decision(
            admitted,
            tuple(
                gcra.status(scope, float(level), admitted)
                for scope, level in zip(scopes, reply[1:], strict=True)
            ),
        )

    async def adjust(self, changes: Sequence[Limit]) -> None:
        if changes:
            keys, args = self._arguments(changes)
            await self._link.call(self._adjust(keys=keys, args=args))


class RedisSlots:
    """``Slots`` as sorted sets of holder -> lease end (server milliseconds)."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._prefix = link.prefix + "slot:"
        client = link.client
        self._acquire = client.register_script(redis_scripts.SLOT_ACQUIRE)
        self._renew = client.register_script(redis_scripts.SLOT_RENEW)
        self._release = client.register_script(redis_scripts.SLOT_RELEASE)
        self._counts = client.register_script(redis_scripts.SLOT_COUNTS)
        self._prune = client.register_script(redis_scripts.SLOT_PRUNE)

    async def acquire(self, name: str, holder: str, *, limit: int, lease: float) -> bool:
        reply: int = await self._link.call(
            self._acquire(keys=[self._prefix + name], args=[holder, limit, _ms(lease)])
        )
        return reply == 1

    async def renew(self, name: str, holder: str, *, lease: float) -> bool:
        reply: int = await self._link.call(
            self._renew(keys=[self._prefix + name], args=[holder, _ms(lease)])
        )
        return reply == 1

    async def release(self, name: str, holder: str) -> bool:
        reply: int = await self._link.call(self._release(keys=[self._prefix + name], args=[holder]))
        return reply == 1

    async def purge(self) -> int:
        """Remove the holders whose lease ended from every pool (Redis expires a pool only
        when all its holders are gone); how many were removed."""
        removed = 0
        cursor = 0
        while True:
            cursor, keys = await self._link.call(
                self._link.client.scan(cursor, match=self._prefix + "*", count=500)
            )
            for key in keys:
                removed += int(await self._link.call(self._prune(keys=[key])))
            if cursor == 0:
                return removed

    async def counts(self, names: Sequence[str]) -> list[int]:
        if not names:
            return []
        reply: list[int] = await self._link.call(
            self._counts(keys=[self._prefix + name for name in names])
        )
        return [int(count) for count in reply]


class RedisOutcomes:
    """``Outcomes`` as one hash of per-bucket counters per key."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._prefix = link.prefix + "out:"
        self._script = link.client.register_script(redis_scripts.OUTCOMES)

    async def _run(self, key: str, window: float, outcome: str) -> OutcomeStats:
        reply: list[int] = await self._link.call(
            self._script(keys=[self._prefix + key], args=[window, OUTCOME_BUCKETS, outcome])
        )
        return OutcomeStats(int(reply[0]), int(reply[1]))

    async def record(self, key: str, *, ok: bool, window: float) -> OutcomeStats:
        return await self._run(key, window, "s" if ok else "f")

    async def read(self, key: str, *, window: float) -> OutcomeStats:
        return await self._run(key, window, "")

    async def clear(self, key: str) -> None:
        await self._link.call(self._link.client.delete(self._prefix + key))


class RedisKeyValue:
    """``KeyValue`` as plain strings with PX expiry. Total memory is Redis's to bound
    (``maxmemory`` with an eviction policy such as ``volatile-lru``)."""

    def __init__(self, link: RedisLink, *, max_item_bytes: int) -> None:
        self._link = link
        self._prefix = link.prefix + "kv:"
        self._max_item_bytes = max_item_bytes

    @property
    def max_item_bytes(self) -> int:
        return self._max_item_bytes

    async def get(self, key: str) -> bytes | None:
        value = await self._link.call(self._link.client.get(self._prefix + key))
        return cast(bytes | None, value)  # str only with decode_responses, never set here

    async def set(self, key: str, value: bytes, *, ttl: float) -> bool:
        if len(value) > self._max_item_bytes:
            return False
        await self._link.call(self._link.client.set(self._prefix + key, value, px=_ms(ttl)))
        return True

    async def set_if_absent(self, key: str, value: bytes, *, ttl: float) -> bool:
        if len(value) > self._max_item_bytes:
            return False
        stored = await self._link.call(
            self._link.client.set(self._prefix + key, value, px=_ms(ttl), nx=True)
        )
        return bool(stored)

    async def delete(self, key: str) -> bool:
        removed: int = await self._link.call(self._link.client.delete(self._prefix + key))
        return removed > 0


class RedisLocks:
    """``Locks`` as strings holding the owner, with PX expiry; owner checks in Lua."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._prefix = link.prefix + "lock:"
        client = link.client
        self._acquire = client.register_script(redis_scripts.LOCK_ACQUIRE)
        self._renew = client.register_script(redis_scripts.LOCK_RENEW)
        self._release = client.register_script(redis_scripts.LOCK_RELEASE)

    async def acquire(self, name: str, owner: str, *, lease: float) -> bool:
        reply: int = await self._link.call(
            self._acquire(keys=[self._prefix + name], args=[owner, _ms(lease)])
        )
        return reply == 1

    async def renew(self, name: str, owner: str, *, lease: float) -> bool:
        reply: int = await self._link.call(
            self._renew(keys=[self._prefix + name], args=[owner, _ms(lease)])
        )
        return reply == 1

    async def release(self, name: str, owner: str) -> bool:
        reply: int = await self._link.call(self._release(keys=[self._prefix + name], args=[owner]))
        return reply == 1


class RedisState:
    """``SharedState`` on one Redis server (``REDIS_URL``); see ``RedisLink`` for the
    connection settings."""

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = defaults.KEY_PREFIX,
        timeout: float = defaults.TIMEOUT,
        pool_timeout: float = defaults.POOL_TIMEOUT,
        max_connections: int = defaults.MAX_CONNECTIONS,
        retry_interval: float = defaults.RETRY_INTERVAL,
        max_item_bytes: int = defaults.MAX_ITEM_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` times only the pause after an outage; Redis's own clock (TIME) runs
        every window, lease and TTL, so instances with skewed clocks agree."""
        self._link = RedisLink(
            url,
            prefix=prefix,
            timeout=timeout,
            pool_timeout=pool_timeout,
            max_connections=max_connections,
            retry_interval=retry_interval,
            clock=clock,
        )
        self.limits = RedisRateLimits(self._link)
        self.slots = RedisSlots(self._link)
        self.outcomes = RedisOutcomes(self._link)
        self.kv = RedisKeyValue(self._link, max_item_bytes=max_item_bytes)
        self.locks = RedisLocks(self._link)
        self.pubsub = RedisPubSubHub(self._link)

    @property
    def healthy(self) -> bool:
        return self._link.healthy

    @property
    def last_error(self) -> str | None:
        return self._link.last_error

    async def ping(self) -> None:
        await self._link.call(self._link.client.ping(), probe=True)

    async def sweep(self) -> dict[str, int]:
        """Redis expires every key by its TTL on its own; what is left to do is dropping dead
        holders from slot pools that live holders keep alive."""
        return {"slot_holders": await self.slots.purge()}

    async def aclose(self) -> None:
        await self.pubsub.close_all()
        await self._link.aclose()
