"""Publish/subscribe over Redis channels ``<prefix>ch:<channel>``.

Delivery is at most once (see ``interface.Subscription``). Each subscription holds one
pooled connection for its lifetime and reads it directly when iterated (no background
task); after a lost connection, reads back off and reconnect, and redis-py subscribes the
connection again as it connects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from redis.asyncio.client import PubSub

from interlock.state.redis_link import FAILURES, RedisLink

# A read waits at most this long, so that ``aclose`` and reconnection are noticed.
_POLL = 1.0
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 2.0


class RedisSubscription:
    """One Redis subscriber connection. Reads poll so ``aclose`` is noticed; after a lost
    connection, reads back off and reconnect (redis-py resubscribes on connect)."""

    def __init__(self, link: RedisLink, hub: RedisPubSubHub, pubsub: PubSub) -> None:
        self._link = link
        self._hub = hub
        self._pubsub = pubsub
        self._pending: deque[bytes] = deque()
        self._closed = False

    async def confirm(self, channels: int) -> None:
        """Wait for the server to confirm every channel, so that anything published after
        ``subscribe`` returns is delivered; keep messages that arrive meanwhile."""
        confirmed = 0
        while confirmed < channels:
            message = await self._pubsub.get_message(timeout=self._link.timeout)
            if message is None:
                raise TimeoutError("no subscription confirmation from Redis")
            if message["type"] == "subscribe":
                confirmed += 1
            elif message["type"] == "message":
                self._pending.append(message["data"])

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        backoff = _BACKOFF_FIRST
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._closed:
                raise StopAsyncIteration
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_POLL
                )
            except Exception as exc:
                if self._closed:  # aclose() dropped the connection under this read
                    raise StopAsyncIteration from None
                if not isinstance(exc, FAILURES):
                    raise
                self._link.unavailable(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_FIRST
            if message is not None and message["type"] == "message":
                data: bytes = message["data"]
                return data

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pending.clear()
        self._hub.forget(self)
        aclose: Callable[[], Awaitable[None]] = self._pubsub.aclose  # untyped in redis-py
        with contextlib.suppress(*FAILURES):  # the connection is being dropped anyway
            await aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class RedisPubSubHub:
    """``PubSub`` over Redis channels ``<prefix>ch:<channel>``. Each subscription holds one
    pooled connection for its lifetime."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._prefix = link.prefix + "ch:"
        self._subscriptions: set[RedisSubscription] = set()

    async def publish(self, channel: str, message: bytes) -> int:
        receivers: int = await self._link.call(
            self._link.client.publish(self._prefix + channel, message)
        )
        return receivers

    async def subscribe(self, *channels: str) -> RedisSubscription:
        if not channels:
            raise ValueError("subscribe to at least one channel")
        pubsub = self._link.client.pubsub()
        subscription = RedisSubscription(self._link, self, pubsub)
        try:
            await self._link.call(pubsub.subscribe(*(self._prefix + c for c in channels)))
            await self._link.call(subscription.confirm(len(channels)))
        except BaseException:
            await subscription.aclose()
            raise
        self._subscriptions.add(subscription)
        return subscription

    def forget(self, subscription: RedisSubscription) -> None:
        self._subscriptions.discard(subscription)

    async def close_all(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.aclose()
