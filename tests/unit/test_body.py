"""``read_body``: the whole body within a limit, read straight from ``receive``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from starlette.requests import ClientDisconnect, Request

from interlock.api.body import read_body
from interlock.errors import BodyTooLarge, InvalidRequest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Receiver:
    """Hands out scripted ASGI messages and counts how many were asked for."""

    def __init__(self, messages: Sequence[dict[str, Any]]) -> None:
        self._pending = list(messages)
        self.reads = 0

    async def __call__(self) -> dict[str, Any]:
        self.reads += 1
        return self._pending.pop(0)


def request(
    receive: Receiver | Sequence[dict[str, Any]], headers: Sequence[tuple[bytes, bytes]] = ()
) -> Request:
    receiver = receive if isinstance(receive, Receiver) else Receiver(receive)
    return Request({"type": "http", "headers": list(headers)}, receiver)


def part(body: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


async def test_the_parts_of_a_chunked_body_are_joined() -> None:
    parts = [part(b'{"a":', True), part(b"", True), part(b" 1}", False)]
    assert await read_body(request(parts), 100) == b'{"a": 1}'


async def test_one_part_is_returned_as_it_came() -> None:
    assert await read_body(request([part(b"{}", False)]), 100) == b"{}"


async def test_a_body_growing_past_the_limit_is_refused_as_it_arrives() -> None:
    receive = Receiver([part(b"x" * 60, True), part(b"x" * 60, True), part(b"unread", False)])
    with pytest.raises(BodyTooLarge):
        await read_body(request(receive), 100)
    assert receive.reads == 2  # the rest is not read


async def test_a_declared_length_past_the_limit_is_refused_before_reading() -> None:
    receive = Receiver([part(b"x" * 200, False)])
    with pytest.raises(BodyTooLarge):
        await read_body(request(receive, [(b"content-length", b"200")]), 100)
    assert receive.reads == 0


async def test_a_malformed_content_length_is_a_bad_request() -> None:
    with pytest.raises(InvalidRequest):
        await read_body(request([part(b"{}", False)], [(b"content-length", b"2x")]), 100)


async def test_a_client_leaving_mid_body_is_a_disconnect() -> None:
    with pytest.raises(ClientDisconnect):
        await read_body(request([part(b"{", True), {"type": "http.disconnect"}]), 100)
