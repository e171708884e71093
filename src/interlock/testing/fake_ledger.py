"""The fake upstream's record of every request it served, readable from the test's thread.

The server thread appends a ``ServedRequest`` when a request arrives and updates it in place
as the reply goes out; readers get copies, so a snapshot never changes under a test's feet.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from interlock.testing.fake_behavior import Behavior

ProtocolName = Literal["openai", "anthropic"]


@dataclass(slots=True)
class ServedRequest:
    """One request as the fake upstream saw and answered it.

    ``status`` is ``None`` until a status line is sent (it stays ``None`` for
    ``never_answer``). ``chunks_sent`` counts content chunks (text tokens or tool-argument
    fragments) written so far. ``completed`` means the whole reply (or error body) was sent;
    ``client_disconnected`` means the client went away before that. Times are
    ``time.monotonic()`` values. ``client_port`` is the client's TCP port: requests sharing
    it came over one kept-alive connection.
    """

    seq: int
    method: str
    path: str
    protocol: ProtocolName
    model: str | None
    body: Any
    headers: dict[str, str]
    stream: bool
    started_at: float
    client_port: int | None = None
    behavior: Behavior | None = None
    status: int | None = None
    chunks_sent: int = 0
    completed: bool = False
    client_disconnected: bool = False
    ended_at: float | None = field(default=None)

    @property
    def api_key(self) -> str | None:
        """The credential the client sent: ``x-api-key``, else the bearer token."""
        key = self.headers.get("x-api-key")
        if key is not None:
            return key
        authorization = self.headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            return authorization[7:]
        return None


class Ledger:
    """Thread-safe list of ``ServedRequest`` with a way to wait for a condition."""

    def __init__(self) -> None:
        self._records: list[ServedRequest] = []
        self._changed = threading.Condition()

    def add(self, record: ServedRequest) -> None:
        self._records.append(record)  # list.append is atomic under the GIL
        self.notify()

    def notify(self) -> None:
        """Wake ``wait_for`` callers; called when a record gains an outcome."""
        with self._changed:
            self._changed.notify_all()

    def clear(self) -> None:
        self._records = []
        self.notify()

    def snapshot(self) -> list[ServedRequest]:
        return [copy.copy(record) for record in list(self._records)]

    def wait_for(self, predicate: Callable[[ServedRequest], bool], timeout: float) -> ServedRequest:
        """Return (a copy of) the first record matching ``predicate``, waiting up to
        ``timeout`` seconds for one; raise ``TimeoutError`` if none matched in time.

        A request's arrival and its outcome wake the waiter at once; progress in between
        (``chunks_sent``) is seen within 50 ms."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in list(self._records):
                    if predicate(record):
                        return copy.copy(record)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    summary = "\n".join(f"  {r!r}" for r in self._records) or "  (none)"
                    raise TimeoutError(
                        f"no served request matched within {timeout}s; ledger:\n{summary}"
                    )
                # A short cap on each wait is a safety net for updates made without notify.
                self._changed.wait(min(remaining, 0.05))
