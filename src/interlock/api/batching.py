"""Chunks already in hand, written together.

Each ASGI body message is one write to the socket, and that write (a system call) is most
of what a streamed chunk costs the server. Chunks often come ready together: the
protocol's opening with the first content (which is in hand once an answer is committed),
a burst of deltas the provider sent in one packet, the closing events. ``relay`` joins the
chunks that its source gives without waiting, so they go out in one write; no chunk is
held back while the source waits for more.

To know whether the source would wait, each of its steps is run by hand up to its first
suspension (``send(None)`` on the ``__anext__`` awaitable). If the step finished, the chunk
was ready. If it suspended, the chunks held so far are written, and then the suspended step
is awaited where it stopped (``_Resumed``), exactly as ``await`` would have gone on: in the
same task and context, with a cancellation thrown in where the source waits.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from typing import Any

# A burst larger than this is written without waiting for the source to pause, so a source
# that never waits (a cached answer) neither holds memory nor delays its reader.
MAX_BATCH = 64 * 1024


class _Resumed:
    """A step started by hand and suspended at ``signal``: awaiting this goes on with it.
    ``thrown``: raise this in the step where it waits, instead of waiting on."""

    __slots__ = ("_signal", "_step", "_thrown")

    def __init__(
        self,
        step: Generator[Any, Any, bytes],
        signal: Any,
        thrown: BaseException | None = None,
    ) -> None:
        self._step = step
        self._signal = signal
        self._thrown = thrown

    def __await__(self) -> Generator[Any, Any, bytes]:
        step, signal, thrown = self._step, self._signal, self._thrown
        while True:
            try:
                if thrown is not None:
                    signal, thrown = step.throw(thrown), None
                    continue
                try:
                    answer = yield signal
                except GeneratorExit:
                    step.close()
                    raise
                except BaseException as exc:  # a cancellation: it goes where the source waits
                    thrown = exc
                    continue
                signal = step.send(answer)
            except StopIteration as done:
                chunk: bytes = done.value
                return chunk


async def relay(
    source: AsyncGenerator[bytes, None],
    write: Callable[[bytes], Awaitable[None]],
    *,
    first: int = 1,
    limit: int = MAX_BATCH,
) -> bytes:
    """``write`` the chunks of ``source``, those ready at the same time as one.

    The first write goes out as soon as ``source`` has given ``first`` chunks (an opening
    and the first content), not after the chunks in hand behind them: the time to the first
    token counts more than a write. Once ``source`` is exhausted, returns the chunks still
    in hand instead of writing them, for the caller to send with the end of the body (one
    write fewer). Raises what ``source`` raises, once the chunks it gave before have been
    written. Never leaves ``source`` in the middle of a step.
    """
    held: list[bytes] = []
    size = 0
    given = 0
    while True:
        step = source.__anext__().__await__()
        try:
            signal = step.send(None)
        except StopIteration as done:  # ready without waiting
            chunk: bytes = done.value
        except StopAsyncIteration:
            break
        except Exception:
            if held:  # what came before a failure still goes out first
                await write(b"".join(held))
            raise
        else:
            if held:
                try:
                    await write(b"".join(held))
                except BaseException as exc:
                    # The source is mid-step: what stopped the write stops it there too.
                    with contextlib.suppress(StopAsyncIteration):
                        await _Resumed(step, signal, exc)
                    raise
                held.clear()
                size = 0
            try:
                chunk = await _Resumed(step, signal)
            except StopAsyncIteration:
                break
        held.append(chunk)
        size += len(chunk)
        given += 1
        if size >= limit or given == first:
            await write(b"".join(held))
            held.clear()
            size = 0
    return b"".join(held)
