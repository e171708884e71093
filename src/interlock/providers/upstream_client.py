"""Keep-alive HTTP/1.1 connections to one provider origin, for the chat calls.

Why not aiohttp here (it still serves the health probes and JWKS fetches): a provider call
is one POST with a small body and either one JSON reply or an event stream, and aiohttp's
general machinery (URL objects, multidicts, payload registry, tracing hooks, cookie jar,
timer contexts) cost the gateway 160 to 280 µs of CPU per call, the largest single share of a
request. This client does only what a provider call needs: a pool of connections per origin
(most recently used first, idle ones dropped after ``keepalive_timeout``, at most
``max_connections`` open), one prebuilt request head, the response parsed by ``httptools``
(llhttp, Node's parser) straight into a buffer the caller reads, ~40 µs per call.

What it covers: ``http`` and ``https`` (the system's trust store, SNI, hostname checks),
``Content-Length``, chunked and read-until-close bodies, ``gzip`` / ``deflate`` replies,
backpressure (reading pauses while the caller lags behind), a connect timeout over the wait
for a pool slot plus the TCP and TLS handshakes, and a read timeout on every wait for data.
Failures raise the ``UpstreamTransportError`` subclasses of ``upstream_errors`` (or
``OSError`` from the socket), which ``classify`` maps to the gateway's errors. Each socket
is an ``UpstreamConnection`` (``upstream_connection``).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from interlock.providers.upstream_connection import UpstreamConnection
from interlock.providers.upstream_errors import (
    BodyIncomplete,
    ConnectTimeout,
    InvalidRequestHeader,
    InvalidResponse,
    ReadTimeout,
    ServerDisconnected,
    UpstreamTransportError,
)

__all__ = [
    "BodyIncomplete",
    "ConnectTimeout",
    "InvalidRequestHeader",
    "InvalidResponse",
    "ReadTimeout",
    "ServerDisconnected",
    "UpstreamClient",
    "UpstreamClients",
    "UpstreamResponse",
    "UpstreamTransportError",
    "split_url",
    "target_on",
]


@functools.cache
def _system_trust() -> ssl.SSLContext:
    """The system's trust store, loaded once (it reads certificate files) for every origin."""
    return ssl.create_default_context()


def split_url(url: str) -> tuple[str, str]:
    """``url``'s origin (``scheme://host[:port]``) and its request target (path and query).

    Computed once per deployment, so that a request costs no URL parsing."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    host = parts.netloc.rpartition("@")[2]
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return f"{parts.scheme}://{host}", target


class UpstreamClient:
    """The connections to one origin. Create it inside the event loop that uses it; close it
    with ``close()`` (or ``async with``)."""

    def __init__(
        self,
        origin: str,
        *,
        max_connections: int = 1024,
        keepalive_timeout: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "interlock",
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        secure = parts.scheme == "https"
        self.origin = origin
        self._host = parts.hostname
        self._port = parts.port or (443 if secure else 80)
        self._ssl = (ssl_context or _system_trust()) if secure else None
        self._head_prefix = (
            f"\r\nHost: {parts.netloc.rpartition('@')[2]}\r\nUser-Agent: {user_agent}\r\n"
        ).encode("latin-1")
        self._max_connections = max_connections
        self._keepalive_timeout = keepalive_timeout
        self._idle: deque[UpstreamConnection] = deque()  # oldest on the left, newest on the right
        self._open = 0  # open or opening
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def post(
        self,
        target: str,
        body: bytes,
        headers: dict[str, str],
        *,
        connect_timeout: float | None,
        read_timeout: float | None,
    ) -> UpstreamResponse:
        """Send ``POST target`` and return once the response head has arrived.

        ``read_timeout`` bounds that wait and every later wait for body data (``None``: no
        bound). Header values must not contain line breaks (``ValueError``)."""
        head = self._request_head(target, len(body), headers)
        connection = await self._acquire(connect_timeout)
        try:
            connection.send(head, body)
            await connection.wait_for_head(read_timeout)
        except BaseException:
            self._discard(connection)
            raise
        return UpstreamResponse(self, connection, read_timeout)

    def _request_head(self, target: str, length: int, headers: dict[str, str]) -> bytes:
        fields = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        # Each field adds one CR and one LF: any more is a line break inside a name or value.
        if fields.count("\r") != len(headers) or fields.count("\n") != len(headers):
            name = next(n for n, v in headers.items() if "\r" in n + v or "\n" in n + v)
            raise InvalidRequestHeader(f"line break in the {name!r} header")
        try:
            encoded = fields.encode("latin-1")
        except UnicodeEncodeError:  # a key or header value pasted with a stray character
            raise InvalidRequestHeader("a header value is not Latin-1 text") from None
        return b"POST %s HTTP/1.1%s%sContent-Length: %d\r\n\r\n" % (
            target.encode("latin-1"),
            self._head_prefix,
            encoded,
            length,
        )

    async def close(self) -> None:
        """Close every connection; later requests fail."""
        self._closed = True
        while self._idle:
            self._idle.pop().abort()
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_exception(ServerDisconnected("the client is closed"))
        self._slot_waiters.clear()

    # ---- the pool ----------------------------------------------------------------------------

    async def _acquire(self, connect_timeout: float | None) -> UpstreamConnection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable and now - connection.idle_since < self._keepalive_timeout:
                return connection
            self._discard(connection)
        if self._closed:
            raise ServerDisconnected("the client is closed")
        try:
            async with asyncio.timeout(connect_timeout):
                while self._open >= self._max_connections:
                    await self._wait_for_slot()
                    while self._idle:
                        connection = self._idle.pop()
                        if connection.reusable:
                            return connection
                        self._discard(connection)
                self._open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self._connection_gone()
                    raise
        except TimeoutError:
            raise ConnectTimeout("no connection within the connect timeout") from None

    async def _wait_for_slot(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake_slot_waiter()  # woken, then cancelled: the turn goes to the next
            raise
        finally:
            if waiter in self._slot_waiters:
                self._slot_waiters.remove(waiter)

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            lambda: UpstreamConnection(loop),
            self._host,
            self._port,
            ssl=self._ssl,
            server_hostname=self._host if self._ssl else None,
        )
        return connection

    def _release(self, connection: UpstreamConnection) -> None:
        """Back to the pool if the response was read to its end and the server keeps it."""
        if self._closed or not connection.reusable:
            self._discard(connection)
            return
        now = time.monotonic()
        connection.idle_since = now
        idle = self._idle
        while idle and now - idle[0].idle_since >= self._keepalive_timeout:
            self._discard(idle.popleft())
        idle.append(connection)
        self._wake_slot_waiter()

    def _discard(self, connection: UpstreamConnection) -> None:
        connection.abort()
        self._connection_gone()

    def _connection_gone(self) -> None:
        self._open -= 1
        self._wake_slot_waiter()

    def _wake_slot_waiter(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class UpstreamClients:
    """One ``UpstreamClient`` per origin, made on first use; ``options`` go to each."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._clients: dict[str, UpstreamClient] = {}

    def for_url(self, url: str) -> UpstreamClient:
        origin = split_url(url)[0]
        client = self._clients.get(origin)
        if client is None:
            client = self._clients[origin] = UpstreamClient(origin, **self._options)
        return client

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    async def __aenter__(self) -> UpstreamClients:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class UpstreamResponse:
    """A response whose head has arrived; its body is read with ``read_chunk`` / ``read``.

    Finish with ``release()`` (the connection goes back to the pool if the body was read to
    its end, else it is closed) or ``close()`` (always closed: the provider sees the client
    leave and stops generating)."""

    __slots__ = (
        "_client",
        "_connection",
        "_done",
        "_headers",
        "_raw_headers",
        "_read_timeout",
        "content_length",
        "content_type",
        "status",
    )

    def __init__(
        self, client: UpstreamClient, connection: UpstreamConnection, read_timeout: float | None
    ) -> None:
        self._client = client
        self._connection = connection
        self._read_timeout = read_timeout
        self._done = False
        self.status = connection.status
        self.content_type = connection.content_type
        """The media type, lower-cased, without parameters (``""`` if none was sent)."""
        self.content_length = connection.content_length
        self._raw_headers = connection.raw_headers
        self._headers: dict[str, str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """Lower-cased names; a repeated header's values joined with ``", "``. Decoded on
        first use: a provider sends some twenty headers, and most calls read none."""
        headers = self._headers
        if headers is None:
            headers = self._headers = {}
            for name, value in self._raw_headers:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                previous = headers.get(key)
                headers[key] = text if previous is None else f"{previous}, {text}"
        return headers

    def at_eof(self) -> bool:
        return self._connection.finished()

    async def read_chunk(self) -> bytes:
        """The body bytes that have arrived (waiting for some if none has); ``b""`` at the
        end. Raises ``ReadTimeout``, ``BodyIncomplete`` or ``InvalidResponse``."""
        return await self._connection.read_chunk(self._read_timeout)

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._client._release(self._connection)

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._client._discard(self._connection)


def target_on(client: UpstreamClient, url: str) -> str:
    """``url``'s request target, checking that ``client`` is the one for its origin."""
    origin, target = split_url(url)
    if origin != client.origin:
        raise ValueError(f"{url!r} is not on {client.origin!r}")
    return target
