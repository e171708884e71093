"""``IndexedHeaders`` answers every look-up as Starlette's ``Headers`` does."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers
from starlette.types import Message

from interlock.api.indexed_headers import IndexedHeaders, IndexedRequest

RAW = [
    (b"host", b"127.0.0.1:8080"),
    (b"authorization", b"Bearer il_key"),
    (b"x-forwarded-for", b"203.0.113.7"),
    (b"x-forwarded-for", b"198.51.100.2, 10.0.0.1"),
    (b"x-note", "caf\xe9".encode("latin-1")),
]


def both() -> tuple[Headers, IndexedHeaders]:
    return Headers(scope={"headers": list(RAW)}), IndexedHeaders({"headers": list(RAW)})


@pytest.mark.parametrize("name", ["host", "Authorization", "X-FORWARDED-FOR", "x-note", "absent"])
def test_lookups_agree_with_starlettes(name: str) -> None:
    theirs, ours = both()
    assert ours.get(name) == theirs.get(name)
    assert ours.get(name, "default") == theirs.get(name, "default")
    assert ours.getlist(name) == theirs.getlist(name)
    assert (name in ours) == (name in theirs)
    if name in theirs:
        assert ours[name] == theirs[name]
    else:
        with pytest.raises(KeyError):
            ours[name]


def test_the_whole_list_is_unchanged() -> None:
    theirs, ours = both()
    assert ours.items() == theirs.items()
    assert ours.raw == theirs.raw
    assert len(ours) == len(theirs) and list(ours) == list(theirs)
    assert 42 not in ours


def test_a_request_gives_indexed_headers_once() -> None:
    request = IndexedRequest({"type": "http", "headers": list(RAW)}, _no_receive, _no_send)
    assert isinstance(request.headers, IndexedHeaders)
    assert request.headers is request.headers
    assert request.headers.getlist("x-forwarded-for") == [
        "203.0.113.7",
        "198.51.100.2, 10.0.0.1",
    ]


async def _no_receive() -> Message:
    raise AssertionError("not used")


async def _no_send(message: Message) -> None:
    raise AssertionError("not used")
