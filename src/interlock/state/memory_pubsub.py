"""In-process publish/subscribe: delivery to the subscribers of this process only."""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType
from typing import Self

# A subscriber further behind than this loses its oldest messages (delivery is at most
# once, see ``Subscription``), so a stuck consumer cannot grow memory without bound.
BACKLOG = 1024


class MemorySubscription:
    """Messages for one subscriber, queued in publish order."""

    def __init__(self, hub: MemoryPubSub, channels: tuple[str, ...]) -> None:
        self._hub = hub
        self.channels = channels
        self._queue: deque[bytes] = deque(maxlen=BACKLOG)
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def deliver(self, message: bytes) -> None:
        self._queue.append(message)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        queue = self._queue
        while not queue:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return queue.popleft()

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.clear()
            self._hub.unsubscribe(self)
            self._wake()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class MemoryPubSub:
    """``PubSub`` within one process."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[MemorySubscription]] = {}

    async def publish(self, channel: str, message: bytes) -> int:
        subscribers = self._subscribers.get(channel)
        if not subscribers:
            return 0
        for subscription in subscribers:
            subscription.deliver(message)
        return len(subscribers)

    async def subscribe(self, *channels: str) -> MemorySubscription:
        if not channels:
            raise ValueError("subscribe to at least one channel")
        subscription = MemorySubscription(self, channels)
        for channel in channels:
            self._subscribers.setdefault(channel, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: MemorySubscription) -> None:
        for channel in subscription.channels:
            subscribers = self._subscribers.get(channel)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscribers[channel]

    def close_all(self) -> None:
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                subscription.close()
