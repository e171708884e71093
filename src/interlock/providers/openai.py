"""The OpenAI Chat Completions adapter, for OpenAI and any OpenAI-compatible server.

Request: the canonical ``ChatRequest`` as a Chat Completions body, streamed with
``stream_options.include_usage``, or with ``"stream": false`` when the caller wants only the
whole answer. Reply: ``data:`` chunks (or the one reply) translated into canonical events;
usage and finish are held back and emitted once, in that order, after the stream ended
(``[DONE]``, or the connection closing after a ``finish_reason``).

``max_tokens``: OpenAI deprecated it for ``max_completion_tokens`` and its reasoning models
refuse it, while many OpenAI-compatible servers (vLLM, Ollama, llama.cpp, older gateways)
only know ``max_tokens``. The rule: ``max_completion_tokens`` for OpenAI's own API host,
``max_tokens`` for every other base URL.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlsplit

import msgspec

from interlock.chat.types import (
    ChatRequest,
    Event,
    Finish,
    FinishReason,
    ImagePart,
    Message,
    ReasoningDelta,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
)
from interlock.errors import UpstreamProtocolError
from interlock.providers.base import Timeouts
from interlock.providers.classify import classify_error_event
from interlock.providers.http import WHOLE_REPLY_LIMIT, open_event_stream, post_for_json
from interlock.providers.sse import DEFAULT_MAX_BYTES
from interlock.providers.upstream_client import UpstreamClient, target_on
from interlock.settings import DeploymentConfig

MAX_COMPLETION_TOKENS_HOSTS = frozenset({"api.openai.com"})
"""Hosts that take ``max_completion_tokens``; every other server gets ``max_tokens``."""

_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "eos": "stop",  # some compatible servers
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class OpenAIProvider:
    """One OpenAI-compatible deployment. The upstream client is injected and never closed here.

    ``max_event_bytes`` bounds one SSE line or event of the reply, ``max_reply_bytes`` a
    whole reply (``UpstreamProtocolError`` beyond them). The key is sent as a header only:
    never logged, shown or put in an error.
    """

    def __init__(
        self,
        deployment: DeploymentConfig,
        client: UpstreamClient,
        api_key: str | None,
        *,
        max_event_bytes: int = DEFAULT_MAX_BYTES,
        max_reply_bytes: int = WHOLE_REPLY_LIMIT,
    ) -> None:
        self._client = client
        self._max_event_bytes = max_event_bytes
        self._max_reply_bytes = max_reply_bytes
        self._model = deployment.model
        self._api_key = api_key
        self._url = f"{deployment.base_url}/chat/completions"
        self._target = target_on(client, self._url)
        self._max_tokens_field = max_tokens_field_for(deployment.base_url)
        self._headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._json_headers = {**self._headers, "Accept": "application/json"}

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIProvider(url={self._url!r}, model={self._model!r})"

    def stream(
        self, request: ChatRequest, timeouts: Timeouts, *, whole: bool = False
    ) -> AsyncGenerator[Event, None]:
        """``request``'s reply as canonical events (see ``Provider``): streamed, or asked for
        in one JSON reply when ``whole``."""
        return self._whole(request, timeouts) if whole else self._stream(request, timeouts)

    async def _whole(self, request: ChatRequest, timeouts: Timeouts) -> AsyncGenerator[Event, None]:
        body = build_request_body(request, self._model, max_tokens_field=self._max_tokens_field)
        body["stream"] = False
        del body["stream_options"]
        reply = await post_for_json(
            self._client,
            self._target,
            body=msgspec.json.encode(body),
            headers=self._json_headers,
            timeouts=timeouts,
            secret=self._api_key,
            limit=self._max_reply_bytes,
        )
        for event in decode_completion(reply, secret=self._api_key):
            yield event

    async def _stream(
        self, request: ChatRequest, timeouts: Timeouts
    ) -> AsyncGenerator[Event, None]:
        body = msgspec.json.encode(
            build_request_body(request, self._model, max_tokens_field=self._max_tokens_field)
        )
        decoder = OpenAIStreamDecoder(secret=self._api_key)
        async with open_event_stream(
            self._client,
            self._target,
            body=body,
            headers=self._headers,
            timeouts=timeouts,
            secret=self._api_key,
            max_event_bytes=self._max_event_bytes,
        ) as events:
            async for _, data in events:
                for event in decoder.feed(data):
                    yield event
                if decoder.done:
                    await events.drain()
                    break
        # The response is released before the last events, so a consumer that stops
        # iterating after ``Finish`` (without ``aclose``) does not hold the connection.
        for event in decoder.end():
            yield event

    async def aclose(self) -> None:
        """Nothing to release: the upstream client belongs to the app."""


# ---- request: canonical → wire -------------------------------------------------------------


def max_tokens_field_for(base_url: str) -> str:
    """``max_completion_tokens`` for OpenAI's own API, ``max_tokens`` for any other server."""
    host = urlsplit(base_url).hostname or ""
    return "max_completion_tokens" if host in MAX_COMPLETION_TOKENS_HOSTS else "max_tokens"


def build_request_body(
    request: ChatRequest, model: str, *, max_tokens_field: str = "max_tokens"
) -> dict[str, Any]:
    """The Chat Completions body for ``request`` sent to ``model``; only fields that are set."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [_message(message) for message in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.max_tokens is not None:
        body[max_tokens_field] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = request.stop
    if request.seed is not None:
        body["seed"] = request.seed
    if request.response_format is not None:
        body["response_format"] = request.response_format
    if request.user is not None:
        body["user"] = request.user
    if request.tools:
        # OpenAI refuses tool_choice and parallel_tool_calls without tools.
        body["tools"] = [
            {
                "type": "function",
                "function": _function(tool.name, tool.description, tool.parameters),
            }
            for tool in request.tools
        ]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    return body


def _function(
    name: str, description: str | None, parameters: dict[str, Any] | None
) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if description is not None:
        function["description"] = description
    if parameters is not None:
        function["parameters"] = parameters
    return function


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _message(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        wire: dict[str, Any] = {"role": "tool", "content": message.text()}
        if message.tool_call_id is not None:
            wire["tool_call_id"] = message.tool_call_id
        return wire
    wire = {"role": message.role, "content": _content(message)}
    if message.tool_calls:
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
        if not wire["content"]:
            wire["content"] = None  # an assistant turn that only calls tools
    if message.name is not None:
        wire["name"] = message.name
    return wire


def _content(message: Message) -> str | list[dict[str, Any]]:
    parts = message.content
    if all(isinstance(part, TextPart) for part in parts):
        return message.text()
    wire: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, TextPart):
            wire.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            image: dict[str, Any] = {"url": part.url}
            if part.detail is not None:
                image["detail"] = part.detail
            wire.append({"type": "image_url", "image_url": image})
    return wire


# ---- reply: wire → canonical ---------------------------------------------------------------


# The wire shapes, decoded straight into structs (unknown fields are skipped). gc=False:
# they never form reference cycles, and untracked objects are cheaper, once per chunk.


class _Function(msgspec.Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct, gc=False):
    index: int | None = None
    id: str | None = None
    function: _Function | None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    reasoning_content: str | None = None  # DeepSeek, vLLM, llama.cpp
    reasoning: str | None = None  # OpenRouter, Ollama
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct, gc=False):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None


class _Error(msgspec.Struct, gc=False):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class _Reply(msgspec.Struct, gc=False):
    """What a chunk and a whole reply share: the usage, and a failure they may report."""

    usage: _Usage | None = None
    error: _Error | str | None = None
    # vLLM-style servers report a failure as the reply itself: {"object": "error", …}.
    object: str | None = None
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class _Chunk(_Reply, gc=False):
    choices: list[_Choice] | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


class _ReplyChoice(msgspec.Struct, gc=False):
    message: _Delta | None = None  # a whole message has a delta's fields, all at once
    finish_reason: str | None = None


class _Completion(_Reply, gc=False):
    """A whole (non-streamed) Chat Completions reply, or an error reported with a 200."""

    choices: list[_ReplyChoice] | None = None


_decode_completion = msgspec.json.Decoder(_Completion).decode


def decode_completion(data: bytes, *, secret: str | None = None) -> list[Event]:
    """The events of a whole reply, as its stream would have given them: the content, the
    tool calls, ``Usage`` if reported, then ``Finish``. Only the first choice is read (the
    gateway never asks for more)."""
    try:
        reply = _decode_completion(data)
    except msgspec.DecodeError:
        raise UpstreamProtocolError("The model provider sent a malformed reply.") from None
    _raise_reported_error(reply, secret)
    if not reply.choices:
        raise UpstreamProtocolError("The model provider's reply has no answer in it.")
    choice = reply.choices[0]
    events: list[Event] = []
    message = choice.message
    calls = 0
    if message is not None:
        reasoning = message.reasoning_content or message.reasoning
        if reasoning:
            events.append(ReasoningDelta(reasoning))
        if message.content:
            events.append(TextDelta(message.content))
        if message.refusal:
            events.append(TextDelta(message.refusal))
        for index, call in enumerate(message.tool_calls or ()):
            function = call.function
            name = function.name if function is not None else None
            arguments = (function.arguments if function is not None else None) or ""
            events.append(ToolCallDelta(index, call.id, name, arguments))
            calls += 1
    if reply.usage is not None:
        events.append(_usage(reply.usage))
    if choice.finish_reason:
        finish = _FINISH_REASONS.get(choice.finish_reason, "other")
    else:
        finish = "tool_calls" if calls else "stop"
    events.append(Finish(finish))
    return events


def _raise_reported_error(reply: _Reply, secret: str | None) -> None:
    """Raise the failure a reply reports in its body (``{"error": …}``, or vLLM's
    ``{"object": "error", …}``), if any."""
    error = reply.error
    if error is not None:
        if isinstance(error, str):
            raise classify_error_event(None, None, error, secret=secret)
        raise classify_error_event(error.type, error.code, error.message, secret=secret)
    if reply.object == "error":
        raise classify_error_event(reply.type, reply.code, reply.message, secret=secret)


def _usage(usage: _Usage) -> Usage:
    details = usage.prompt_tokens_details
    return Usage(
        input_tokens=usage.prompt_tokens or 0,
        output_tokens=usage.completion_tokens or 0,
        cached_tokens=(details.cached_tokens or 0) if details is not None else 0,
    )


class OpenAIStreamDecoder:
    """Turns the ``data`` of each chunk into events; ``end()`` closes the stream.

    Pure (no I/O): one per reply. ``done`` turns true at ``[DONE]``.
    """

    __slots__ = ("_finish", "_secret", "_tool_ids", "_usage", "done")

    def __init__(self, *, secret: str | None = None) -> None:
        self.done = False
        self._secret = secret
        self._finish: FinishReason | None = None
        self._usage: _Usage | None = None
        self._tool_ids: list[str | None] = []  # by tool call index: the calls started so far

    def feed(self, data: bytes) -> list[Event]:
        """The events of one chunk (often exactly one, sometimes none)."""
        if data == b"[DONE]":
            self.done = True
            return []
        try:
            chunk = _decode_chunk(data)
        except msgspec.DecodeError:
            raise UpstreamProtocolError(
                "The model provider sent a malformed event in its stream."
            ) from None
        _raise_reported_error(chunk, self._secret)
        if chunk.usage is not None:
            self._usage = chunk.usage  # some servers repeat it on every chunk: keep the last
        if not chunk.choices:
            return []
        events: list[Event] = []
        for choice in chunk.choices:
            delta = choice.delta
            if delta is not None:
                reasoning = delta.reasoning_content or delta.reasoning
                if reasoning:
                    events.append(ReasoningDelta(reasoning))
                if delta.content:
                    events.append(TextDelta(delta.content))
                if delta.refusal:
                    events.append(TextDelta(delta.refusal))
                if delta.tool_calls:
                    self._add_tool_calls(delta.tool_calls, events)
            if choice.finish_reason:
                self._finish = _FINISH_REASONS.get(choice.finish_reason, "other")
        return events

    def _add_tool_calls(self, calls: list[_ToolCall], events: list[Event]) -> None:
        started = self._tool_ids
        for call in calls:
            index = call.index
            if index is None:  # servers that omit it: a new id starts a new call
                new = call.id is not None and call.id not in started
                index = len(started) if new or not started else len(started) - 1
            function = call.function
            name = function.name if function is not None else None
            arguments = (function.arguments if function is not None else None) or ""
            if index >= len(started):
                if index > len(started):
                    raise UpstreamProtocolError(
                        "The model provider sent tool calls out of order in its stream."
                    )
                started.append(call.id)
                events.append(ToolCallDelta(index, call.id, name, arguments))
            elif arguments:
                # id and name only on a call's first delta, even if the server repeats them.
                events.append(ToolCallDelta(index, None, None, arguments))

    def end(self) -> list[Event]:
        """The closing events (``Usage`` if reported, then ``Finish``), once the stream is
        over; ``UpstreamProtocolError`` if it ended without ``[DONE]`` or a finish reason."""
        if not self.done and self._finish is None:
            raise UpstreamProtocolError("The model provider's stream ended early.")
        events: list[Event] = []
        if self._usage is not None:
            events.append(_usage(self._usage))
        finish = self._finish or ("tool_calls" if self._tool_ids else "stop")
        events.append(Finish(finish))
        return events
