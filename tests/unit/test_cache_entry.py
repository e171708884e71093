"""Cache entries: recorded from a stream, stored compactly, replayed as the same answer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from interlock.cache.entry import (
    ENTRY_VERSION,
    CacheEntry,
    ReasoningSegment,
    StoredUsage,
    TextSegment,
    ToolCallSegment,
    chunks,
    decode_entry,
    encode_entry,
)
from interlock.cache.recorder import CacheRecorder
from interlock.cache.store import ENTRY_PREFIX, memory_store
from interlock.chat.types import (
    Event,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from interlock.state.memory_kv import MemoryKeyValue, footprint

pytestmark = pytest.mark.anyio

STREAM: list[Event] = [
    ReasoningDelta("Let me "),
    ReasoningDelta("think."),
    TextDelta(""),
    TextDelta("Hello"),
    TextDelta(", wörld! "),
    TextDelta("🙂"),
    ToolCallDelta(0, "call_1", "search", ""),
    ToolCallDelta(0, arguments='{"q": '),
    ToolCallDelta(0, arguments='"cats"}'),
    ToolCallDelta(1, "call_2", "lookup", '{"id": 1}'),
    Usage(input_tokens=12, output_tokens=34, cached_tokens=5),
    Finish("tool_calls"),
]


class Committed:
    def __init__(self) -> None:
        self.calls: list[CacheEntry | None] = []

    async def __call__(self, entry: CacheEntry | None) -> None:
        self.calls.append(entry)


def recorded(events: list[Event], limit: int = 10_000) -> tuple[CacheRecorder, Committed]:
    committed = Committed()
    recorder = CacheRecorder(limit, committed, clock=lambda: 1_700_000_000.0)
    for event in events:
        recorder.feed(event)
    return recorder, committed


async def test_a_finished_stream_is_coalesced_into_one_entry() -> None:
    recorder, committed = recorded(STREAM)
    await recorder.finish(model="gpt-4o-2024", deployment="openai:gpt-4o")
    await recorder.finish(model="x", deployment="y")  # idempotent
    await recorder.abandon()
    assert committed.calls == [
        CacheEntry(
            version=ENTRY_VERSION,
            model="gpt-4o-2024",
            deployment="openai:gpt-4o",
            segments=[
                ReasoningSegment("Let me think."),
                TextSegment("Hello, wörld! 🙂"),
                ToolCallSegment(0, "call_1", "search", '{"q": "cats"}'),
                ToolCallSegment(1, "call_2", "lookup", '{"id": 1}'),
            ],
            usage=StoredUsage(12, 34, 5, False),
            finish="tool_calls",
            created_at=1_700_000_000.0,
        )
    ]


async def test_an_entry_round_trips_through_msgpack_and_replays_the_same_answer() -> None:
    recorder, committed = recorded(STREAM)
    await recorder.finish(model="m", deployment="d")
    entry = committed.calls[0]
    assert entry is not None
    data = encode_entry(entry)
    assert decode_entry(data) == entry
    assert len(data) < 200  # compact: arrays and one-letter tags, no field names

    replayed = [event async for event in entry.replay(chunk_chars=4)]
    assert replayed[-2:] == [Usage(12, 34, 5), Finish("tool_calls")]
    text = "".join(e.text for e in replayed if isinstance(e, TextDelta))
    reasoning = "".join(e.text for e in replayed if isinstance(e, ReasoningDelta))
    assert (text, reasoning) == ("Hello, wörld! 🙂", "Let me think.")
    assert sum(isinstance(e, TextDelta) for e in replayed) > 1  # it streams
    calls = [e for e in replayed if isinstance(e, ToolCallDelta)]
    firsts = [(e.index, e.id, e.name) for e in calls if e.id is not None]
    assert firsts == [(0, "call_1", "search"), (1, "call_2", "lookup")]
    assert "".join(e.arguments for e in calls if e.index == 0) == '{"q": "cats"}'
    # the first delta of each call carries its id and name, later ones only arguments
    assert calls[0].id == "call_1"
    assert all(e.id is None and e.name is None for e in calls[1:] if e.index == 0)
    # recording the replay gives the same entry again
    again, committed_again = recorded(replayed)
    await again.finish(model="m", deployment="d")
    assert committed_again.calls == [entry]


async def test_a_tool_call_without_arguments_replays_as_one_delta() -> None:
    recorder, committed = recorded([ToolCallDelta(0, "c", "now"), Usage(1, 1), Finish("stop")])
    await recorder.finish(model="m", deployment="d")
    entry = committed.calls[0]
    assert entry is not None
    assert list(entry.events()) == [ToolCallDelta(0, "c", "now", ""), Usage(1, 1), Finish("stop")]


@pytest.mark.parametrize(
    "stream",
    [
        [TextDelta("Hel"), TextDelta("lo")],  # cut: no Finish
        [TextDelta("Hello"), Usage(1, 1)],
    ],
)
async def test_an_unfinished_stream_is_never_stored(stream: list[Event]) -> None:
    recorder, committed = recorded(stream)
    await recorder.finish(model="m", deployment="d")
    assert committed.calls == [None]


async def test_an_abandoned_stream_is_never_stored() -> None:
    recorder, committed = recorded(STREAM)  # even a whole one: the client may not have it
    await recorder.abandon()
    await recorder.finish(model="m", deployment="d")
    assert committed.calls == [None]


async def test_an_answer_over_the_size_cap_stops_being_buffered() -> None:
    recorder, committed = recorded([TextDelta("x" * 600)], limit=1000)
    assert not recorder.overflowed
    recorder.feed(TextDelta("y" * 600))
    assert recorder.overflowed
    recorder.feed(TextDelta("z"))
    recorder.feed(Usage(1, 1))
    recorder.feed(Finish("stop"))
    assert recorder.entry("m", "d") is None
    await recorder.finish(model="m", deployment="d")
    assert committed.calls == [None]


async def test_tee_passes_every_event_through_and_records_it() -> None:
    async def source() -> AsyncIterator[Event]:
        for event in STREAM:
            yield event

    recorder, committed = recorded([])
    passed = [event async for event in recorder.tee(source())]
    assert passed == STREAM
    await recorder.finish(model="m", deployment="d")
    assert committed.calls[0] is not None
    assert committed.calls[0].segments[1] == TextSegment("Hello, wörld! 🙂")


def test_chunks_join_to_the_text_and_prefer_word_boundaries() -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 20 + "x" * 300
    pieces = chunks(text, 64)
    assert "".join(pieces) == text
    assert all(0 < len(piece) <= 64 for piece in pieces)
    assert all(piece.endswith(" ") for piece in pieces[:10])
    assert chunks("", 64) == []
    assert chunks("short", 64) == ["short"]


def test_data_that_is_not_a_current_entry_reads_as_a_miss() -> None:
    entry = CacheEntry(
        ENTRY_VERSION, "m", "d", [TextSegment("hi")], StoredUsage(1, 1, 0, False), "stop", 0.0
    )
    old = CacheEntry(0, "m", "d", [TextSegment("hi")], StoredUsage(1, 1, 0, False), "stop", 0.0)
    assert decode_entry(encode_entry(entry)) == entry
    assert decode_entry(encode_entry(old)) is None
    assert decode_entry(b"\x93garbage") is None
    assert decode_entry(b"") is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def entry_of(text: str) -> CacheEntry:
    return CacheEntry(
        ENTRY_VERSION, "m", "d", [TextSegment(text)], StoredUsage(1, 1, 0, False), "stop", 0.0
    )


async def test_the_memory_store_is_bounded_in_bytes_and_evicts_the_least_recently_used() -> None:
    clock = FakeClock()
    one = footprint(ENTRY_PREFIX + "k0", encode_entry(entry_of("x" * 1000)))
    store = memory_store(limit_bytes=3 * one + 10, max_entry_bytes=2000, clock=clock)
    for i in range(3):
        assert await store.put(f"k{i}", entry_of("x" * 1000), ttl=60)
    assert await store.get("k0") is not None  # k0 is now the most recently used
    assert await store.put("k3", entry_of("x" * 1000), ttl=60)
    assert await store.get("k1") is None  # the least recently used went
    for key in ("k0", "k2", "k3"):
        assert await store.get(key) is not None
    kv = store.kv
    assert isinstance(kv, MemoryKeyValue)
    assert kv.used_bytes <= kv.limit_bytes
    assert kv.evictions == 1


async def test_the_memory_store_refuses_an_entry_over_the_cap_and_expires_by_ttl() -> None:
    clock = FakeClock()
    store = memory_store(limit_bytes=1_000_000, max_entry_bytes=2000, clock=clock)
    assert not await store.put("big", entry_of("x" * 2500), ttl=60)
    assert await store.get("big") is None
    assert await store.put("small", entry_of("hi"), ttl=60)
    clock.now += 59.9
    assert await store.get("small") == entry_of("hi")
    clock.now += 0.1
    assert await store.get("small") is None
