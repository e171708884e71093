"""Canonical events rendered for Vercel AI SDK clients: the UI message stream (``ai`` 5+), the
data stream (``ai`` 4) and the plain text stream.

Each writer turns one event into the bytes to send (possibly none) and knows how to close the
stream. The UI message stream writer also builds the assistant ``UIMessage`` exactly as the
client assembles it from the chunks, for the conversation store.

The ``ai`` client validates every UI chunk against its schema and fails the whole stream on a
chunk it does not accept; before ``ai`` 5.0.217 those schemas were strict objects, so an
unknown field is as fatal as an unknown type. Only the fields of ``ai`` 5.0.0 are sent, except
``finish.finishReason``, which is sent when the configured oldest client is at least
``FINISH_REASON_SINCE`` (``[aisdk] client_version``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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

_encode = msgspec.json.encode

UI_DONE = b"data: [DONE]\n\n"
FINISH_REASON_SINCE = (5, 0, 92)  # ai 5.0.0 - 5.0.91 reject `finishReason` on `finish`

# Canonical finish reasons in the SDK's vocabulary (the same in ai 4 and 5+).
SDK_FINISH_REASONS: dict[FinishReason, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool-calls",
    "content_filter": "content-filter",
    "other": "other",
}


def parse_version(text: str) -> tuple[int, int, int]:
    """``"5.0.92"`` → ``(5, 0, 92)``; raises ``ValueError`` on anything else."""
    parts = text.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ValueError(f"not a version (MAJOR.MINOR.PATCH): {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def tool_input(arguments: str) -> Any:
    """A tool call's input as the SDK expects it: the parsed JSON, or the raw text if the
    model produced something that is not JSON (the app's tool gets to see and refuse it)."""
    if not arguments:
        return {}
    try:
        return msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return arguments


@dataclass(slots=True)
class _Call:
    id: str
    name: str
    arguments: list[str] = field(default_factory=list)
    part: dict[str, Any] | None = None  # its part of the assistant UI message


class _Calls:
    """Tool calls as they stream in: deltas are keyed by index, the first carries id and name."""

    __slots__ = ("by_index",)

    def __init__(self) -> None:
        self.by_index: dict[int, _Call] = {}

    def add(self, delta: ToolCallDelta) -> tuple[_Call | None, bool]:
        """The call this delta belongs to (None if it has no start), and whether it is new."""
        call = self.by_index.get(delta.index)
        if call is None:
            if delta.id is None:
                return None, False
            call = self.by_index[delta.index] = _Call(delta.id, delta.name or "")
            if delta.arguments:
                call.arguments.append(delta.arguments)
            return call, True
        if delta.arguments:
            call.arguments.append(delta.arguments)
        return call, False


def _sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + _encode(chunk) + b"\n\n"


class UIMessageStreamWriter:
    """Writes one UI message stream (one assistant message of one step) and builds that
    message. Call ``start``, ``event`` for each event, then ``end`` or ``error``."""

    __slots__ = (
        "_blocks",
        "_calls",
        "_finish",
        "_finish_reason",
        "_open",
        "message_id",
        "parts",
    )

    def __init__(self, message_id: str, *, finish_reason: bool) -> None:
        self.message_id = message_id
        self._finish_reason = finish_reason
        self._calls = _Calls()
        self._blocks = 0
        self._open: tuple[str, str, dict[str, Any]] | None = None  # (kind, id, part)
        self._finish: Finish | None = None
        self.parts: list[dict[str, Any]] = [{"type": "step-start"}]

    def start(self) -> bytes:
        return _sse({"type": "start", "messageId": self.message_id}) + _sse({"type": "start-step"})

    def _close_block(self) -> bytes:
        if self._open is None:
            return b""
        kind, block_id, part = self._open
        part["state"] = "done"
        self._open = None
        return _sse({"type": f"{kind}-end", "id": block_id})

    def _delta(self, kind: str, text: str) -> bytes:
        out = b""
        if self._open is None or self._open[0] != kind:
            out = self._close_block()
            self._blocks += 1
            block_id = f"{kind}-{self._blocks}"
            part: dict[str, Any] = {"type": kind, "text": "", "state": "streaming"}
            self.parts.append(part)
            self._open = (kind, block_id, part)
            out += _sse({"type": f"{kind}-start", "id": block_id})
        _, block_id, part = self._open
        part["text"] += text
        return out + _sse({"type": f"{kind}-delta", "id": block_id, "delta": text})

    def event(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return self._delta("text", event.text) if event.text else b""
        if isinstance(event, ReasoningDelta):
            return self._delta("reasoning", event.text) if event.text else b""
        if isinstance(event, ToolCallDelta):
            call, new = self._calls.add(event)
            if call is None:
                return b""
            out = self._close_block()
            if new:
                # The client adds the tool part here, in stream order.
                call.part = {"type": f"tool-{call.name}", "toolCallId": call.id}
                self.parts.append(call.part)
                out += _sse(
                    {"type": "tool-input-start", "toolCallId": call.id, "toolName": call.name}
                )
            if event.arguments:
                out += _sse(
                    {
                        "type": "tool-input-delta",
                        "toolCallId": call.id,
                        "inputTextDelta": event.arguments,
                    }
                )
            return out
        if isinstance(event, Finish):
            self._finish = event
        return b""  # usage is the gateway's business; the UI stream has no field for it

    @property
    def finished(self) -> bool:
        """Whether the model finished its answer (a stream that was cut did not)."""
        return self._finish is not None

    def end(self) -> bytes:
        """The closing chunks after the last event: open blocks, the tool calls' inputs,
        ``finish-step``, ``finish`` and ``[DONE]``."""
        out = self._close_block()
        for call in self._calls.by_index.values():
            value = tool_input("".join(call.arguments))
            out += _sse(
                {
                    "type": "tool-input-available",
                    "toolCallId": call.id,
                    "toolName": call.name,
                    "input": value,
                }
            )
            if call.part is not None:
                call.part.update(state="input-available", input=value)
        finish: dict[str, Any] = {"type": "finish"}
        if self._finish_reason and self._finish is not None:
            finish["finishReason"] = SDK_FINISH_REASONS[self._finish.reason]
        return out + _sse({"type": "finish-step"}) + _sse(finish) + UI_DONE

    def message(self) -> dict[str, Any]:
        """The assistant ``UIMessage`` the client has built from this stream."""
        return {"id": self.message_id, "role": "assistant", "parts": self.parts}

    @staticmethod
    def error(text: str) -> bytes:
        """The terminal error chunk (``useChat`` shows ``text``), then ``[DONE]``."""
        return _sse({"type": "error", "errorText": text}) + UI_DONE


def _line(code: bytes, value: Any) -> bytes:
    return code + b":" + _encode(value) + b"\n"


class DataStreamWriter:
    """Writes one ``ai`` 4 data stream: ``CODE:JSON`` lines, ``d:`` last."""

    __slots__ = ("_calls", "_finish", "_usage", "message_id")

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self._calls = _Calls()
        self._finish: Finish | None = None
        self._usage: Usage | None = None

    def start(self) -> bytes:
        return _line(b"f", {"messageId": self.message_id})

    def event(self, event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return _line(b"0", event.text) if event.text else b""
        if isinstance(event, ReasoningDelta):
            return _line(b"g", event.text) if event.text else b""
        if isinstance(event, ToolCallDelta):
            call, new = self._calls.add(event)
            if call is None:
                return b""
            out = b""
            if new:
                out += _line(b"b", {"toolCallId": call.id, "toolName": call.name})
            if event.arguments:
                out += _line(b"c", {"toolCallId": call.id, "argsTextDelta": event.arguments})
            return out
        if isinstance(event, Usage):
            self._usage = event
        elif isinstance(event, Finish):
            self._finish = event
        return b""

    def end(self) -> bytes:
        out = b""
        for call in self._calls.by_index.values():
            args = tool_input("".join(call.arguments))
            out += _line(b"9", {"toolCallId": call.id, "toolName": call.name, "args": args})
        reason = SDK_FINISH_REASONS[self._finish.reason] if self._finish else "unknown"
        usage = self._usage or Usage()
        tokens = {"promptTokens": usage.input_tokens, "completionTokens": usage.output_tokens}
        out += _line(b"e", {"finishReason": reason, "usage": tokens, "isContinued": False})
        return out + _line(b"d", {"finishReason": reason, "usage": tokens})

    @staticmethod
    def error(text: str) -> bytes:
        """The error line: ``useChat`` throws ``Error(text)``."""
        return _line(b"3", text)


class TextStreamWriter:
    """The text stream: the answer's text, nothing else (no framing, no errors)."""

    __slots__ = ()

    @staticmethod
    def event(event: Event) -> bytes:
        if isinstance(event, TextDelta):
            return event.text.encode()
        return b""
