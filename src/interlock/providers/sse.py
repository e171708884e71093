"""A bounded, incremental Server-Sent Events parser.

It is fed the raw byte chunks of a response body as they arrive and returns the events they
complete. It follows the parsing rules of the HTML standard (``event:``, ``data:`` with
multi-line data joined by ``\\n``, ``:`` comments, ``\\n`` / ``\\r\\n`` / ``\\r`` line endings,
a leading BOM) and ignores ``id:`` and ``retry:``, which an upstream reply never needs.

It runs once per chunk on the hot path, so it splits with ``bytes.splitlines`` (C speed, no
per-byte Python loop) and keeps ``data`` as bytes: ``msgspec`` decodes bytes directly.

Memory is bounded: a line still waiting for its end, or the data of one event, longer than
``max_bytes`` raises ``UpstreamProtocolError`` as soon as it is known, before the buffer grows
further. (A complete line is at most that unfinished part plus the one network chunk that
ended it, which the caller already holds.)
"""

from __future__ import annotations

from typing import TypeAlias

from interlock.errors import UpstreamProtocolError

DEFAULT_MAX_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_CR = 13
_LF = 10
_COLON = 58


SSEEvent: TypeAlias = tuple[str, bytes]
"""One dispatched event: ``(event, data)``; ``event`` is ``"message"`` when none was named.
A plain tuple: one is made per chunk, and a named tuple costs ten times as much to build."""


class SSEParser:
    """Turns byte chunks into ``SSEEvent``s; one parser per response."""

    __slots__ = (
        "_data",
        "_data_size",
        "_event",
        "_max_bytes",
        "_skip_lf",
        "_started",
        "_tail",
        "_tail_size",
    )

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self._max_bytes = max_bytes
        self._tail: list[bytes] = []  # pieces of a line whose end has not arrived yet
        self._tail_size = 0
        self._skip_lf = False  # the last chunk ended in "\r": a leading "\n" completes it
        self._started = False
        self._data: list[bytes] = []
        self._data_size = 0
        self._event = "message"

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Parse one chunk; return the events it completed (often none or one)."""
        if not self._started:
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if not chunk:
            return []
        lines = chunk.splitlines()
        last = chunk[-1]
        if last == _LF:
            pass
        elif last == _CR:
            self._skip_lf = True
        elif len(lines) == 1:
            # No line ends here: keep the piece, join the pieces once the line is complete.
            self._tail_size += len(chunk)
            if self._tail_size > self._max_bytes:
                raise _too_big("line")
            self._tail.append(chunk)
            return []
        else:
            partial = lines.pop()
            if len(partial) > self._max_bytes:
                raise _too_big("line")
            if self._tail:
                lines[0] = b"".join(self._tail) + lines[0]
            self._tail = [partial]
            self._tail_size = len(partial)
            return self._parse(lines)
        if self._tail:
            # This chunk's first line ends the line the earlier chunks began.
            lines[0] = b"".join(self._tail) + lines[0]
            self._tail = []
            self._tail_size = 0
        return self._parse(lines)

    def _parse(self, lines: list[bytes]) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append((self._event, data[0] if len(data) == 1 else b"\n".join(data)))
                    data.clear()
                    self._data_size = 0
                self._event = "message"
                continue
            if line.startswith(b"data:"):
                value = line[6:] if line.startswith(b"data: ") else line[5:]
            elif line[0] == _COLON:
                continue  # a comment, e.g. a keep-alive
            else:
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"event":
                    self._event = value.decode("utf-8", "replace") or "message"
                    continue
                if name != b"data":
                    continue  # "id", "retry" and unknown fields are ignored, as the standard says
            # Count the joining "\n" too, so that dispatched data never exceeds the limit.
            self._data_size += len(value) + 1
            if self._data_size > self._max_bytes + 1:
                raise _too_big("event")
            data.append(value)
        return events


def _too_big(what: str) -> UpstreamProtocolError:
    return UpstreamProtocolError(
        f"The model provider sent an event stream {what} that is too long."
    )
