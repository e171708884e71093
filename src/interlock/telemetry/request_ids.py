"""Request ids: unique without a system call per request, and the current one.

The current request's id lives in a context variable: the chat pipeline sets it when a
request begins, and the provider adapters' HTTP layer sends it upstream as ``x-request-id``
(``outbound_headers``), so one id ties the gateway's log line to the provider's.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from contextvars import ContextVar

REQUEST_ID_HEADER = "x-request-id"

_current: ContextVar[str | None] = ContextVar("interlock_request_id", default=None)


class RequestIds:
    """``req_`` + a random prefix drawn once per app + a counter."""

    __slots__ = ("_numbers", "_prefix")

    def __init__(self) -> None:
        self._prefix = "req_" + os.urandom(6).hex()
        self._numbers = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._numbers):012x}"


def set_current_request_id(request_id: str) -> None:
    """``request_id`` is the current request's from here on, in this task (and the tasks it
    starts); each ASGI request runs in its own task, so it never leaks to another."""
    _current.set(request_id)


def current_request_id() -> str | None:
    return _current.get()


def outbound_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` plus the current request's id, for a call to a provider."""
    request_id = _current.get()
    if request_id is None:
        return headers
    return {**headers, REQUEST_ID_HEADER: request_id}
