"""The gateway's HTTP server (``interlock.serving``): a response's head leaves with the write
that follows it, no write waits past the end of its turn, and nothing written is lost when a
connection closes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from interlock.serving import JOIN_BELOW, TurnWrites, server_config
from tests.support.gateway import free_port


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingTransport:
    """The calls a ``TurnWrites`` makes on its transport."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def wrapped() -> tuple[RecordingTransport, TurnWrites]:
    """A recording transport and its ``TurnWrites``, on the running loop."""
    transport = RecordingTransport()
    return transport, TurnWrites(transport, asyncio.get_running_loop())  # type: ignore[arg-type]


async def turn() -> None:
    await asyncio.sleep(0)


@pytest.mark.anyio
async def test_a_write_leaves_with_the_next_one_or_at_the_end_of_the_turn() -> None:
    transport, writes = wrapped()
    writes.write(b"head;")
    assert transport.writes == []
    writes.write(b"body")  # a JSON answer: whole at once, without waiting for the turn
    assert transport.writes == [b"head;body"]
    writes.write(b"chunk 1;")
    writes.write(b"chunk 2")
    writes.write(b"chunk 3")  # the last of the turn waits for its end
    assert transport.writes == [b"head;body", b"chunk 1;chunk 2"]
    await turn()
    assert transport.writes == [b"head;body", b"chunk 1;chunk 2", b"chunk 3"]
    await turn()
    assert len(transport.writes) == 3  # nothing sent twice
    writes.write(b"a later turn")
    await turn()
    assert transport.writes[-1] == b"a later turn"


@pytest.mark.anyio
async def test_a_long_write_is_neither_held_nor_copied() -> None:
    transport, writes = wrapped()
    long = b"x" * JOIN_BELOW
    writes.write(b"head;")
    writes.write(long)
    assert transport.writes == [b"head;", long]
    assert transport.writes[1] is long
    writes.write(long)
    assert transport.writes[2] is long
    await turn()
    assert len(transport.writes) == 3


@pytest.mark.anyio
async def test_writes_that_never_yield_reach_the_transport_one_write_late_at_most() -> None:
    """An answer written without yielding (a replay from the cache, a fast upstream) still
    meets the transport's flow control: it holds one short write at most."""
    transport, writes = wrapped()
    chunk = b"c" * 1000
    for written in range(1, 101):
        writes.write(chunk)
        assert written * len(chunk) - sum(map(len, transport.writes)) <= len(chunk)
    assert len(transport.writes) == 50
    await turn()
    assert b"".join(transport.writes) == chunk * 100


@pytest.mark.anyio
async def test_close_sends_what_is_held_first() -> None:
    transport, writes = wrapped()
    writes.write(b"last answer")
    writes.close()
    assert (transport.writes, transport.closing) == ([b"last answer"], True)
    await turn()
    assert transport.writes == [b"last answer"]


@pytest.mark.anyio
async def test_abort_discards_and_a_closed_transport_gets_nothing() -> None:
    transport, writes = wrapped()
    writes.write(b"never sent")
    writes.abort()
    await turn()
    assert (transport.writes, transport.aborted) == ([], True)

    gone, writes = wrapped()
    writes.write(b"for a client that left")
    gone.closing = True  # the connection was lost within the turn
    await turn()
    assert gone.writes == []


@pytest.mark.anyio
async def test_everything_else_is_the_transports() -> None:
    transport, writes = wrapped()
    assert writes.get_extra_info("peername") == "extra:peername"
    assert writes.is_closing() is False
    writes.pause_reading()
    assert transport.reading is False
    writes.resume_reading()
    assert transport.reading is True


# --- on a real socket -----------------------------------------------------------------------

BODY = b'{"answer":"' + b"x" * 5000 + b'"}'


async def json_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A JSON answer in two messages, as the gateway's replies send it."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    while (await receive()).get("more_body"):
        pass
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


@pytest.fixture
def server() -> Iterator[int]:
    port = free_port()
    running = uvicorn.Server(server_config(json_app, "127.0.0.1", port, loop="asyncio"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not running.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    yield port
    running.should_exit = True
    thread.join(timeout=10)


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(request)
        received = b""
        while chunk := client.recv(65536):
            received += chunk
    return received


def test_keep_alive_answers_arrive_whole_and_in_order(server: int) -> None:
    request = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
    closing = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    received = exchange(server, request * 3 + closing)
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 4
    assert received.count(BODY) == 4
    assert received.endswith(BODY)


def test_an_answer_then_close_loses_nothing(server: int) -> None:
    """HTTP/1.0 without keep-alive: the server closes right after writing the answer."""
    received = exchange(server, b"POST /x HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}")
    assert received.startswith(b"HTTP/1.1 200 OK\r\n")
    assert received.endswith(b"\r\n\r\n" + BODY)


def test_the_servers_own_error_reaches_the_client_before_it_closes(server: int) -> None:
    received = exchange(server, b"NOT HTTP AT ALL\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert received.endswith(b"Invalid HTTP request received.")
