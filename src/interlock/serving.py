"""The gateway on HTTP: uvicorn, configured in one place for ``interlock serve`` and the tests.

One change to uvicorn's HTTP/1.1 protocol (httptools): a response's head and the write that
follows it leave in one system call. uvicorn writes a response's head and its body
separately, which is two system calls and two TCP segments for every JSON answer; measured
on a loaded gateway, the second one cost about 6 % of its CPU. So each write is held until
the next one, which it joins, or until the end of the current turn of the event loop,
whichever comes first: a JSON answer leaves whole, the first chunk of a stream leaves with
the head, and no write waits for more than one other or for the turn's other callbacks.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

JOIN_BELOW = 16 * 1024
"""A write this long is not held or joined, since copying it would cost more than a system
call: it leaves as it is, after the one held."""


class TurnWrites:
    """A transport that holds each short write until the next write or the end of the turn.

    Everything else is the wrapped transport's. Every byte reaches the transport at most one
    write late, so its flow control (``pause_writing``, which makes uvicorn wait for a client
    that reads slowly) works as before. ``close`` sends what is held first, as a transport's
    own ``close`` does with its buffer; ``abort`` discards it, as the transport's does.
    """

    __slots__ = (
        "_held",
        "_loop",
        "_scheduled",
        "_transport",
        "is_closing",
        "pause_reading",
        "resume_reading",
    )

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._scheduled = False  # a call to ``_flush`` at the end of this turn
        # Called for every request: bound here rather than looked up by ``__getattr__``.
        self.is_closing = transport.is_closing
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) >= JOIN_BELOW:
                self._transport.write(held)
                self._transport.write(data)
            else:
                self._transport.write(held + data)
        elif len(data) >= JOIN_BELOW:
            self._transport.write(data)
        else:
            self._held = data
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class TurnWritesHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, a response's head and its next write sent together
    (``TurnWrites``)."""

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
