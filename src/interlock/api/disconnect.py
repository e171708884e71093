"""Cancelling work whose caller has gone away.

Neither kind of answer can learn from ``send`` that its client left (uvicorn drops what is
sent after a disconnect), so both watch ``receive`` for ``http.disconnect`` once the request
body has been read. A non-streaming request only sends at the end: ``unless_disconnected``
cancels its work, which closes the upstream call; it starts watching only once the work has
taken ``WATCH_AFTER_S``, so that quick answers (cache hits, fast models) pay a timer instead
of a task. A stream is watched by one
``ClientWatch`` from the wait for its first token to its last chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import anyio
from starlette.types import Receive

T = TypeVar("T")

WATCH_AFTER_S = 0.25
"""How long a non-streaming request runs before its client is watched: far below what a
disconnect costs (a model generating for seconds for nobody), and a watch that starts late
still sees a client that already left, since ``receive`` then says so at once. Not much
lower: under load a quick answer's time includes its wait for the event loop (40 ms at 64
requests in flight and 1,500 a second), and a watch task per request costs about a tenth
of the gateway's CPU."""


class ClientGone(Exception):
    """The caller disconnected before the answer was ready."""


async def _watch(receive: Receive, task: asyncio.Task[object]) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


async def unless_disconnected(work: Awaitable[T], receive: Receive) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise ``ClientGone``."""
    current = asyncio.current_task()
    assert current is not None
    loop = current.get_loop()
    watchers: list[asyncio.Task[None]] = []
    timer = loop.call_later(
        WATCH_AFTER_S, lambda: watchers.append(loop.create_task(_watch(receive, current)))
    )
    try:
        return await work
    except asyncio.CancelledError:
        if watchers and watchers[0].done() and not watchers[0].cancelled():
            current.uncancel()
            raise ClientGone from None
        raise
    finally:
        timer.cancel()
        if watchers:
            watchers[0].cancel()


class ClientWatch:
    """Watches ``receive`` for the client leaving, with one task for the whole stream.

    Start it once the request body has been read (it takes every later message). Until the
    first token, ``until_committed`` cancels the work as ``unless_disconnected`` does. While
    the answer streams, the client leaving cancels the ``streaming`` scope: an anyio scope,
    so the shielded steps that end the answer (closing upstream, accounting, storing a
    finished conversation) run to their end. ``stop`` it before the last message of the
    response, since the server reports a completed response as a disconnect too.
    """

    __slots__ = ("_scope", "_task", "_watcher", "gone")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self._task: asyncio.Task[object] | None = None  # cancelled until the first token
        self._scope: anyio.CancelScope | None = None  # cancelled while streaming
        self._watcher = asyncio.ensure_future(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        if self._scope is not None:
            self._scope.cancel()
        elif self._task is not None:
            self._task.cancel()

    async def until_committed(self, work: Awaitable[T]) -> T:
        """Await ``work``; if the client leaves first, cancel it and raise ``ClientGone``.
        The watch stops if ``work`` fails: there is then no stream to watch."""
        task = self._task = asyncio.current_task()
        assert task is not None
        try:
            return await work
        except asyncio.CancelledError:
            self.stop()
            if self.gone:
                task.uncancel()
                raise ClientGone from None
            raise
        except BaseException:
            self.stop()
            raise
        finally:
            self._task = None

    @contextmanager
    def streaming(self) -> Iterator[anyio.CancelScope]:
        """A scope that the client leaving cancels (at once, if it has already left)."""
        with anyio.CancelScope() as scope:
            self._scope = scope
            if self.gone:
                scope.cancel()
            try:
                yield scope
            finally:
                self._scope = None

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        self._watcher.cancel()
