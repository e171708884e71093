"""Anthropic's Messages replies as canonical events: ``AnthropicStreamDecoder`` for a stream
of named SSE events, ``decode_message`` for a whole reply. Pure (no I/O): the adapter
(``interlock.providers.anthropic``) feeds them what it reads."""

from __future__ import annotations

from typing import Any

import msgspec

from interlock.chat.stop_reasons import FROM_ANTHROPIC
from interlock.chat.types import Event, Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from interlock.errors import UpstreamProtocolError
from interlock.providers.classify import classify_error_event

# ---- reply: wire → canonical ---------------------------------------------------------------


# The wire shapes, decoded straight into structs (unknown fields are skipped). gc=False:
# they never form reference cycles, and untracked objects are cheaper, once per chunk.


class _Usage(msgspec.Struct, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None


class _Message(msgspec.Struct, gc=False):
    usage: _Usage | None = None


class _MessageStart(msgspec.Struct, gc=False):
    message: _Message


class _Block(msgspec.Struct, gc=False):
    type: str
    id: str | None = None
    name: str | None = None
    text: str | None = None
    thinking: str | None = None
    input: dict[str, Any] | None = None


class _BlockStart(msgspec.Struct, gc=False):
    index: int
    content_block: _Block


class _Delta(msgspec.Struct, gc=False):
    type: str
    text: str | None = None
    partial_json: str | None = None
    thinking: str | None = None


class _BlockDelta(msgspec.Struct, gc=False):
    index: int
    delta: _Delta


class _BlockStop(msgspec.Struct, gc=False):
    index: int


class _MessageDeltaBody(msgspec.Struct, gc=False):
    stop_reason: str | None = None
    stop_sequence: str | None = None


class _MessageDelta(msgspec.Struct, gc=False):
    delta: _MessageDeltaBody | None = None
    usage: _Usage | None = None


class _ErrorBody(msgspec.Struct, gc=False):
    type: str | None = None
    message: str | None = None


class _ErrorEvent(msgspec.Struct, gc=False):
    error: _ErrorBody | None = None


_decode_block_delta = msgspec.json.Decoder(_BlockDelta).decode
_decode_block_start = msgspec.json.Decoder(_BlockStart).decode
_decode_block_stop = msgspec.json.Decoder(_BlockStop).decode
_decode_message_start = msgspec.json.Decoder(_MessageStart).decode
_decode_message_delta = msgspec.json.Decoder(_MessageDelta).decode
_decode_error = msgspec.json.Decoder(_ErrorEvent).decode


class _WholeMessage(msgspec.Struct, gc=False):
    """A whole (non-streamed) Messages reply, or an error reported with a 200."""

    type: str | None = None
    content: list[_Block] | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: _Usage | None = None
    error: _ErrorBody | None = None


_decode_whole_message = msgspec.json.Decoder(_WholeMessage).decode


def decode_message(data: bytes, *, secret: str | None = None) -> list[Event]:
    """The events of a whole reply, as its stream would have given them: the blocks'
    content in order, ``Usage`` if reported, then ``Finish``."""
    try:
        reply = _decode_whole_message(data)
    except msgspec.DecodeError:
        raise UpstreamProtocolError("The model provider sent a malformed reply.") from None
    if reply.type == "error" or reply.error is not None:
        error = reply.error or _ErrorBody()
        raise classify_error_event(error.type, None, error.message, secret=secret)
    if reply.content is None:
        raise UpstreamProtocolError("The model provider's reply has no answer in it.")
    events: list[Event] = []
    calls = 0
    for block in reply.content:
        if block.type == "text" and block.text:
            events.append(TextDelta(block.text))
        elif block.type == "thinking" and block.thinking:
            events.append(ReasoningDelta(block.thinking))
        elif block.type == "tool_use":
            arguments = msgspec.json.encode(block.input or {}).decode()
            events.append(ToolCallDelta(calls, block.id, block.name, arguments))
            calls += 1
    usage = reply.usage
    if usage is not None:
        cache_read = usage.cache_read_input_tokens or 0
        events.append(
            Usage(
                input_tokens=(usage.input_tokens or 0)
                + cache_read
                + (usage.cache_creation_input_tokens or 0),
                output_tokens=usage.output_tokens or 0,
                cached_tokens=cache_read,
            )
        )
    if reply.stop_reason is not None:
        reason = FROM_ANTHROPIC.get(reply.stop_reason, "other")
    else:
        reason = "tool_calls" if calls else "stop"
    stop_sequence = reply.stop_sequence if reply.stop_reason == "stop_sequence" else None
    events.append(Finish(reason, stop_sequence))
    return events


class _ToolBlock:
    __slots__ = ("has_arguments", "index")

    def __init__(self, index: int) -> None:
        self.index = index  # among tool calls only
        self.has_arguments = False


class AnthropicStreamDecoder:
    """Turns named events into canonical events; ``end()`` closes the stream.

    Pure (no I/O): one per reply. ``done`` turns true at ``message_stop``. Unknown event
    types (``ping``, and any Anthropic adds later) are skipped, as Anthropic asks.
    """

    __slots__ = (
        "_cache_creation_tokens",
        "_cache_read_tokens",
        "_input_tokens",
        "_output_tokens",
        "_saw_usage",
        "_secret",
        "_stop_reason",
        "_stop_sequence",
        "_tool_blocks",
        "_tool_count",
        "done",
    )

    def __init__(self, *, secret: str | None = None) -> None:
        self.done = False
        self._secret = secret
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None
        self._tool_blocks: dict[int, _ToolBlock] = {}  # by content block index
        self._tool_count = 0
        self._saw_usage = False
        self._input_tokens = 0
        self._cache_read_tokens = 0
        self._cache_creation_tokens = 0
        self._output_tokens = 0

    def feed(self, event: str, data: bytes) -> list[Event]:
        """The events of one SSE event (often exactly one, sometimes none)."""
        try:
            if event == "content_block_delta":
                return self._block_delta(_decode_block_delta(data))
            if event == "content_block_start":
                return self._block_start(_decode_block_start(data))
            if event == "content_block_stop":
                return self._block_stop(_decode_block_stop(data))
            if event == "message_start":
                self._add_usage(_decode_message_start(data).message.usage)
            elif event == "message_delta":
                message_delta = _decode_message_delta(data)
                if message_delta.delta is not None and message_delta.delta.stop_reason:
                    self._stop_reason = message_delta.delta.stop_reason
                    self._stop_sequence = message_delta.delta.stop_sequence
                self._add_usage(message_delta.usage)
            elif event == "message_stop":
                self.done = True
            elif event == "error":
                error = _decode_error(data).error or _ErrorBody()
                raise classify_error_event(error.type, None, error.message, secret=self._secret)
        except msgspec.DecodeError:
            raise UpstreamProtocolError(
                "The model provider sent a malformed event in its stream."
            ) from None
        return []

    def _block_start(self, start: _BlockStart) -> list[Event]:
        block = start.content_block
        if block.type == "text":
            return [TextDelta(block.text)] if block.text else []
        if block.type == "thinking":
            return [ReasoningDelta(block.thinking)] if block.thinking else []
        if block.type == "tool_use":
            tool = _ToolBlock(self._tool_count)
            self._tool_count += 1
            self._tool_blocks[start.index] = tool
            arguments = ""
            if block.input:  # normally {} with the input streamed as deltas
                arguments = msgspec.json.encode(block.input).decode()
                tool.has_arguments = True
            return [ToolCallDelta(tool.index, block.id, block.name, arguments)]
        return []  # server tools, redacted thinking…: nothing the caller's protocol carries

    def _block_delta(self, block_delta: _BlockDelta) -> list[Event]:
        delta = block_delta.delta
        kind = delta.type
        if kind == "text_delta":
            return [TextDelta(delta.text)] if delta.text else []
        if kind == "input_json_delta":
            tool = self._tool_blocks.get(block_delta.index)
            if tool is None:
                raise UpstreamProtocolError(
                    "The model provider streamed tool input for a block it did not start."
                )
            if not delta.partial_json:
                return []
            tool.has_arguments = True
            return [ToolCallDelta(tool.index, None, None, delta.partial_json)]
        if kind == "thinking_delta":
            return [ReasoningDelta(delta.thinking)] if delta.thinking else []
        return []  # signature_delta, citations_delta…

    def _block_stop(self, stop: _BlockStop) -> list[Event]:
        tool = self._tool_blocks.get(stop.index)
        if tool is not None and not tool.has_arguments:
            # A call without parameters streams no input: say "{}" so the arguments parse.
            tool.has_arguments = True
            return [ToolCallDelta(tool.index, None, None, "{}")]
        return []

    def _add_usage(self, usage: _Usage | None) -> None:
        # message_start carries the input; message_delta the cumulative output (and, in
        # newer API versions, the input again): the latest value of each field wins.
        if usage is None:
            return
        self._saw_usage = True
        if usage.input_tokens is not None:
            self._input_tokens = usage.input_tokens
        if usage.cache_read_input_tokens is not None:
            self._cache_read_tokens = usage.cache_read_input_tokens
        if usage.cache_creation_input_tokens is not None:
            self._cache_creation_tokens = usage.cache_creation_input_tokens
        if usage.output_tokens is not None:
            self._output_tokens = usage.output_tokens

    def end(self) -> list[Event]:
        """The closing events (``Usage`` if reported, then ``Finish``) once the stream is
        over; ``UpstreamProtocolError`` if it ended without ``message_stop``."""
        if not self.done:
            raise UpstreamProtocolError("The model provider's stream ended early.")
        events: list[Event] = []
        if self._saw_usage:
            events.append(
                Usage(
                    input_tokens=self._input_tokens
                    + self._cache_read_tokens
                    + self._cache_creation_tokens,
                    output_tokens=self._output_tokens,
                    cached_tokens=self._cache_read_tokens,
                )
            )
        if self._stop_reason is not None:
            reason = FROM_ANTHROPIC.get(self._stop_reason, "other")
        else:
            reason = "tool_calls" if self._tool_count else "stop"
        stop_sequence = self._stop_sequence if self._stop_reason == "stop_sequence" else None
        events.append(Finish(reason, stop_sequence))
        return events
