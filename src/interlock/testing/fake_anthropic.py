"""Anthropic Messages as the fake upstream speaks it (wire-protocols.md §3).

Streams are named SSE events, no ``[DONE]``: ``message_start``, ``content_block_start``,
``ping``, ``content_block_delta``…, ``content_block_stop``, ``message_delta`` (stop reason and
cumulative ``output_tokens``), ``message_stop``. Like the real API, ``message_start`` reports
``output_tokens: 1`` and ``message_delta`` the total. Requests must carry ``anthropic-version``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from interlock.testing.fake_behavior import Behavior
from interlock.testing.fake_ledger import ProtocolName
from interlock.testing.fake_reply import (
    BadRequest,
    ChatView,
    Headers,
    RenderedStream,
    Reply,
    find_header,
)

_encode = msgspec.json.encode

# status → (type, message), as Anthropic sends them.
_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}

# OpenAI finish reasons (the Behavior vocabulary) → Anthropic stop reasons.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}

_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
_TEXT_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'  # noqa: E501
_EVENT_END = b"}}\n\n"


def _stop_reason(reply: Reply) -> str:
    return _STOP_REASONS.get(reply.finish_reason, reply.finish_reason)


def _stop_sequence(view: ChatView, reply: Reply) -> str | None:
    """With the stop reason ``stop_sequence``, the request's first stop sequence."""
    sequences = view.stop_sequences
    if _stop_reason(reply) == "stop_sequence" and isinstance(sequences, list) and sequences:
        return str(sequences[0])
    return None


def _usage(reply: Reply, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": reply.prompt_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _tool_input(arguments: str) -> Any:
    try:
        return msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        return {}  # a test streaming broken JSON on purpose still gets a message object


def _event(name: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + _encode(data) + b"\n\n"


class AnthropicWire:
    """The fake's ``/v1/messages`` endpoint."""

    name: ProtocolName = "anthropic"
    request_id_header = b"request-id"

    def parse(self, doc: Any, headers: Headers) -> ChatView:
        if find_header(headers, b"anthropic-version") is None:
            raise BadRequest("anthropic-version: header is required")
        if not isinstance(doc, dict):
            raise BadRequest("The request body must be a JSON object.")
        model = doc.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("model: Field required")
        max_tokens = doc.get("max_tokens")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest("max_tokens: Field required (an integer of at least 1)")
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: at least one message is required")
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("stream: Input should be a valid boolean")
        return ChatView(
            model=model,
            stream=stream,
            stream_usage=True,
            max_tokens=max_tokens,
            messages=messages,
            system=doc.get("system"),
            stop_sequences=doc.get("stop_sequences"),
        )

    def key_matches(self, headers: Headers, key: str) -> bool:
        wanted = key.encode()
        return (
            find_header(headers, b"x-api-key") == wanted
            or find_header(headers, b"authorization") == b"Bearer " + wanted
        )

    def error_body(
        self,
        status: int,
        request_id: str,
        *,
        error_type: str | None = None,
        message: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> bytes:
        default_type, default_message = _ERRORS.get(
            status,
            ("api_error", "Internal server error")
            if status >= 500
            else ("invalid_request_error", "The request was refused."),
        )
        error = {"type": error_type or default_type, "message": message or default_message}
        return _encode({"type": "error", "error": error, "request_id": request_id})

    def response_body(self, view: ChatView, reply: Reply, seq: int) -> bytes:
        content: list[dict[str, Any]] = []
        if reply.tokens or reply.tool_call is None:
            content.append({"type": "text", "text": reply.text})
        if reply.tool_call is not None:
            content.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{seq}",
                    "name": reply.tool_call.name,
                    "input": _tool_input(reply.tool_call.arguments),
                }
            )
        message: dict[str, Any] = {
            "id": f"msg_fake{seq}",
            "type": "message",
            "role": "assistant",
            "model": view.model,
            "content": content,
            "stop_reason": _stop_reason(reply),
            "stop_sequence": _stop_sequence(view, reply),
        }
        if reply.include_usage:
            message["usage"] = _usage(reply, reply.chunk_count)
        return _encode(message)

    def render_stream(self, view: ChatView, reply: Reply, seq: int) -> RenderedStream:
        message: dict[str, Any] = {
            "id": f"msg_fake{seq}",
            "type": "message",
            "role": "assistant",
            "model": view.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if reply.include_usage:
            message["usage"] = _usage(reply, 1)
        preamble = _event(b"message_start", {"type": "message_start", "message": message})
        steps = [_TEXT_DELTA + _encode(token) + _EVENT_END for token in reply.tokens]
        text_block = bool(reply.tokens) or reply.tool_call is None
        if text_block:
            preamble += _event(
                b"content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        last_index = 0
        if reply.tool_call is not None:
            last_index = 1 if text_block else 0
            tool_start = _event(
                b"content_block_start",
                {
                    "type": "content_block_start",
                    "index": last_index,
                    "content_block": {
                        "type": "tool_use",
                        "id": f"toolu_fake{seq}",
                        "name": reply.tool_call.name,
                        "input": {},
                    },
                },
            )
            fragments = [
                _event(
                    b"content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": last_index,
                        "delta": {"type": "input_json_delta", "partial_json": fragment},
                    },
                )
                for fragment in reply.fragments
            ]
            if text_block:
                fragments[0] = _block_stop(0) + tool_start + fragments[0]
            else:
                preamble += tool_start
            steps.extend(fragments)
        preamble += _PING
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {
                "stop_reason": _stop_reason(reply),
                "stop_sequence": _stop_sequence(view, reply),
            },
        }
        if reply.include_usage:
            delta["usage"] = {"output_tokens": reply.chunk_count}
        closing = _block_stop(last_index) + _event(b"message_delta", delta) + _MESSAGE_STOP
        return RenderedStream(preamble=preamble, steps=steps, closing=closing)

    def stream_error(self, behavior: Behavior) -> bytes:
        error = {
            "type": behavior.error_type or "overloaded_error",
            "message": behavior.error_message or "Overloaded",
        }
        return _event(b"error", {"type": "error", "error": error})

    def malformed_event(self) -> bytes:
        # Named, so that clients which skip data-only events still try to parse it.
        return b"event: content_block_delta\ndata: {this is not json\n\n"

    def models_body(self, models: Sequence[str]) -> bytes:
        data = [
            {
                "type": "model",
                "id": model,
                "display_name": model,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for model in models
        ]
        return _encode(
            {
                "data": data,
                "has_more": False,
                "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None,
            }
        )


def _block_stop(index: int) -> bytes:
    return b'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n' % index
