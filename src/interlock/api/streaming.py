"""Streamed answers sent straight from the task that renders them.

Starlette's ``StreamingResponse`` runs each stream in an anyio task group with a second task
that listens for the disconnect, and cancels (and describes) that group at the end of every
stream: a few percent of a stream's CPU, and a hop through the event loop before the first
byte. ``StreamReply`` sends each chunk from the handler's own task; the request's
``ClientWatch``, already watching since the body was read, cancels it if the client leaves.

However it ends (finished, cut by a failure, or abandoned by the client, even before the
first chunk), ``StreamReply`` calls the answer's idempotent ``end`` once the body is out:
the upstream call is closed and the request accounted for exactly once, and a finished
answer reaches its client before that work is done. The bodies leave it to ``StreamReply``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Protocol

from starlette.types import Message, Receive, Scope, Send

from interlock.api.batching import relay
from interlock.api.disconnect import ClientWatch
from interlock.api.replies import encode_headers

SSE = b"text/event-stream; charset=utf-8"
PLAIN_TEXT = b"text/plain; charset=utf-8"


class Ending(Protocol):
    """What ends once, however often it is asked to (``interlock.chat.pipeline.Reply``)."""

    async def end(self) -> None: ...


class StreamCut(Exception):
    """Raised by a body to end its response without the last chunk: the server then closes
    the connection and the client sees an incomplete response (for protocols that have no
    error message; the failure itself is logged where it happened)."""


class StreamReply:
    """A streamed body: ``http.response.start``, then the chunks, those in hand together
    (``interlock.api.batching``), the last of them with the end of the body.

    ``opening``: how many chunks the body gives before its first content (the protocol's
    opening): the first write goes out with the first content, without waiting for what
    is in hand behind it.
    """

    __slots__ = ("_body", "_ending", "_first", "_start", "_watch")

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        ending: Ending,
        watch: ClientWatch,
        content_type: bytes,
        headers: Mapping[str, str],
        *,
        opening: int,
    ) -> None:
        raw = encode_headers(headers)
        raw.append((b"content-type", content_type))
        self._start: Message = {"type": "http.response.start", "status": 200, "headers": raw}
        self._body = body
        self._ending = ending
        self._watch = watch
        self._first = opening + 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, watch = self._body, self._watch

        async def write(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        try:
            if watch.gone:  # before the body starts: it is not started at all
                return
            with watch.streaming() as streaming:
                await send(self._start)
                last = await relay(body, write, first=self._first)
            watch.stop()  # the server reports the completed response as a disconnect
            if not streaming.cancel_called:
                await send({"type": "http.response.body", "body": last, "more_body": False})
        except StreamCut:
            return
        finally:
            watch.stop()
            await body.aclose()
            await self._ending.end()
