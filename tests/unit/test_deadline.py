"""``Deadline`` cancels its task on time and tells its own cancellation from others'."""

from __future__ import annotations

import asyncio

import pytest

from interlock.chat.deadline import Deadline

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_an_expired_deadline_cancels_the_task_and_claims_it() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.01)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert deadline.expired
    assert deadline.claim()
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0  # undone
    await asyncio.sleep(0)  # and the task goes on


async def test_a_cancellation_from_elsewhere_is_not_claimed() -> None:
    async def bounded() -> bool:
        deadline = Deadline(asyncio.get_running_loop().time() + 5)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return deadline.claim()
        return True

    task = asyncio.create_task(bounded())
    await asyncio.sleep(0.01)
    task.cancel()
    assert await task is False


async def test_a_deadline_and_another_cancellation_at_once_is_not_claimed() -> None:
    async def bounded() -> tuple[bool, int]:
        deadline = Deadline(asyncio.get_running_loop().time())  # expires at once
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            assert current is not None
            return deadline.claim(), current.cancelling()
        return True, 0

    task = asyncio.create_task(bounded())
    await asyncio.sleep(0)  # the task starts and waits; its deadline fires...
    task.cancel()  # ...and someone else cancels it too
    claimed, still_cancelling = await task
    assert (claimed, still_cancelling) == (False, 1)


async def test_a_moved_deadline_fires_at_its_new_time() -> None:
    loop = asyncio.get_running_loop()
    deadline = Deadline(loop.time() + 0.01)
    deadline.move(loop.time() + 5)
    await asyncio.sleep(0.05)  # past the first time: nothing happens
    deadline.move(loop.time() + 0.01)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert deadline.claim()


async def test_a_stopped_or_absent_deadline_never_fires() -> None:
    loop = asyncio.get_running_loop()
    stopped = Deadline(loop.time() + 0.01)
    stopped.stop()
    never = Deadline(None)
    await asyncio.sleep(0.05)
    assert not stopped.expired and not never.expired
    assert not never.claim()
