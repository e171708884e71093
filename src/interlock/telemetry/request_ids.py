"""Request ids: unique without a system call per request."""

from __future__ import annotations

import itertools
import os


class RequestIds:
    """``req_`` + a random prefix drawn once per app + a counter."""

    __slots__ = ("_numbers", "_prefix")

    def __init__(self) -> None:
        self._prefix = "req_" + os.urandom(6).hex()
        self._numbers = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._numbers):012x}"
