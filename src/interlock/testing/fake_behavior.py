"""What the fake upstream does for one request, and how tests script it.

A ``Behavior`` describes one reply: its status, timing, content and the fault to inject. The
``Script`` picks the behaviour for each request: the first matching one-shot behaviour pushed
by the test (FIFO), else the sticky behaviour of the request's model, else the default.

Fault positions count *content chunks*: one text token, or one fragment of a tool call's
arguments (the tool call's opening event travels with its first fragment). Position ``0`` is
before anything is written in the 200 body; a position past the last content chunk is clamped
to it, so a fault that is asked for always fires.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ToolCallReply:
    """A tool call for the fake to answer with: ``arguments`` is JSON text, sent verbatim."""

    name: str
    arguments: str = "{}"


@dataclass(frozen=True, slots=True)
class Behavior:
    """How the fake upstream answers one request. Every field has a harmless default.

    Status and headers:
        status: HTTP status; anything but 200 answers with an error body in the endpoint's
            protocol shape, whose ``type`` / ``message`` / ``code`` (OpenAI only) default to the
            provider's usual values for that status and can be overridden with
            ``error_type`` / ``error_message`` / ``error_code``. The same overrides apply to the
            in-stream error event of ``error_event_after``.
        retry_after: seconds, sent as the ``retry-after`` header (any status).
        headers: extra response headers.

    Timing:
        first_byte_delay: seconds before the status line is sent.
        token_delay: seconds between two content chunks (a non-streaming reply waits
            ``token_delay`` per chunk after the first, as a model would while generating).

    Content (the reply's words, see ``interlock.testing.fake_reply``):
        tokens: number of word tokens of the default reply.
        text: explicit reply text, split into word tokens (wins over ``tokens``).
        echo: reply with the text of the last user message (wins over ``text``).
        tool_call: answer with this tool call (after the ``text``, if one is given);
            finish reason ``tool_calls`` / stop reason ``tool_use``.
        finish_reason: override the finish reason (OpenAI vocabulary; the Anthropic endpoint
            maps ``stop``/``length``/``tool_calls``/``content_filter`` to its own names and
            passes any other value through; with ``stop_sequence`` it names the request's
            first stop sequence as the one that matched).
        include_usage: ``False`` sends no usage anywhere in the reply.

    Faults (streaming replies; positions count content chunks, see the module docstring):
        cut_after: close the connection after N chunks: no terminator, no error.
        stall_after: stop after N chunks, keep the connection open until the client leaves.
        malformed_after: send one non-JSON ``data:`` line after N chunks, then carry on.
        error_event_after: send the protocol's in-stream error event after N chunks and end
            the body (OpenAI ``data: {"error": …}``, Anthropic ``event: error``).
        huge_line_bytes: after the first chunk, send one SSE line of this many bytes with no
            newline, then stall until the client leaves.
        never_answer: read the request and send nothing until the client leaves.

    For a non-streaming reply, ``stall_after`` sends the headers and stalls, ``cut_after``
    sends the headers and half the body then closes, ``malformed_after`` sends a body that is
    not JSON; ``error_event_after`` and ``huge_line_bytes`` apply to streams only.
    """

    status: int = 200
    error_type: str | None = None
    error_message: str | None = None
    error_code: str | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict, hash=False)
    first_byte_delay: float = 0.0
    token_delay: float = 0.0
    tokens: int = 5
    text: str | None = None
    echo: bool = False
    tool_call: ToolCallReply | None = None
    finish_reason: str | None = None
    include_usage: bool = True
    cut_after: int | None = None
    stall_after: int | None = None
    malformed_after: int | None = None
    error_event_after: int | None = None
    huge_line_bytes: int | None = None
    never_answer: bool = False
    # Derived once here so the server never re-encodes headers per request.
    encoded_headers: tuple[tuple[bytes, bytes], ...] = field(
        init=False, repr=False, compare=False, default=()
    )

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"status must be 200..599, not {self.status}")
        for name in ("first_byte_delay", "token_delay", "tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in ("cut_after", "stall_after", "malformed_after", "error_event_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")
        if self.huge_line_bytes is not None and self.huge_line_bytes < 8:
            raise ValueError("huge_line_bytes must be at least 8")
        encoded = [
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()
        ]
        if self.retry_after is not None:
            seconds = self.retry_after
            text = str(int(seconds)) if float(seconds).is_integer() else str(seconds)
            encoded.append((b"retry-after", text.encode("ascii")))
        object.__setattr__(self, "encoded_headers", tuple(encoded))

    @property
    def waits(self) -> bool:
        """True when answering may take a while, so a client disconnect must be watched for."""
        return bool(
            self.never_answer
            or self.first_byte_delay
            or self.token_delay
            or self.stall_after is not None
            or self.huge_line_bytes is not None
        )

    @property
    def has_stream_fault(self) -> bool:
        return (
            self.cut_after is not None
            or self.stall_after is not None
            or self.malformed_after is not None
            or self.error_event_after is not None
            or self.huge_line_bytes is not None
        )


class Script:
    """Chooses the behaviour of each request; safe to change from any thread.

    Order: the first pushed one-shot behaviour whose model filter matches (consumed), then the
    sticky behaviour for the request's model, then ``default``.
    """

    def __init__(self, default: Behavior | None = None) -> None:
        self._initial_default = default or Behavior()
        self.default = self._initial_default
        self._lock = threading.Lock()
        self._queue: deque[tuple[str | None, Behavior]] = deque()
        self._by_model: dict[str, Behavior] = {}

    def push(self, behavior: Behavior, model: str | None = None) -> None:
        with self._lock:
            self._queue.append((model, behavior))

    def set_model_behavior(self, model: str, behavior: Behavior | None) -> None:
        with self._lock:
            if behavior is None:
                self._by_model.pop(model, None)
            else:
                self._by_model[model] = behavior

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._by_model.clear()
            self.default = self._initial_default

    @property
    def pending(self) -> int:
        """How many pushed one-shot behaviours are still waiting for a request."""
        return len(self._queue)

    def choose(self, model: str | None) -> Behavior:
        # Unlocked emptiness checks keep the benchmark path lock-free; a push that races
        # with a request simply applies to the next one.
        if self._queue:
            with self._lock:
                for index, (wanted, behavior) in enumerate(self._queue):
                    if wanted is None or wanted == model:
                        del self._queue[index]
                        return behavior
        if self._by_model and model is not None:
            sticky = self._by_model.get(model)
            if sticky is not None:
                return sticky
        return self.default
