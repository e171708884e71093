"""A stream whose client leaves before the body starts is still closed and accounted."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from interlock.api.streaming import EndingStreamingResponse, StreamEnding

pytestmark = pytest.mark.anyio


class Upstream:
    closed = 0

    async def aclose(self) -> None:
        self.closed += 1


async def body(ending: StreamEnding, started: list[bool]) -> AsyncIterator[bytes]:
    started.append(True)
    try:
        yield b"data: x\n\n"
    finally:
        await ending.end("from-body")


@pytest.mark.parametrize("spec_version", ["2.0", "2.4"])
async def test_client_gone_before_the_body_starts(spec_version: str) -> None:
    upstream, ends, started = Upstream(), [], []  # type: ignore[var-annotated]
    ending = StreamEnding(upstream, ends.append)  # type: ignore[arg-type]
    response = EndingStreamingResponse(body(ending, started), ending)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise OSError("client gone")

    scope = {"type": "http", "asgi": {"spec_version": spec_version}}
    with contextlib.suppress(OSError, ClientDisconnect):
        await response(scope, receive, send)
    assert started == []
    assert upstream.closed == 1
    assert ends == [None]


async def test_a_finished_body_ends_once() -> None:
    upstream, ends, started = Upstream(), [], []  # type: ignore[var-annotated]
    ending = StreamEnding(upstream, ends.append)  # type: ignore[arg-type]
    response = EndingStreamingResponse(body(ending, started), ending)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert ends == ["from-body"]
    assert upstream.closed == 1
