"""``Deadline``: cancel the current task at a given loop time, as ``asyncio.timeout_at``
does, with one timer handle and no context manager.

An attempt on a provider runs under a deadline on every request; ``asyncio.timeout_at``
(a context manager with a state machine, entered and left around the wait) cost about three
times as much as the timer itself. The semantics are the same: the timer cancels the task,
and ``claim`` tells the resulting ``CancelledError`` apart from a cancellation by anyone
else, undoing only the deadline's own.
"""

from __future__ import annotations

import asyncio


class Deadline:
    """Create it in the task it bounds; ``stop`` it when the bounded work is over."""

    __slots__ = ("_cancelling", "_handle", "_loop", "_task", "expired")

    def __init__(self, when: float | None) -> None:
        task = asyncio.current_task()
        assert task is not None, "a deadline bounds a task"
        self._task = task
        self._loop = loop = task.get_loop()
        self._cancelling = task.cancelling()
        self.expired = False
        self._handle = None if when is None else loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self._task.cancel()

    def move(self, when: float | None) -> None:
        """Expire at ``when`` instead (``None``: never), unless already expired."""
        if self.expired:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None if when is None else self._loop.call_at(when, self._expire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def claim(self) -> bool:
        """In an ``except CancelledError``: True if the deadline caused it (its cancellation
        is then undone, and the caller raises a timeout instead); False if someone else
        cancelled the task, which must go on cancelling."""
        self.stop()
        return self.expired and self._task.uncancel() <= self._cancelling
