"""``CacheRecorder``: the tee between an answer streaming to its client and the cache.

The pipeline feeds it every canonical event as it passes them on (``feed``, or the ``tee``
wrapper), then says how the stream ended: ``finish`` once the answer was delivered whole,
``abandon`` on an error, a cut stream or a client that left. Only ``finish`` after a
``Finish`` event stores anything: errors, partial and cancelled answers never are. An answer
that grows past ``limit_bytes`` stops being buffered at once and is not stored.

What happens to the finished entry (stored, handed to requests waiting on the same answer)
is the ``commit`` callback's business; the recorder calls it exactly once, with the entry or
with None.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from interlock.cache.entry import (
    ENTRY_VERSION,
    CacheEntry,
    ReasoningSegment,
    Segment,
    StoredUsage,
    TextSegment,
    ToolCallSegment,
)
from interlock.chat.types import (
    ChatResult,
    Event,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)

Commit = Callable[[CacheEntry | None], Awaitable[None]]

# Bytes counted per segment on top of its text (tag, array headers, index).
SEGMENT_OVERHEAD = 16


class _Open:
    """A segment still growing."""

    __slots__ = ("id", "index", "kind", "name", "parts")

    def __init__(self, kind: str, index: int = -1, id: str | None = None, name: str | None = None):
        self.kind = kind
        self.index = index
        self.id = id
        self.name = name
        self.parts: list[str] = []

    def close(self) -> Segment:
        joined = "".join(self.parts)
        if self.kind == "t":
            return TextSegment(joined)
        if self.kind == "r":
            return ReasoningSegment(joined)
        return ToolCallSegment(self.index, self.id, self.name, joined)


class CacheRecorder:
    """Buffers one answer's events, coalesced, and commits the entry (see module doc).

    ``feed`` is synchronous and cheap (a list append). ``finish`` and ``abandon`` are
    idempotent; only the first of them counts.
    """

    def __init__(self, limit_bytes: int, commit: Commit, *, clock: Callable[[], float] = time.time):
        self.limit_bytes = limit_bytes
        self._commit = commit
        self._clock = clock
        self._segments: list[_Open] = []
        self._usage: Usage | None = None
        self._finish: Finish | None = None
        self.size = 0  # bytes counted so far (characters: a lower bound of UTF-8 bytes)
        self.overflowed = False
        self.done = False

    def feed(self, event: Event) -> None:
        """Take the next event of the answer."""
        if self.overflowed or self.done:
            return
        if isinstance(event, TextDelta | ReasoningDelta):
            if not event.text:
                return
            kind = "t" if isinstance(event, TextDelta) else "r"
            last = self._segments[-1] if self._segments else None
            if last is None or last.kind != kind:
                last = _Open(kind)
                self._segments.append(last)
                self.size += SEGMENT_OVERHEAD
            last.parts.append(event.text)
            self.size += len(event.text)
        elif isinstance(event, ToolCallDelta):
            last = self._segments[-1] if self._segments else None
            if last is None or last.kind != "c" or last.index != event.index:
                last = _Open("c", event.index, event.id, event.name)
                self._segments.append(last)
                self.size += SEGMENT_OVERHEAD + len(event.id or "") + len(event.name or "")
            else:
                last.id = last.id or event.id
                last.name = last.name or event.name
            last.parts.append(event.arguments)
            self.size += len(event.arguments)
        elif isinstance(event, Usage):
            self._usage = event
        else:
            self._finish = event
        if self.size > self.limit_bytes:
            self.overflowed = True
            self._segments = []  # stop holding the answer: it will not be stored

    async def tee(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """Pass ``events`` through, feeding each to the recorder on the way."""
        async for event in events:
            self.feed(event)
            yield event

    def entry(self, model: str, deployment: str) -> CacheEntry | None:
        """The entry for what was fed, or None if it must not be stored (no ``Finish``
        seen, or over the size limit)."""
        if self.overflowed or self._finish is None:
            return None
        usage = self._usage or Usage(estimated=True)
        return CacheEntry(
            version=ENTRY_VERSION,
            model=model,
            deployment=deployment,
            segments=[segment.close() for segment in self._segments],
            usage=StoredUsage.of(usage),
            finish=self._finish.reason,
            created_at=self._clock(),
        )

    async def finish(self, *, model: str, deployment: str) -> None:
        """The answer was delivered whole: commit its entry (when storable)."""
        if self.done:
            return
        self.done = True
        entry = self.entry(model, deployment)
        self._segments = []
        await self._commit(entry)

    async def abandon(self) -> None:
        """The answer failed or was cut: commit nothing (requests waiting on it go on)."""
        if self.done:
            return
        self.done = True
        self._segments = []
        await self._commit(None)


def result_events(result: ChatResult) -> Iterator[Event]:
    """A whole answer (a non-streaming one) as the events a recorder takes."""
    if result.reasoning:
        yield ReasoningDelta(result.reasoning)
    if result.text:
        yield TextDelta(result.text)
    for index, call in enumerate(result.tool_calls):
        yield ToolCallDelta(index, call.id, call.name, call.arguments)
    yield result.usage
    yield Finish(result.finish_reason)
