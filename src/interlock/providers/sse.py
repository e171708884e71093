"""A bounded, incremental Server-Sent Events parser.

It is fed the raw byte chunks of a response body as they arrive and returns the events they
complete. It follows the parsing rules of the HTML standard (``event:``, ``data:`` with
multi-line data joined by ``\\n``, ``:`` comments, ``\\n`` / ``\\r\\n`` / ``\\r`` line endings,
a leading BOM) and ignores ``id:`` and ``retry:``, which an upstream reply never needs.

It runs once per chunk on the hot path, so it splits with ``bytes.splitlines`` (C speed, no
per-byte Python loop) and keeps ``data`` as bytes: ``msgspec`` decodes bytes directly.

Memory is bounded: a line, or the data of one event, longer than ``max_bytes`` raises
``UpstreamProtocolError`` as soon as it is known, before the buffer grows further.
"""

from __future__ import annotations

from typing import NamedTuple

from interlock.errors import UpstreamProtocolError

DEFAULT_MAX_BYTES = 1024 * 1024
_BOM = b"\xef\xbb\xbf"
_CR = 13
_LF = 10
_COLON = 58


class SSEEvent(NamedTuple):
    """One dispatched event. ``event`` is ``"message"`` when the stream named none."""

    event: str
    data: bytes


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
        if b"\n" not in chunk and b"\r" not in chunk:
            # No line ends here: keep the pieces, join them only once the line is complete.
            self._tail_size += len(chunk)
            if self._tail_size > self._max_bytes:
                raise _too_big("line")
            self._tail.append(chunk)
            return []
        if self._tail:
            self._tail.append(chunk)
            chunk = b"".join(self._tail)
            self._tail.clear()
            self._tail_size = 0

        lines = chunk.splitlines()
        last = chunk[-1]
        if last == _CR:
            self._skip_lf = True
        elif last != _LF:
            partial = lines.pop()
            if len(partial) > self._max_bytes:
                raise _too_big("line")
            self._tail.append(partial)
            self._tail_size = len(partial)

        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                    events.append(SSEEvent(self._event, data))
                    self._data = []
                    self._data_size = 0
                self._event = "message"
                continue
            if len(line) > self._max_bytes:
                raise _too_big("line")
            if line.startswith(b"data:"):
                self._add_data(line[6:] if line[5:6] == b" " else line[5:])
            elif line[0] == _COLON:
                continue  # a comment, e.g. a keep-alive
            else:
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"event":
                    self._event = value.decode("utf-8", "replace") or "message"
                elif name == b"data":
                    self._add_data(value)
                # "id", "retry" and unknown fields are ignored, as the standard says.
        return events

    def _add_data(self, value: bytes) -> None:
        # Count the joining "\n" too, so the dispatched data never exceeds the limit.
        self._data_size += len(value) + 1
        if self._data_size > self._max_bytes + 1:
            raise _too_big("event")
        self._data.append(value)


def _too_big(what: str) -> UpstreamProtocolError:
    return UpstreamProtocolError(
        f"The model provider sent an event stream {what} that is too long."
    )
