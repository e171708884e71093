"""Chat answers written as raw ASGI messages.

Starlette's ``Response`` builds a header object, re-encodes and scans its headers per
response, and is a few percent of a chat request's CPU. A chat reply's headers are known
when it is made, so ``JSONReply`` encodes them once and sends its two messages. Header names
are given in lower case, as ASGI wants them.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import Message, Receive, Scope, Send

JSON = b"application/json"


def encode_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """``headers`` as the ASGI list of ``(name, value)`` byte pairs (latin-1, as HTTP)."""
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


class JSONReply:
    """A whole JSON body: ``http.response.start`` and one ``http.response.body``, with the
    headers in the order Starlette's ``Response`` gives them (the given ones, then length
    and type)."""

    __slots__ = ("_body", "_start")

    def __init__(self, body: bytes, headers: Mapping[str, str], status: int = 200) -> None:
        raw = encode_headers(headers)
        raw.append((b"content-length", b"%d" % len(body)))
        raw.append((b"content-type", JSON))
        self._start: Message = {"type": "http.response.start", "status": status, "headers": raw}
        self._body: Message = {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(self._start)
        await send(self._body)
