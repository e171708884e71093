"""Putting one planned reply on the wire, with the faults its behaviour asks for.

An ``Exchange`` is one request being answered: its wire protocol, its ledger record, the ASGI
``send``, and its ``gone`` future, resolved with ``CLIENT_GONE`` when the client disconnects
or ``SHUTDOWN`` when the server stops. Every wait races against ``gone``. Each SSE step is one
``send``, so clients see one token per chunk as from a real provider.

A deliberate cut returns without finishing the body, which makes uvicorn close the
connection and log an error. ``DeliberateCutFilter`` drops exactly those records (it is keyed
on a context variable set by the cutting request's own task), so a failing test's log shows
no server error that did not happen.
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from interlock.testing.fake_behavior import Behavior
from interlock.testing.fake_ledger import ServedRequest
from interlock.testing.fake_reply import ChatView, Reply, Wire

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
HeaderList = list[tuple[bytes, bytes]]

SHUTDOWN = "shutdown"  # result of a ``gone`` future when the server stops
CLIENT_GONE = "client"  # result of a ``gone`` future when the client disconnects

_JSON = (b"content-type", b"application/json")
_SSE = (b"content-type", b"text/event-stream; charset=utf-8")
_NO_CACHE = (b"cache-control", b"no-cache")
_HUGE_BLOCK = b"x" * 65536
_NOT_JSON = b'{"id": this is not json'

_deliberate_cut: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "interlock_fake_upstream_deliberate_cut", default=False
)


class DeliberateCutFilter(logging.Filter):
    """Drops uvicorn's "returned without completing response" error for a reply that the
    fake cut short on purpose; install it on the ``uvicorn.error`` logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _deliberate_cut.get()


class _Fault(enum.Enum):
    MALFORMED = enum.auto()
    ERROR_EVENT = enum.auto()
    HUGE_LINE = enum.auto()
    STALL = enum.auto()
    CUT = enum.auto()


def _fault_table(behavior: Behavior, steps: int) -> dict[int, list[_Fault]]:
    """Where each asked-for fault fires, clamped to the last content chunk, in firing order."""
    table: dict[int, list[_Fault]] = {}
    for position, fault in (
        (behavior.malformed_after, _Fault.MALFORMED),
        (behavior.error_event_after, _Fault.ERROR_EVENT),
        (None if behavior.huge_line_bytes is None else 1, _Fault.HUGE_LINE),
        (behavior.stall_after, _Fault.STALL),
        (behavior.cut_after, _Fault.CUT),
    ):
        if position is not None:
            table.setdefault(min(position, steps), []).append(fault)
    return table


def _body(data: bytes, more: bool = True) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more}


@dataclass(slots=True)
class Exchange:
    """One request being answered (``gone`` is ``None`` when nothing can make it wait)."""

    wire: Wire
    record: ServedRequest
    send: Send
    gone: asyncio.Future[str] | None = None

    async def wait(self, seconds: float | None) -> bool:
        """Wait ``seconds`` (``None``: for ever) unless the exchange ends first; True if it
        ended."""
        gone = self.gone
        assert gone is not None, "a behaviour that waits must watch for disconnects"
        if gone.done():
            return True
        done, _ = await asyncio.wait((gone,), timeout=seconds)
        return bool(done)

    @property
    def stopping(self) -> bool:
        return self.gone is not None and self.gone.done() and self.gone.result() == SHUTDOWN

    # -- whole responses -------------------------------------------------------------------

    def json_headers(self, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()) -> HeaderList:
        headers = [
            _JSON,
            (b"content-length", b"%d" % len(body)),
            (self.wire.request_id_header, b"req_fake%d" % self.record.seq),
        ]
        headers.extend(extra)
        return headers

    async def respond(self, status: int, body: bytes, headers: HeaderList) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        self.record.status = status
        await self.send(_body(body, more=False))
        self.record.completed = True

    async def error(
        self,
        status: int,
        *,
        error_type: str | None = None,
        message: str | None = None,
        code: str | None = None,
        param: str | None = None,
        extra: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Answer ``status`` with an error body in the protocol's shape."""
        body = self.wire.error_body(
            status,
            f"req_fake{self.record.seq}",
            error_type=error_type,
            message=message,
            code=code,
            param=param,
        )
        await self.respond(status, body, self.json_headers(body, extra))

    async def end_unstarted(self) -> None:
        """The exchange ended before a status line: answer 503 if the server is stopping (a
        client that left needs nothing)."""
        if self.stopping:
            await self.error(503, message="The fake upstream is shutting down.")
            self.record.completed = False

    async def end_started(self) -> None:
        """The exchange ended mid-body: end the body cleanly if the server is stopping."""
        if self.stopping:
            await self.send(_body(b"", more=False))

    # -- replies ---------------------------------------------------------------------------

    async def reply_full(self, view: ChatView, reply: Reply, behavior: Behavior) -> None:
        """A non-streaming reply; a model "generates" for ``token_delay`` per extra chunk."""
        generating = behavior.token_delay * (reply.chunk_count - 1)
        if generating > 0 and await self.wait(generating):
            await self.end_unstarted()
            return
        body = (
            _NOT_JSON
            if behavior.malformed_after is not None
            else self.wire.response_body(view, reply, self.record.seq)
        )
        headers = self.json_headers(body, behavior.encoded_headers)
        if behavior.stall_after is None and behavior.cut_after is None:
            await self.respond(200, body, headers)
            self.record.chunks_sent = reply.chunk_count
            return
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        self.record.status = 200
        if behavior.stall_after is not None:
            await self.wait(None)
            if self.stopping:
                await self.send(_body(body, more=False))
        else:
            await self.send(_body(body[: len(body) // 2]))
            _deliberate_cut.set(True)  # uvicorn closes the connection on an unfinished body

    async def reply_stream(self, view: ChatView, reply: Reply, behavior: Behavior) -> None:
        """A streaming reply: preamble, one write per content chunk, closing events."""
        send, record = self.send, self.record
        rendered = self.wire.render_stream(view, reply, record.seq)
        headers = [_SSE, _NO_CACHE, (self.wire.request_id_header, b"req_fake%d" % record.seq)]
        headers.extend(behavior.encoded_headers)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        record.status = 200
        faults = _fault_table(behavior, len(rendered.steps)) if behavior.has_stream_fault else None
        if faults and 0 in faults and await self._inject(faults[0], behavior):
            return
        await send(_body(rendered.preamble))
        gone = self.gone
        delay = behavior.token_delay
        for index, step in enumerate(rendered.steps, 1):
            if (delay and index > 1 and await self.wait(delay)) or (gone and gone.done()):
                await self.end_started()
                return
            await send(_body(step))
            record.chunks_sent = index
            if faults and index in faults and await self._inject(faults[index], behavior):
                return
        await send(_body(rendered.closing, more=False))
        record.completed = True

    async def _inject(self, faults: Iterable[_Fault], behavior: Behavior) -> bool:
        """Inject the faults due at this point of a stream; True when the stream ends here."""
        for fault in faults:
            if fault is _Fault.MALFORMED:
                await self.send(_body(self.wire.malformed_event()))
                continue
            if fault is _Fault.ERROR_EVENT:
                await self.send(_body(self.wire.stream_error(behavior), more=False))
            elif fault is _Fault.HUGE_LINE:
                assert behavior.huge_line_bytes is not None
                await self._send_huge_line(behavior.huge_line_bytes)
                await self.wait(None)
                await self.end_started()
            elif fault is _Fault.STALL:
                await self.wait(None)
                await self.end_started()
            else:  # _Fault.CUT: leave the body unfinished; uvicorn closes the connection
                _deliberate_cut.set(True)
            return True
        return False

    async def _send_huge_line(self, size: int) -> None:
        gone = self.gone
        await self.send(_body(b"data: "))
        remaining = size - len(b"data: ")
        while remaining > 0 and not (gone and gone.done()):
            piece = _HUGE_BLOCK if remaining >= len(_HUGE_BLOCK) else _HUGE_BLOCK[:remaining]
            await self.send(_body(piece))
            remaining -= len(piece)
