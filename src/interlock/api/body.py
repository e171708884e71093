"""Reading request bodies within a size limit, before anything parses them."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from interlock.errors import BodyTooLarge, InvalidRequest


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or ``BodyTooLarge`` as soon as it passes ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before reading anything; a
    chunked body is counted as it arrives, so an endless body never fills memory.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Invalid Content-Length header.")
        if int(declared) > limit:
            raise BodyTooLarge(f"The request body is too large (limit {limit} bytes).")
    chunks: list[bytes] = []
    size = 0
    receive = request.receive  # not ``request.stream()``: an async generator per request
    while True:
        message = await receive()
        if message["type"] != "http.request":  # "http.disconnect"
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"The request body is too large (limit {limit} bytes).")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
