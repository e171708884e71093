"""Cancelling work whose caller has gone away.

Streaming responses notice a disconnect when a write fails or Starlette's listener fires;
a non-streaming request only sends at the end, so it watches ``receive`` for
``http.disconnect`` while it works and cancels itself, which closes the upstream call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


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
    watcher = asyncio.ensure_future(_watch(receive, current))
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            current.uncancel()
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()
