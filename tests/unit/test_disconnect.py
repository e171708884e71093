"""``unless_disconnected``: a non-streaming request's work is cancelled when its client
leaves, and a quick answer never starts a watch at all."""

from __future__ import annotations

import asyncio

import pytest

from interlock.api.disconnect import WATCH_AFTER_S, ClientGone, unless_disconnected

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Client:
    """An ASGI ``receive`` whose client leaves when told to (or has already left)."""

    def __init__(self, gone: bool = False) -> None:
        self.left = asyncio.Event()
        if gone:
            self.left.set()
        self.calls = 0

    async def receive(self) -> dict[str, str]:
        self.calls += 1
        await self.left.wait()
        return {"type": "http.disconnect"}


async def test_a_quick_answer_never_watches_the_client() -> None:
    client = Client()

    async def quick() -> str:
        await asyncio.sleep(0)
        return "answer"

    assert await unless_disconnected(quick(), client.receive) == "answer"
    await asyncio.sleep(WATCH_AFTER_S * 2)  # the timer was cancelled: nothing starts later
    assert client.calls == 0


async def test_a_client_that_leaves_during_long_work_cancels_it() -> None:
    client = Client()
    cancelled = asyncio.Event()

    async def long_work() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    asyncio.get_running_loop().call_later(WATCH_AFTER_S * 3, client.left.set)
    with pytest.raises(ClientGone):
        await unless_disconnected(long_work(), client.receive)
    assert cancelled.is_set()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_client_gone_before_the_watch_starts_is_still_noticed() -> None:
    client = Client(gone=True)
    with pytest.raises(ClientGone):
        await unless_disconnected(asyncio.sleep(30), client.receive)


async def test_a_cancellation_from_elsewhere_is_not_mistaken_for_the_client() -> None:
    client = Client()
    task = asyncio.ensure_future(unless_disconnected(asyncio.sleep(30), client.receive))
    await asyncio.sleep(WATCH_AFTER_S * 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
