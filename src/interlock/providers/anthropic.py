"""The Anthropic Messages adapter.

Request: the canonical ``ChatRequest`` as a Messages body (system messages hoisted into
``system``, consecutive same-role turns merged, tool calls and results as ``tool_use`` /
``tool_result`` blocks), streamed, or sent with ``"stream": false`` when the caller wants only
the whole answer. Reply: translated into canonical events by
``interlock.providers.anthropic_reply``; usage and finish are emitted once, in that order, at
the end.

Canonical usage counts cached tokens inside ``input_tokens`` (as OpenAI does), so the input
is Anthropic's ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens`` and
``cached_tokens`` is ``cache_read_input_tokens``.

Not sent, because the Messages API has no such field: ``seed`` and ``response_format``.
``temperature`` is clamped to Anthropic's range [0, 1] (OpenAI's is [0, 2]).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from interlock.chat.types import (
    ChatRequest,
    Event,
    ImagePart,
    Message,
    TextPart,
)
from interlock.errors import InvalidRequest
from interlock.providers.anthropic_reply import AnthropicStreamDecoder, decode_message
from interlock.providers.base import Timeouts
from interlock.providers.http import open_event_stream, post_for_json
from interlock.providers.sse import DEFAULT_MAX_BYTES
from interlock.providers.upstream_client import UpstreamClient, target_on
from interlock.settings import DeploymentConfig

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
"""Sent when the caller set no limit: Anthropic requires ``max_tokens``."""


class AnthropicProvider:
    """One Anthropic deployment. The upstream client is injected and never closed here.

    ``max_event_bytes`` bounds one SSE line or event of the reply (``UpstreamProtocolError``
    beyond it). The key is sent as a header only: never logged, shown or put in an error.
    """

    def __init__(
        self,
        deployment: DeploymentConfig,
        client: UpstreamClient,
        api_key: str | None,
        *,
        max_event_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self._client = client
        self._max_event_bytes = max_event_bytes
        self._model = deployment.model
        self._api_key = api_key
        self._url = f"{deployment.base_url}/v1/messages"
        self._target = target_on(client, self._url)
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
            self._client,
            self._target,
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
            self._client,
            self._target,
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
        """Nothing to release: the upstream client belongs to the app."""


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
