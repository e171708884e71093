"""Canonical results and events rendered as Anthropic Messages responses.

A stream is named SSE events, ``event: <type>`` then ``data: <JSON of the same type>``, and
no ``[DONE]``: ``message_start``, ``ping``, then per content block ``content_block_start``,
its ``content_block_delta``s and ``content_block_stop``, then ``message_delta`` (stop reason
and the final usage) and ``message_stop``. A failure after the 200 ends it with ``event:
error`` instead.

Canonical events do not say where a block ends, so ``EventWriter`` closes the open block
when the next event belongs to another one (reasoning → text → tool call…) and at the end.
Canonical usage counts cached tokens inside ``input_tokens`` (see the Anthropic provider);
here they are split back out as ``cache_read_input_tokens``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from interlock.api.errors import anthropic_error_body
from interlock.chat.stop_reasons import TO_ANTHROPIC
from interlock.chat.types import (
    ChatResult,
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from interlock.errors import InterlockError, UpstreamProtocolError

_encode = msgspec.json.encode

PING = b'event: ping\ndata: {"type":"ping"}\n\n'
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def stop_fields(reason: FinishReason, stop_sequence: str | None) -> dict[str, str | None]:
    """``stop_reason`` and ``stop_sequence``: ``stop_sequence`` only when the provider said
    which of the caller's sequences ended the answer."""
    if reason == "stop" and stop_sequence is not None:
        return {"stop_reason": "stop_sequence", "stop_sequence": stop_sequence}
    return {"stop_reason": TO_ANTHROPIC[reason], "stop_sequence": None}


def usage_body(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": max(0, usage.input_tokens - usage.cached_tokens),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.output_tokens,
    }


def tool_input(call: ToolCall) -> dict[str, Any]:
    """A tool call's arguments as the JSON object Anthropic's ``input`` must be."""
    if not call.arguments.strip():
        return {}
    try:
        value = msgspec.json.decode(call.arguments)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamProtocolError(
            f"The model produced arguments for the tool {call.name[:128]!r} "
            "that are not a JSON object."
        )
    return value


def message_body(message_id: str, model: str, result: ChatResult) -> dict[str, Any]:
    """The ``message`` object of a non-streaming answer."""
    content: list[dict[str, Any]] = []
    if result.reasoning:
        content.append({"type": "thinking", "thinking": result.reasoning, "signature": ""})
    if result.text:
        content.append({"type": "text", "text": result.text})
    for call in result.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call)}
        )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        **stop_fields(result.finish_reason, result.stop_sequence),
        "usage": usage_body(result.usage),
    }


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One named event; ``data["type"]`` is ``name``, as the SDK expects."""
    return b"event: " + name.encode() + b"\ndata: " + _encode(data) + b"\n\n"


def error_event(error: InterlockError, request_id: str | None = None) -> bytes:
    """The terminal ``event: error`` of a stream that failed after its 200."""
    return sse("error", anthropic_error_body(error, request_id))


BlockKind = Literal["text", "thinking", "tool_use"]


class EventWriter:
    """Writes the SSE events of one Anthropic stream from canonical events.

    ``start`` once, ``feed`` every canonical event in order, ``end`` once the stream is
    whole. Raises ``UpstreamProtocolError`` for a canonical stream that cannot be rendered
    (a tool call's arguments arriving after another block began, or before its start).
    """

    __slots__ = (
        "_block",
        "_blocks",
        "_delta_head",
        "_finish",
        "_kind",
        "_message_id",
        "_model",
        "_tool",
        "_tool_blocks",
        "_usage",
    )

    def __init__(self, message_id: str, model: str) -> None:
        self._message_id = message_id
        self._model = model
        self._blocks = 0  # blocks started so far; the open one is ``_blocks - 1``
        self._kind: BlockKind | None = None  # the open block's kind
        self._tool: int | None = None  # the canonical index of the open tool call
        self._tool_blocks: set[int] = set()  # canonical indexes of tool calls started
        self._delta_head = b""
        self._usage: Usage | None = None
        self._finish: Finish | None = None

    def start(self, input_tokens: int) -> bytes:
        """``message_start`` (with the input tokens as known so far) and a ``ping``."""
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 0,
            },
        }
        return sse("message_start", {"type": "message_start", "message": message}) + PING

    def feed(self, event: Event) -> bytes:
        """The SSE bytes for one canonical event (empty for usage and finish, kept for
        ``end``)."""
        if isinstance(event, TextDelta):
            return self._delta("text", b'"text_delta","text":', event.text)
        if isinstance(event, ReasoningDelta):
            return self._delta("thinking", b'"thinking_delta","thinking":', event.text)
        if isinstance(event, ToolCallDelta):
            return self._tool_call(event)
        if isinstance(event, Usage):
            self._usage = event
        else:
            self._finish = event
        return b""

    def end(self) -> bytes:
        """Close the open block, then ``message_delta`` and ``message_stop``."""
        if self._finish is None:
            raise UpstreamProtocolError("The model provider's stream ended early.")
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": stop_fields(self._finish.reason, self._finish.stop_sequence),
            "usage": usage_body(self._usage) if self._usage is not None else {"output_tokens": 0},
        }
        return self._close() + sse("message_delta", delta) + MESSAGE_STOP

    def _close(self) -> bytes:
        if self._kind is None:
            return b""
        self._kind = None
        self._tool = None
        index = self._blocks - 1
        return sse("content_block_stop", {"type": "content_block_stop", "index": index})

    def _open(self, kind: BlockKind, block: dict[str, Any]) -> bytes:
        out = self._close()
        index = self._blocks
        self._blocks += 1
        self._kind = kind
        self._delta_head = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
            + str(index).encode()
            + b',"delta":{"type":'
        )
        start = {"type": "content_block_start", "index": index, "content_block": block}
        return out + sse("content_block_start", start)

    def _delta(self, kind: BlockKind, head: bytes, text: str) -> bytes:
        if not text:
            return b""
        out = b""
        if self._kind != kind:
            if kind == "text":
                out = self._open("text", {"type": "text", "text": ""})
            else:
                out = self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        return out + self._delta_head + head + _encode(text) + b"}}\n\n"

    def _tool_call(self, delta: ToolCallDelta) -> bytes:
        out = b""
        if delta.id is not None and delta.index not in self._tool_blocks:
            self._tool_blocks.add(delta.index)
            block = {"type": "tool_use", "id": delta.id, "name": delta.name or "", "input": {}}
            out = self._open("tool_use", block)
            self._tool = delta.index
        elif self._tool != delta.index:
            raise UpstreamProtocolError(
                "The model provider interleaved tool calls in a way that cannot be streamed."
            )
        if not delta.arguments:
            return out
        return (
            out
            + self._delta_head
            + b'"input_json_delta","partial_json":'
            + _encode(delta.arguments)
            + b"}}\n\n"
        )
