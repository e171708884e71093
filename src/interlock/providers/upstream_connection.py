"""``UpstreamConnection``: one socket to a provider, a request written whole and its response
parsed by ``httptools`` (llhttp) as the bytes arrive, into a buffer the caller reads.

``upstream_client`` pools these per origin and hands out their responses.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Final, cast

import httptools

from interlock.providers.upstream_errors import (
    BodyIncomplete,
    InvalidResponse,
    ReadTimeout,
    ServerDisconnected,
)

_READ_PAUSE_BYTES: Final = 256 * 1024
"""Reading from the socket pauses while this much of the body waits for the caller."""
_FRAMING_HEADERS: Final = frozenset(
    (b"content-type", b"content-length", b"transfer-encoding", b"content-encoding")
)
"""The response headers read as they arrive: how the body is framed and encoded, its type."""


class UpstreamConnection(asyncio.Protocol):
    """One socket: a request written whole, its response parsed as bytes arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._body: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._decoder: zlib._Decompress | None = None
        self._until_close = False
        self._keep_alive = False
        self._interim = False
        self._head_done = False
        self._complete = False
        self._error: BaseException | None = None
        self._lost = False
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._framing: list[tuple[bytes, bytes]] = []  # (lower-cased name, value)
        self.content_type = ""
        self.content_length: int | None = None
        self.idle_since = 0.0

    # ---- used by the client ------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        if self._lost or self._error is not None:
            return False
        if self._parser is None:  # never used
            return True
        return self._complete and not self._body and self._keep_alive

    def send(self, head: bytes, body: bytes) -> None:
        if self._lost or self._transport is None:
            raise ServerDisconnected("the connection closed while idle")
        self._parser = httptools.HttpResponseParser(self)
        self._body = []
        self._buffered = 0
        self._decoder = None
        self._until_close = self._keep_alive = self._interim = False
        self._head_done = self._complete = False
        self.status = 0
        self.raw_headers = []  # a new list: the last response may still read the old one
        self._framing = []
        self.content_type = ""
        self.content_length = None
        self._transport.write(head + body)

    async def wait_for_head(self, read_timeout: float | None) -> None:
        while not self._head_done:
            if self._error is not None:
                raise self._error
            await self._wait(read_timeout)

    def finished(self) -> bool:
        return self._complete and not self._body

    async def read_chunk(self, read_timeout: float | None) -> bytes:
        while not self._body:
            if self._complete:
                return self._flush()
            if self._error is not None:
                raise self._error
            await self._wait(read_timeout)
        data = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        if self._decoder is None:
            return data
        try:
            return self._decoder.decompress(data)
        except zlib.error:
            error = InvalidResponse("the compressed body is corrupt")
            self._fail(error)
            raise error from None

    def _flush(self) -> bytes:
        """At the end of the body: what a decompressor still holds, once; then ``b""``."""
        decoder, self._decoder = self._decoder, None
        return decoder.flush() if decoder is not None else b""

    def abort(self) -> None:
        self._lost = True
        if self._transport is not None:
            self._transport.abort()

    async def _wait(self, read_timeout: float | None) -> None:
        # A timer on the future, not ``asyncio.timeout``: this runs for every chunk of a
        # stream, and a bare timer costs a fraction of a timeout context.
        waiter = self._loop.create_future()
        self._waiter = waiter
        if read_timeout is None:
            await waiter
            return
        timer = self._loop.call_later(read_timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self.abort()
        self._wake()

    # ---- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not ``asyncio.Transport`` subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self._complete:
            self._fail(InvalidResponse("data arrived with no request in flight"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._fail(InvalidResponse("the response is not valid HTTP/1.1"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost settles the response

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if not self._complete and self._error is None:
            if not self._head_done:
                self._error = ServerDisconnected("the connection closed before a response")
            elif self._until_close and exc is None:
                self._complete = True  # a body delimited by the end of the connection
            else:
                self._error = BodyIncomplete("the connection closed inside the body")
        self._wake()

    # ---- httptools callbacks -----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))
        key = name.lower()
        if key in _FRAMING_HEADERS:  # read now; the rest only if asked (``headers``)
            self._framing.append((key, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status < 200:  # an interim response (103 Early Hints…): the real one follows
            self._interim = True
            self.raw_headers = []
            self._framing = []
            return
        self.status = status
        # Known only here: llhttp's answer changes once the message is complete.
        self._keep_alive = self._parser.should_keep_alive()
        length = transfer = None
        encoding = "identity"
        for key, value in self._framing:
            if key == b"content-type":
                self.content_type = value.partition(b";")[0].strip().lower().decode("latin-1")
            elif key == b"content-length":
                length = value
            elif key == b"transfer-encoding":
                transfer = value if transfer is None else transfer + b", " + value
            else:  # content-encoding
                encoding = value.decode("latin-1").strip().lower()
        if length is not None and length.isdigit():
            self.content_length = int(length)
        self._until_close = length is None and (
            transfer is None or b"chunked" not in transfer.lower()
        )
        if encoding == "gzip":
            self._decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        elif encoding != "identity":
            self._fail(InvalidResponse(f"unsupported content encoding {encoding!r}"))
            return
        self._head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _READ_PAUSE_BYTES and not self._paused and self._transport:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._complete = True
        self._wake()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout("no data within the read timeout"))
