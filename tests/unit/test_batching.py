"""Chunks ready together are written together; none waits for the source's next one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from interlock.api.batching import relay

pytestmark = pytest.mark.anyio


class Writes:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def __call__(self, chunk: bytes) -> None:
        self.written.append(chunk)


async def test_chunks_in_hand_go_out_as_one_write_and_a_wait_flushes_them() -> None:
    async def source() -> AsyncGenerator[bytes, None]:
        yield b"opening;"
        yield b"first;"
        await asyncio.sleep(0)
        yield b"second;"
        yield b"third;"
        await asyncio.sleep(0.01)
        yield b"end;"

    write = Writes()
    last = await relay(source(), write, first=2)
    assert write.written == [b"opening;first;", b"second;third;"]
    assert last == b"end;"  # returned, to go out with the end of the body


async def test_the_first_content_goes_out_before_the_burst_behind_it() -> None:
    async def source() -> AsyncGenerator[bytes, None]:
        yield b"opening;"
        yield b"first;"
        yield b"second;"
        yield b"third;"

    write = Writes()
    last = await relay(source(), write, first=2)
    assert write.written == [b"opening;first;"]
    assert last == b"second;third;"


async def test_held_chunks_are_written_before_the_source_waits() -> None:
    arrived = asyncio.Event()
    write = Writes()

    async def source() -> AsyncGenerator[bytes, None]:
        yield b"first"
        yield b"a"
        yield b"b"
        assert write.written == [b"first"]  # not yet: the source has not waited
        await arrived.wait()
        yield b"c"

    relaying = asyncio.ensure_future(relay(source(), write))
    await asyncio.sleep(0)
    assert write.written == [b"first", b"ab"]  # out while the source waits for ``c``
    arrived.set()
    assert await relaying == b"c"
    assert write.written == [b"first", b"ab"]


async def test_a_large_burst_is_written_in_parts() -> None:
    async def source() -> AsyncGenerator[bytes, None]:
        for _ in range(10):
            yield b"x" * 100

    write = Writes()
    last = await relay(source(), write, limit=250)
    assert [len(chunk) for chunk in write.written] == [100, 300, 300, 300]
    assert last == b""


async def test_what_came_before_a_failure_is_written_then_it_is_raised() -> None:
    async def source() -> AsyncGenerator[bytes, None]:
        yield b"a"
        raise ValueError("cut")

    write = Writes()
    with pytest.raises(ValueError, match="cut"):
        await relay(source(), write)
    assert write.written == [b"a"]


async def test_a_cancelled_wait_is_cancelled_inside_the_source() -> None:
    events: list[str] = []

    async def source() -> AsyncGenerator[bytes, None]:
        yield b"a"
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("cancelled in the source")
            raise
        finally:
            await asyncio.sleep(0)  # the source may still await while it ends
            events.append("source ended")

    write = Writes()
    relaying = asyncio.ensure_future(relay(source(), write))
    await asyncio.sleep(0.01)
    relaying.cancel()
    with pytest.raises(asyncio.CancelledError):
        await relaying
    assert write.written == [b"a"]
    assert events == ["cancelled in the source", "source ended"]


async def test_a_failed_write_stops_the_source_where_it_waits() -> None:
    events: list[str] = []

    async def source() -> AsyncGenerator[bytes, None]:
        yield b"a"
        try:
            await asyncio.sleep(0.01)
            yield b"b"
        finally:
            events.append("source ended")

    async def write(chunk: bytes) -> None:
        raise OSError("client gone")

    body = source()
    with pytest.raises(OSError, match="client gone"):
        await relay(body, write, first=2)  # ``a`` is held until the source waits
    assert events == ["source ended"]
    await body.aclose()  # not left in the middle of a step
