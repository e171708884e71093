"""A cache entry: what is needed to replay an answer in any protocol, and the replay.

An entry holds the answer as canonical events, coalesced (consecutive text, reasoning or
same-call tool deltas are joined into one segment), plus its usage, finish reason, and the
model and deployment that served it. It is stored as compact msgpack: every struct is
encoded as an array, and segments carry a one-letter tag.

Replay turns the segments back into a stream of deltas of ``REPLAY_CHUNK_CHARS`` or so,
cut after a space where one is near, so a streaming client sees a stream; then the original
``Usage`` and ``Finish``. Whatever the chunking, the replayed deltas join to exactly the
stored text.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator

import msgspec

from interlock.chat.types import (
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)

# Bumped whenever the stored layout changes: entries of another version read as a miss.
ENTRY_VERSION = 1
REPLAY_CHUNK_CHARS = 64


class TextSegment(msgspec.Struct, tag="t", array_like=True, frozen=True, gc=False):
    text: str


class ReasoningSegment(msgspec.Struct, tag="r", array_like=True, frozen=True, gc=False):
    text: str


class ToolCallSegment(msgspec.Struct, tag="c", array_like=True, frozen=True, gc=False):
    index: int
    id: str | None
    name: str | None
    arguments: str


Segment = TextSegment | ReasoningSegment | ToolCallSegment


class StoredUsage(msgspec.Struct, array_like=True, frozen=True, gc=False):
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    estimated: bool

    @classmethod
    def of(cls, usage: Usage) -> StoredUsage:
        return cls(usage.input_tokens, usage.output_tokens, usage.cached_tokens, usage.estimated)

    def usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens, self.cached_tokens, self.estimated)


class CacheEntry(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One stored answer. ``created_at`` is wall-clock Unix time (for the ``age``)."""

    version: int
    model: str  # the upstream model that answered
    deployment: str  # the deployment that served it
    segments: list[Segment]
    usage: StoredUsage
    finish: FinishReason
    created_at: float

    def events(self, chunk_chars: int = REPLAY_CHUNK_CHARS) -> Iterator[Event]:
        """The answer as canonical events: deltas, then ``Usage``, then ``Finish``."""
        for segment in self.segments:
            if isinstance(segment, TextSegment):
                for piece in chunks(segment.text, chunk_chars):
                    yield TextDelta(piece)
            elif isinstance(segment, ReasoningSegment):
                for piece in chunks(segment.text, chunk_chars):
                    yield ReasoningDelta(piece)
            else:
                first = True
                for piece in chunks(segment.arguments, chunk_chars) or [""]:
                    if first:
                        yield ToolCallDelta(segment.index, segment.id, segment.name, piece)
                        first = False
                    else:
                        yield ToolCallDelta(segment.index, arguments=piece)
        yield self.usage.usage()
        yield Finish(self.finish)

    async def replay(self, chunk_chars: int = REPLAY_CHUNK_CHARS) -> AsyncGenerator[Event, None]:
        """``events`` as an async iterator, the shape every provider stream has."""
        for event in self.events(chunk_chars):
            yield event


def chunks(text: str, size: int = REPLAY_CHUNK_CHARS) -> list[str]:
    """``text`` in pieces of at most ``size`` characters, each cut after the last space in
    its second half when there is one (so words are rarely split)."""
    if size < 2:
        raise ValueError("chunk size must be at least 2")
    pieces = []
    start, length = 0, len(text)
    while length - start > size:
        end = start + size
        space = text.rfind(" ", start + size // 2, end)
        if space != -1:
            end = space + 1
        pieces.append(text[start:end])
        start = end
    if start < length:
        pieces.append(text[start:])
    return pieces


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CacheEntry)


def encode_entry(entry: CacheEntry) -> bytes:
    return _encoder.encode(entry)


def decode_entry(data: bytes) -> CacheEntry | None:
    """The entry, or None when ``data`` is not a current-version entry (an old format, or
    a value that is not ours): both read as a miss."""
    try:
        entry = _decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return entry if entry.version == ENTRY_VERSION else None
