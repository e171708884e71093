"""Streaming responses that always end their answer, whatever way the client leaves.

Starlette starts a streaming body only once the headers are out; a client that disconnects
in between cancels the response before the body iterator ever runs, so the iterator's own
``finally`` never runs either. ``EndingStreamingResponse`` calls the answer's idempotent
``end`` after the response in every case: the upstream call is closed and the request
accounted for exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class Ending(Protocol):
    """What ends once, however often it is asked to (``interlock.chat.pipeline.Reply``)."""

    async def end(self) -> None: ...


class EndingStreamingResponse(StreamingResponse):
    def __init__(self, content: AsyncIterator[bytes], ending: Ending, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._ending = ending

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._ending.end()
