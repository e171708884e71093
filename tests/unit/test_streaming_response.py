"""A streamed answer is ended however it ends, and stops when its client leaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from interlock.api.disconnect import ClientWatch
from interlock.api.streaming import SSE, StreamCut, StreamReply

pytestmark = pytest.mark.anyio


class Ending:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def end(self) -> None:
        self.calls.append("end")


class Client:
    """``receive`` and ``send`` of one request whose body has been read."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.left = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


async def body(
    ending: Ending, chunks: list[bytes], then: Any = None
) -> AsyncGenerator[bytes, None]:
    ending.calls.append("body-started")
    try:
        for chunk in chunks:
            yield chunk
        if then is not None:
            await then()
    finally:
        ending.calls.append("body-finally")


async def test_a_finished_body_is_sent_whole_and_then_ended() -> None:
    ending, client = Ending(), Client()
    chunks = [b"open;", b"first;", b"more;", b"end;"]
    watch = ClientWatch(client.receive)
    reply = StreamReply(body(ending, chunks), ending, watch, SSE, {"x-a": "1"}, opening=1)
    await reply({"type": "http"}, client.receive, client.send)
    assert ending.calls == ["body-started", "body-finally", "end"]
    assert client.sent[0] == {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"x-a", b"1"), (b"content-type", SSE)],
    }
    # The opening with the first content at once, then the rest in hand with the end.
    assert client.sent[1:] == [
        {"type": "http.response.body", "body": b"open;first;", "more_body": True},
        {"type": "http.response.body", "body": b"more;end;", "more_body": False},
    ]


async def test_the_answer_is_ended_once_its_body_is_out() -> None:
    client = Client()

    class EndAfterTheBody:
        async def end(self) -> None:
            assert client.sent[-1] == {
                "type": "http.response.body",
                "body": b"b",
                "more_body": False,
            }

    async def source() -> AsyncGenerator[bytes, None]:
        yield b"a"
        await asyncio.sleep(0)
        yield b"b"

    reply = StreamReply(
        source(), EndAfterTheBody(), ClientWatch(client.receive), SSE, {}, opening=0
    )
    await reply({"type": "http"}, client.receive, client.send)
    assert client.bodies() == [b"a", b"b"]


async def test_a_client_gone_before_the_body_starts_is_ended_without_it() -> None:
    ending, client = Ending(), Client()
    watch = ClientWatch(client.receive)
    client.left.set()
    await asyncio.sleep(0)  # the watch sees the disconnect
    reply = StreamReply(body(ending, [b"a"]), ending, watch, SSE, {}, opening=0)
    await reply({"type": "http"}, client.receive, client.send)
    assert ending.calls == ["end"]
    assert client.sent == []


async def test_a_client_leaving_mid_stream_cancels_the_body_and_ends_it() -> None:
    ending, client = Ending(), Client()
    never = asyncio.get_running_loop().create_future()

    async def wait_forever() -> None:
        client.left.set()
        await never

    watch = ClientWatch(client.receive)
    reply = StreamReply(body(ending, [b"a"], wait_forever), ending, watch, SSE, {}, opening=0)
    await asyncio.wait_for(reply({"type": "http"}, client.receive, client.send), 1)
    assert ending.calls == ["body-started", "body-finally", "end"]
    assert client.bodies() == [b"a"]  # no last chunk: the client is gone


async def test_a_cut_stream_ends_without_its_last_chunk() -> None:
    ending, client = Ending(), Client()

    async def cut() -> None:
        raise StreamCut("upstream_error")

    reply = StreamReply(
        body(ending, [b"a"], cut), ending, ClientWatch(client.receive), SSE, {}, opening=0
    )
    await reply({"type": "http"}, client.receive, client.send)
    assert client.bodies() == [b"a"]  # and no end of the body: the connection is cut
    assert ending.calls == ["body-started", "body-finally", "end"]


async def test_the_watch_stops_before_the_last_chunk() -> None:
    """The server reports a completed response as a disconnect: it must cancel nothing."""
    ending, client = Ending(), Client()
    watch = ClientWatch(client.receive)

    async def send(message: dict[str, Any]) -> None:
        client.sent.append(message)
        if message.get("more_body") is False:
            client.left.set()

    reply = StreamReply(body(ending, [b"a"]), ending, watch, SSE, {}, opening=0)
    await reply({"type": "http"}, client.receive, send)
    await asyncio.sleep(0)
    assert not watch.gone
    assert ending.calls == ["body-started", "body-finally", "end"]
