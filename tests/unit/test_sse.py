"""The SSE parser: the standard's parsing rules, any chunking, and bounded memory."""

from __future__ import annotations

import random

import pytest

from interlock.errors import UpstreamProtocolError
from interlock.providers.sse import SSEEvent, SSEParser


def parse(*chunks: bytes, max_bytes: int = 1024 * 1024) -> list[tuple[str, bytes]]:
    parser = SSEParser(max_bytes)
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    return events


def test_data_only_events() -> None:
    assert parse(b'data: {"a":1}\n\ndata: [DONE]\n\n') == [
        ("message", b'{"a":1}'),
        ("message", b"[DONE]"),
    ]


def test_named_events_and_the_name_resets_after_each_event() -> None:
    stream = b"event: message_start\ndata: {}\n\ndata: plain\n\n"
    assert parse(stream) == [("message_start", b"{}"), ("message", b"plain")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert parse(b"data: one\ndata: two\ndata:\ndata: four\n\n") == [
        ("message", b"one\ntwo\n\nfour")
    ]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert parse(b"data:no-space\n\ndata:  two-spaces\n\n") == [
        ("message", b"no-space"),
        ("message", b" two-spaces"),
    ]


def test_a_field_without_colon_is_a_field_with_empty_value() -> None:
    assert parse(b"data\ndata\n\n") == [("message", b"\n")]


def test_comments_id_retry_and_unknown_fields_are_ignored() -> None:
    stream = b": keep-alive\nid: 7\nretry: 100\nfoo: bar\ndata: x\n\n:\n\n"
    assert parse(stream) == [("message", b"x")]


def test_an_event_without_data_is_not_dispatched() -> None:
    assert parse(b"event: ping\n\ndata: x\n\n") == [("message", b"x")]


def test_an_unterminated_event_is_not_dispatched() -> None:
    assert parse(b"data: complete\n\ndata: never-finished\n") == [("message", b"complete")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    stream = newline.join([b"event: e", b"data: a", b"data: b", b"", b"data: c", b"", b""])
    assert parse(stream) == [("e", b"a\nb"), ("message", b"c")]


def test_a_leading_bom_is_skipped() -> None:
    assert parse(b"\xef\xbb\xbfdata: x\n\n") == [("message", b"x")]


MIXED = (
    b'event: message_start\r\ndata: {"type":"message_start"}\r\n\r\n'
    b": comment\rdata: line1\rdata: line2\r\r"
    b"data: \xc3\xa9t\xc3\xa9\n\n"
    b"event: message_stop\ndata: {}\n\n"
)
MIXED_EVENTS = [
    ("message_start", b'{"type":"message_start"}'),
    ("message", b"line1\nline2"),
    ("message", "été".encode()),
    ("message_stop", b"{}"),
]


def test_mixed_line_endings_in_one_chunk() -> None:
    assert parse(MIXED) == MIXED_EVENTS


@pytest.mark.parametrize("split", range(1, len(MIXED)))
def test_any_split_into_two_chunks_gives_the_same_events(split: int) -> None:
    assert parse(MIXED[:split], MIXED[split:]) == MIXED_EVENTS


def test_byte_by_byte_gives_the_same_events() -> None:
    assert parse(*(MIXED[i : i + 1] for i in range(len(MIXED)))) == MIXED_EVENTS


def test_crlf_split_between_chunks_is_one_line_ending() -> None:
    # "\r" ends a chunk, "\n" starts the next: one line ending, not an extra blank line.
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [("message", b"a\nb")]


def test_a_line_at_the_limit_is_accepted() -> None:
    line = b"data: " + b"x" * 94  # exactly 100 bytes
    assert parse(line + b"\n\n", max_bytes=100) == [("message", b"x" * 94)]


def test_a_long_line_in_one_chunk_is_refused() -> None:
    with pytest.raises(UpstreamProtocolError, match="too long"):
        parse(b"data: " + b"x" * 200 + b"\n\n", max_bytes=100)


def test_a_long_line_is_refused_as_soon_as_it_passes_the_limit() -> None:
    parser = SSEParser(max_bytes=1000)
    parser.feed(b"data: ")
    for _ in range(9):  # 906 bytes buffered, never a newline
        assert parser.feed(b"x" * 100) == []
    with pytest.raises(UpstreamProtocolError, match="line"):
        parser.feed(b"x" * 100)  # 1006: refused now, not when a newline finally comes


def test_a_partial_line_after_complete_ones_is_bounded_too() -> None:
    parser = SSEParser(max_bytes=100)
    with pytest.raises(UpstreamProtocolError):
        parser.feed(b"data: ok\n\ndata: " + b"y" * 200)


def test_an_event_larger_than_the_limit_is_refused() -> None:
    parser = SSEParser(max_bytes=100)
    line = b"data: " + b"z" * 40 + b"\n"
    assert parser.feed(line + line) == []  # 82 bytes of data so far, in one open event
    with pytest.raises(UpstreamProtocolError, match="event"):
        parser.feed(line)  # short lines, but the event would hold 123 bytes


def test_an_event_at_the_limit_is_accepted() -> None:
    # Two 49-byte lines joined by "\n": 99 bytes of data.
    events = parse(b"data: " + b"a" * 49 + b"\ndata: " + b"b" * 49 + b"\n\n", max_bytes=99)
    assert events == [("message", b"a" * 49 + b"\n" + b"b" * 49)]


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        SSEParser(0)


def test_random_streams_parse_alike_however_they_are_chunked() -> None:
    rng = random.Random(20250101)
    pieces = [
        b"data: abc",
        b"data:x",
        b"event: e",
        b": c",
        b"",
        b"id: 1",
        b"data",
        b"data: \xc3\xa9",
    ]
    for _ in range(300):
        newline = [b"\n", b"\r\n", b"\r"]
        stream = b"".join(
            rng.choice(pieces) + rng.choice(newline) for _ in range(rng.randint(1, 30))
        )
        whole = parse(stream)
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(1, 8))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert parse(*chunks) == whole, (stream, cuts)
