"""The gateway on HTTP: uvicorn, configured in one place for ``interlock serve`` and the tests.

One change to uvicorn's HTTP/1.1 protocol (httptools): the bytes it writes in one turn of
the event loop go out in one ``write``. uvicorn writes a response's head and its body
separately, which is two system calls and two TCP segments for every JSON answer; measured
on a loaded gateway, the second one cost about 6 % of its CPU. The writes of a turn are
joined and sent when the turn's callbacks are done, which adds no measurable latency: the
head and the body of a JSON reply are sent back to back, and the chunks of a stream come
one event at a time anyway. Past ``JOIN_BELOW`` pending bytes they are sent at once, so
that backpressure works as before.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

JOIN_BELOW = 16 * 1024
"""Writes are joined while the turn's pending bytes stay below this; at this size they go out
at once. A longer write is sent as it is (after those pending), since copying it would cost
more than a system call. So the transport sees every byte at most this late, and its flow
control (``pause_writing``, which makes uvicorn wait for the client) still holds back an
answer written faster than the client reads, even one written without ever yielding."""


class TurnWrites:
    """A transport whose short writes in one turn of the event loop are sent together.

    Everything else is the wrapped transport's. ``close`` sends what is pending first, as a
    transport's own ``close`` does with its buffer; ``abort`` discards it, as the
    transport's does.
    """

    __slots__ = (
        "_loop",
        "_pending",
        "_pending_bytes",
        "_transport",
        "is_closing",
        "pause_reading",
        "resume_reading",
    )

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None
        self._pending_bytes = 0
        # Called for every request: bound here rather than looked up by ``__getattr__``.
        self.is_closing = transport.is_closing
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading

    def write(self, data: bytes) -> None:
        if len(data) >= JOIN_BELOW:
            self._flush()
            self._transport.write(data)
            return
        pending = self._pending
        if pending is None:
            self._pending = [data]
            self._pending_bytes = len(data)
            self._loop.call_soon(self._flush)
            return
        pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= JOIN_BELOW:
            self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TurnWritesHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, its writes sent once per turn (``TurnWrites``)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(TurnWrites(transport, self.loop))  # type: ignore[arg-type]


def server_config(
    app: Any, host: str, port: int, *, loop: Literal["uvloop", "asyncio"] = "uvloop"
) -> uvicorn.Config:
    """How the gateway's app is served (``interlock serve`` runs it on uvloop; the tests'
    in-thread gateways on asyncio)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop=loop,
        http=TurnWritesHttpProtocol,
        ws="none",
        lifespan="on",
        access_log=False,  # the app writes its own access line (interlock.telemetry)
        log_level="warning",
        timeout_graceful_shutdown=30,
        # Forwarded headers are not trusted blindly: client addresses are Interlock's call.
        proxy_headers=False,
        server_header=False,
    )
