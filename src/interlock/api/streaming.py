"""Streaming responses that always end their chat stream, whatever way the client leaves.

Starlette starts a streaming body only once the headers are out; a client that disconnects
in between cancels the response before the body iterator ever runs, so the iterator's own
``finally`` never runs either. ``StreamEnding`` makes ending idempotent and
``EndingStreamingResponse`` calls it after the response in every case: the upstream call is
closed and the request accounted for exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from interlock.chat.service import ChatStream

StreamEnd = Callable[[str | None], None]
"""Called once when a stream ends, with the error code that ended it (None if none)."""


class StreamEnding:
    """Ends one chat stream once: closes the upstream call, then reports how it ended."""

    __slots__ = ("_done", "_on_end", "_stream")

    def __init__(self, stream: ChatStream, on_end: StreamEnd) -> None:
        self._stream = stream
        self._on_end = on_end
        self._done = False

    async def end(self, failure: str | None) -> None:
        if self._done:
            return
        self._done = True
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()
        self._on_end(failure)


class EndingStreamingResponse(StreamingResponse):
    def __init__(self, content: AsyncIterator[bytes], ending: StreamEnding, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._ending = ending

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._ending.end(None)
