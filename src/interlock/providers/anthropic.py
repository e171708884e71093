"""The Anthropic Messages adapter.

Request: the canonical ``ChatRequest`` as a Messages body (system messages hoisted into
``system``, consecutive same-role turns merged, tool calls and results as ``tool_use`` /
``tool_result`` blocks), always streamed. Reply: named SSE events translated into canonical
events; usage and finish are emitted once, in that order, at ``message_stop``.

Canonical usage counts cached tokens inside ``input_tokens`` (as OpenAI does), so the input
is Anthropic's ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens`` and
``cached_tokens`` is ``cache_read_input_tokens``.

Not sent, because the Messages API has no such field: ``seed`` and ``response_format``.
``temperature`` is clamped to Anthropic's range [0, 1] (OpenAI's is [0, 2]).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import msgspec

from interlock.chat.stop_reasons import FROM_ANTHROPIC
from interlock.chat.types import (
    ChatRequest,
    Event,
    Finish,
    ImagePart,
    Message,
    ReasoningDelta,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
)
from interlock.errors import InvalidRequest, UpstreamProtocolError
from interlock.providers.base import Timeouts
from interlock.providers.classify import classify_error_event
from interlock.providers.http import open_event_stream, post_for_json
from interlock.providers.sse import DEFAULT_MAX_BYTES
from interlock.settings import DeploymentConfig

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
"""Sent when the caller set no limit: Anthropic requires ``max_tokens``."""


class AnthropicProvider:
    """One Anthropic deployment. The session is injected and never closed here.

    ``max_event_bytes`` bounds one SSE line or event of the reply (``UpstreamProtocolError``
    beyond it). The key is sent as a header only: never logged, shown or put in an error.
    """

    def __init__(
        self,
        deployment: DeploymentConfig,
        session: aiohttp.ClientSession,
        api_key: str | None,
        *,
        max_event_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._session = session
        self._max_event_bytes = max_event_bytes
        self._model = deployment.model
        self._api_key = api_key
        self._url = f"{deployment.base_url}/v1/messages"
        self._headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "anthropic-version": ANTHROPIC_VERSION,
        }
        if api_key:
            self._headers["x-api-key"] = api_key
        self._json_headers = {**self._headers, "Accept": "application/json"}

    def __repr__(self) -> str:  # never show the key
        return f"AnthropicProvider(url={self._url!r}, model={self._model!r})"

    def stream(
        self, request: ChatRequest, timeouts: Timeouts, *, whole: bool = False
    ) -> AsyncGenerator[Event, None]:
        """``request``'s reply as canonical events (see ``Provider``): streamed, or asked for
        in one JSON reply when ``whole``."""
        return self._whole(request, timeouts) if whole else self._stream(request, timeouts)

    async def _whole(self, request: ChatRequest, timeouts: Timeouts) -> AsyncGenerator[Event, None]:
        body = build_request_body(request, self._model)
        body["stream"] = False
        reply = await post_for_json(
            self._session,
            self._url,
            body=msgspec.json.encode(body),
            headers=self._json_headers,
            timeouts=timeouts,
            secret=self._api_key,
        )
        for event in decode_message(reply, secret=self._api_key):
            yield event

    async def _stream(
        self, request: ChatRequest, timeouts: Timeouts
    ) -> AsyncGenerator[Event, None]:
        body = msgspec.json.encode(build_request_body(request, self._model))
        decoder = AnthropicStreamDecoder(secret=self._api_key)
        async with open_event_stream(
            self._session,
            self._url,
            body=body,
            headers=self._headers,
            timeouts=timeouts,
            secret=self._api_key,
            max_event_bytes=self._max_event_bytes,
        ) as events:
            async for name, data in events:
                for event in decoder.feed(name, data):
                    yield event
                if decoder.done:
                    await events.drain()
                    break
        # Released before the last events: see OpenAIProvider.stream.
        for event in decoder.end():
            yield event

    async def aclose(self) -> None:
        """Nothing to release: the session belongs to the app."""


# ---- request: canonical → wire -------------------------------------------------------------


def build_request_body(request: ChatRequest, model: str) -> dict[str, Any]:
    """The Messages body for ``request`` sent to ``model``.

    Raises ``InvalidRequest`` for what Anthropic cannot take (tool call arguments that are not
    a JSON object, images that are neither ``https:`` nor base64 ``data:`` URLs), before
    anything is sent.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "system":
            system.append(message.text())
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)  # Anthropic requires alternating roles
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        content = turn["content"]
        if turn["role"] == "user" and any(block["type"] == "tool_result" for block in content):
            # Tool results must open the user turn that answers the tool calls.
            content.sort(key=lambda block: block["type"] != "tool_result")

    body: dict[str, Any] = {
        "model": model,
        "messages": turns,
        "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
        "stream": True,
    }
    joined_system = "\n\n".join(text for text in system if text)
    if joined_system:
        body["system"] = joined_system
    if request.temperature is not None:
        body["temperature"] = min(max(request.temperature, 0.0), 1.0)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.top_k is not None:
        body["top_k"] = request.top_k
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    if request.tools:
        tools = []
        for tool in request.tools:
            wire: dict[str, Any] = {
                "name": tool.name,
                "input_schema": tool.parameters or {"type": "object", "properties": {}},
            }
            if tool.description is not None:
                wire["description"] = tool.description
            tools.append(wire)
        body["tools"] = tools
        choice = _tool_choice(request.tool_choice, request.parallel_tool_calls)
        if choice is not None:
            body["tool_choice"] = choice
    return body


def _tool_choice(choice: str | None, parallel: bool | None) -> dict[str, Any] | None:
    if choice is None and parallel is not False:
        return None
    if choice is None or choice == "auto":
        wire: dict[str, Any] = {"type": "auto"}
    elif choice == "none":
        return {"type": "none"}
    elif choice == "required":
        wire = {"type": "any"}
    else:
        wire = {"type": "tool", "name": choice}
    if parallel is False:
        wire["disable_parallel_tool_use"] = True
    return wire


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        result: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id or "",
        }
        content = _content_blocks(message)
        if content:
            only_text = all(block["type"] == "text" for block in content)
            result["content"] = message.text() if only_text else content
        return [result]
    blocks = _content_blocks(message)
    for call in message.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)}
        )
    return blocks


def _content_blocks(message: Message) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            if part.text:  # Anthropic refuses empty text blocks
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append({"type": "image", "source": _image_source(part.url)})
    return blocks


def _image_source(url: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if comma and encoding == "base64" and media_type.startswith("image/"):
            return {"type": "base64", "media_type": media_type, "data": data}
        raise InvalidRequest("An image data URL must be base64-encoded with an image/* type.")
    if url.startswith(("https://", "http://")):
        return {"type": "url", "url": url}
    raise InvalidRequest("An image must be an https:// URL or a base64 data: URL.")


def _input(arguments: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        raise InvalidRequest(
            "A tool call's arguments are not valid JSON.", param="messages"
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequest("A tool call's arguments must be a JSON object.", param="messages")
    return value


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
