"""A stream whose client leaves before the body starts is still ended."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.requests import ClientDisconnect

from interlock.api.streaming import EndingStreamingResponse

pytestmark = pytest.mark.anyio


class Ending:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def end(self) -> None:
        self.calls.append("end")


async def body(ending: Ending, started: list[bool]) -> AsyncIterator[bytes]:
    started.append(True)
    try:
        yield b"data: x\n\n"
    finally:
        ending.calls.append("body-finally")
        await ending.end()


@pytest.mark.parametrize("spec_version", ["2.0", "2.4"])
async def test_client_gone_before_the_body_starts(spec_version: str) -> None:
    ending, started = Ending(), []  # type: ignore[var-annotated]
    response = EndingStreamingResponse(body(ending, started), ending)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise OSError("client gone")

    scope = {"type": "http", "asgi": {"spec_version": spec_version}}
    with contextlib.suppress(OSError, ClientDisconnect):
        await response(scope, receive, send)
    assert started == []
    assert ending.calls == ["end"]


async def test_a_finished_body_is_ended_by_the_body_first() -> None:
    ending, started = Ending(), []  # type: ignore[var-annotated]
    response = EndingStreamingResponse(body(ending, started), ending)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await response({"type": "http", "asgi": {"spec_version": "2.4"}}, receive, send)
    assert ending.calls == ["body-finally", "end", "end"]
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
