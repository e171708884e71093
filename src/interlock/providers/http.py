"""Upstream HTTP for the provider adapters: one streamed POST and one whole POST.

The adapters hold an ``UpstreamClient`` (the keep-alive connections to their provider's
origin; the app owns it, adapters never create or close one). ``open_event_stream`` sends
one request and hands back its reply as parsed SSE events; ``post_for_json`` sends one and
returns its whole JSON reply (for non-streaming callers: one read and one decode instead of
a parse per chunk). Every failure is already translated by ``classify``: a non-2xx status,
a reply of the wrong kind, and network errors on connect or on any later read.

``upstream_headers`` holds the headers the request path adds to the provider calls made in
the current context: the gateway's request id (``x-request-id``) and, when tracing is on,
the attempt's ``traceparent``. The chat pipeline sets it; it costs one look-up per call.

``create_session`` makes the aiohttp session of the occasional calls that are not chat
(health probes, JWKS fetches).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar

import aiohttp

from interlock.errors import UpstreamProtocolError
from interlock.providers.base import Timeouts
from interlock.providers.classify import (
    TRANSPORT_ERRORS,
    classify_error_body,
    classify_status,
    classify_transport,
)
from interlock.providers.sse import DEFAULT_MAX_BYTES, SSEEvent, SSEParser
from interlock.providers.upstream_client import UpstreamClient, UpstreamResponse

ERROR_BODY_LIMIT = 64 * 1024
"""How much of an error reply is read to classify it."""

upstream_headers: ContextVar[Mapping[str, str] | None] = ContextVar(
    "interlock_upstream_headers", default=None
)
"""Headers added to every provider call made in this context (see the module docstring)."""

_DRAIN_SECONDS = 0.5
_DRAIN_BYTES = 64 * 1024


def create_session(
    *, max_connections: int = 1024, keepalive_timeout: float = 60.0
) -> aiohttp.ClientSession:
    """One pooled keep-alive aiohttp session, for calls other than chat. Timeouts are set per
    request, so the session has none of its own; proxies and ``.netrc`` are not read from
    the environment (settings are the only reader of the environment)."""
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        keepalive_timeout=keepalive_timeout,
        ttl_dns_cache=300,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
        raise_for_status=False,
        headers={"User-Agent": "interlock"},
    )


class EventStream:
    """The SSE events of one reply, read chunk by chunk as the consumer asks for them."""

    __slots__ = ("_parser", "_pending", "_response")

    def __init__(self, response: UpstreamResponse, parser: SSEParser) -> None:
        self._response = response
        self._parser = parser
        self._pending: list[SSEEvent] = []  # reversed, so that pop() is the next one

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SSEEvent:
        if self._pending:
            return self._pending.pop()
        while True:
            try:
                chunk = await self._response.read_chunk()
            except TRANSPORT_ERRORS as exc:
                raise classify_transport(exc) from None
            if not chunk:
                raise StopAsyncIteration
            events = self._parser.feed(chunk)
            if events:
                if len(events) > 1:
                    events.reverse()
                    self._pending = events
                    return events.pop()
                return events[0]

    async def drain(self) -> None:
        """After the last event, read the little that is left (the end of the chunked body)
        so that the connection can go back to the pool instead of being closed. Bounded in
        time and size: a server that keeps talking loses its connection instead."""
        response = self._response
        read = 0
        try:
            async with asyncio.timeout(_DRAIN_SECONDS):
                while not response.at_eof() and read <= _DRAIN_BYTES:
                    chunk = await response.read_chunk()
                    if not chunk:
                        return
                    read += len(chunk)
        except TRANSPORT_ERRORS:
            pass


@asynccontextmanager
async def open_event_stream(
    client: UpstreamClient,
    target: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    secret: str | None = None,
    max_event_bytes: int = DEFAULT_MAX_BYTES,
) -> AsyncIterator[EventStream]:
    """POST ``body`` to ``target`` (a path on the client's origin) and yield its event
    stream. ``connect`` bounds getting a connection, ``idle`` the wait for the response
    head and every later read.

    Raises ``UpstreamError``s only. Leaving the block releases the response: normally the
    connection returns to the pool; on an error, ``aclose`` or cancellation the connection
    is closed at once, so the upstream sees the disconnect and stops generating.
    ``secret`` is masked out of any provider message used in an error.
    """
    response = await _post(client, target, body, headers, timeouts.connect, timeouts.idle)
    try:
        await _check_status(response, secret)
        if response.content_type == "application/json":
            # A server that ignored "stream": true, or reported an error with a 200.
            reply = await _read_bounded(response)
            raise classify_error_body(reply, secret=secret) or UpstreamProtocolError(
                "The model provider replied with JSON instead of an event stream."
            )
        yield EventStream(response, SSEParser(max_event_bytes))
    except BaseException:
        response.close()
        raise
    else:
        response.release()


WHOLE_REPLY_LIMIT = 32 * 1024 * 1024
"""The largest whole JSON reply taken from a provider (a long answer is a few hundred KB)."""


async def post_for_json(
    client: UpstreamClient,
    target: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    timeouts: Timeouts,
    secret: str | None = None,
    limit: int = WHOLE_REPLY_LIMIT,
) -> bytes:
    """POST ``body`` to ``target`` (a path on the client's origin) and return its whole JSON
    reply. A whole reply arrives only once the model has finished, so only ``connect``
    applies here (``idle`` is a streaming notion); the pipeline bounds the wait by
    ``total``.

    Raises ``UpstreamError``s only: for a non-2xx status, a reply that is not JSON or is
    larger than ``limit``, and transport errors. Cancellation closes the connection, so the
    upstream sees the disconnect and stops generating.
    """
    response = await _post(client, target, body, headers, timeouts.connect, None)
    try:
        await _check_status(response, secret)
        if response.content_type != "application/json":
            raise UpstreamProtocolError(
                "The model provider did not reply with JSON to a non-streaming request."
            )
        length = response.content_length
        if length is not None and length > limit:
            raise UpstreamProtocolError("The model provider's reply is too large.")
        try:
            reply = await _read_all(response, limit)
        except TRANSPORT_ERRORS as exc:
            raise classify_transport(exc) from None
    except BaseException:
        response.close()
        raise
    response.release()
    return reply


async def _post(
    client: UpstreamClient,
    target: str,
    body: bytes,
    headers: Mapping[str, str],
    connect_timeout: float | None,
    read_timeout: float | None,
) -> UpstreamResponse:
    """Send one POST (with the request's own upstream headers: its id, its trace context)."""
    extra = upstream_headers.get()
    merged = {**headers, **extra} if extra else dict(headers)
    try:
        return await client.post(
            target,
            body,
            merged,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
    except TRANSPORT_ERRORS as exc:
        raise classify_transport(exc) from None


async def _check_status(response: UpstreamResponse, secret: str | None) -> None:
    """Raise the classified error of a non-2xx reply (``secret`` masked out of it)."""
    if not 200 <= response.status < 300:
        error_body = await _read_bounded(response)
        raise classify_status(response.status, response.headers, error_body, secret=secret)


async def _read_all(response: UpstreamResponse, limit: int) -> bytes:
    """The whole reply, up to ``limit`` bytes."""
    parts: list[bytes] = []
    size = 0
    while chunk := await response.read_chunk():
        size += len(chunk)
        if size > limit:
            raise UpstreamProtocolError("The model provider's reply is too large.")
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)  # no copy for one chunk


async def _read_bounded(response: UpstreamResponse) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        while size < ERROR_BODY_LIMIT:
            chunk = await response.read_chunk()
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
    except TRANSPORT_ERRORS:
        pass  # what arrived is enough to classify the error by status
    return b"".join(parts)[:ERROR_BODY_LIMIT]
