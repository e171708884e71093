"""Request headers looked up in a dict instead of a scan of the header list.

Starlette's ``Headers`` lower-cases and encodes the name, then scans every header, for each
look-up, and copies the list when made. A chat request looks up about six headers (the
key, the body's length, the forwarded-for chain, the cache directive, the tracing context),
so the chat routes get ``IndexedRequest``, whose headers index the list once, on first use.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Receive, Scope, Send


class IndexedHeaders(Headers):
    """Read-only headers of an ASGI scope (whose names are lower case, as ASGI has them)."""

    def __init__(self, scope: Scope) -> None:  # no super().__init__: it copies the list
        self._list = scope["headers"]
        self._first: dict[str, str] | None = None

    def _index(self) -> dict[str, str]:
        """Each name's first value, as Starlette's look-ups give it."""
        first = self._first
        if first is None:
            # Built backwards, so that the first of repeated names is the one kept.
            first = self._first = {
                name.decode("latin-1"): value.decode("latin-1")
                for name, value in reversed(self._list)
            }
        return first

    def __getitem__(self, key: str) -> str:
        return self._index()[key.lower()]

    def get(self, key: str, default: Any = None) -> Any:
        return self._index().get(key.lower(), default)

    def getlist(self, key: str) -> list[str]:
        index = self._index()
        if len(index) == len(self._list):  # no name repeats: at most one value
            value = index.get(key.lower())
            return [] if value is None else [value]
        return super().getlist(key)

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and key.lower() in self._index()


class IndexedRequest(Request):
    """A Starlette ``Request`` whose ``headers`` are ``IndexedHeaders``."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        super().__init__(scope, receive, send)
        self._headers = IndexedHeaders(scope)  # what Starlette's ``headers`` returns
