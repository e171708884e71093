"""OpenAI Chat Completions as the fake upstream speaks it (wire-protocols.md §2).

Streaming chunks share one ``id`` and ``created``; the first carries
``{"role":"assistant","content":""}``, every chunk carries ``"usage": null`` except the usage
chunk (``"choices": []``) sent before ``data: [DONE]`` when the request asked for
``stream_options.include_usage``. Chunks are assembled from pre-encoded pieces: the JSON
encoder only ever sees the model name and each token.
"""

from __future__ import annotations

import time
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

# status → (type, code, message), as OpenAI sends them.
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "You are not allowed to sample from this model."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, "The server had an error while processing your request."),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}

_CHOICE_TAIL = b',"logprobs":null,"finish_reason":null}],"usage":null}\n\n'
_ROLE_DELTA = b'{"role":"assistant","content":""}'
_DONE = b"data: [DONE]\n\n"
_USAGE_DETAILS = (
    b',"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}'
)


def _usage_json(reply: Reply) -> bytes:
    prompt, completion = reply.prompt_tokens, reply.chunk_count
    return (
        b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d'
        % (prompt, completion, prompt + completion)
        + _USAGE_DETAILS
    )


def _positive_int(doc: dict[str, Any], name: str) -> int | None:
    value = doc.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"Invalid '{name}': expected an integer of at least 1.", name)
    return value


class OpenAIWire:
    """The fake's ``/v1/chat/completions`` endpoint."""

    name: ProtocolName = "openai"
    request_id_header = b"x-request-id"

    def parse(self, doc: Any, headers: Headers) -> ChatView:
        if not isinstance(doc, dict):
            raise BadRequest("The request body must be a JSON object.")
        model = doc.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("You must provide a model parameter.", "model")
        messages = doc.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty array.", "messages")
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise BadRequest("Invalid 'stream': expected a boolean.", "stream")
        options = doc.get("stream_options")
        if options is not None and not stream:
            raise BadRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
            )
        cap = _positive_int(doc, "max_completion_tokens")
        if cap is None:
            cap = _positive_int(doc, "max_tokens")
        return ChatView(
            model=model,
            stream=stream,
            stream_usage=isinstance(options, dict) and options.get("include_usage") is True,
            max_tokens=cap,
            messages=messages,
        )

    def key_matches(self, headers: Headers, key: str) -> bool:
        return find_header(headers, b"authorization") == b"Bearer " + key.encode()

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
        default_type, default_code, default_message = _ERRORS.get(
            status,
            ("server_error", None, "The server had an error.")
            if status >= 500
            else ("invalid_request_error", None, "The request was refused."),
        )
        return _encode(
            {
                "error": {
                    "message": message or default_message,
                    "type": error_type or default_type,
                    "param": param,
                    "code": code if code is not None else default_code,
                }
            }
        )

    def response_body(self, view: ChatView, reply: Reply, seq: int) -> bytes:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.text if reply.tokens or reply.tool_call is None else None,
            "refusal": None,
            "annotations": [],
        }
        if reply.tool_call is not None:
            message["tool_calls"] = [
                {
                    "id": f"call_fake{seq}",
                    "type": "function",
                    "function": {
                        "name": reply.tool_call.name,
                        "arguments": reply.tool_call.arguments,
                    },
                }
            ]
        body = (
            b'{"id":"chatcmpl-fake%d","object":"chat.completion","created":%d,"model":%s,'
            b'"choices":[{"index":0,"message":%s,"logprobs":null,"finish_reason":%s}],'
            b'"system_fingerprint":null'
            % (
                seq,
                int(time.time()),
                _encode(view.model),
                _encode(message),
                _encode(reply.finish_reason),
            )
        )
        if reply.include_usage:
            return body + b',"usage":' + _usage_json(reply) + b"}"
        return body + b"}"

    def render_stream(self, view: ChatView, reply: Reply, seq: int) -> RenderedStream:
        head = (
            b'data: {"id":"chatcmpl-fake%d","object":"chat.completion.chunk","created":%d,'
            b'"model":%s,"system_fingerprint":null,"choices":['
            % (seq, int(time.time()), _encode(view.model))
        )
        choice = head + b'{"index":0,"delta":'
        steps = [
            choice + b'{"content":' + _encode(token) + b"}" + _CHOICE_TAIL for token in reply.tokens
        ]
        if reply.tool_call is not None:
            fragments = [
                choice
                + b'{"tool_calls":[{"index":0,"function":{"arguments":'
                + _encode(fragment)
                + b"}}]}"
                + _CHOICE_TAIL
                for fragment in reply.fragments
            ]
            fragments[0] = (
                choice + b'{"tool_calls":[{"index":0,"id":"call_fake%d","type":"function",'
                b'"function":{"name":%s,"arguments":""}}]}'
                % (seq, _encode(reply.tool_call.name))
                + _CHOICE_TAIL
                + fragments[0]
            )
            steps.extend(fragments)
        closing = (
            choice
            + b'{},"logprobs":null,"finish_reason":'
            + _encode(reply.finish_reason)
            + b'}],"usage":null}\n\n'
        )
        if view.stream_usage and reply.include_usage:
            closing += head + b'],"usage":' + _usage_json(reply) + b"}\n\n"
        return RenderedStream(
            preamble=choice + _ROLE_DELTA + _CHOICE_TAIL, steps=steps, closing=closing + _DONE
        )

    def stream_error(self, behavior: Behavior) -> bytes:
        error = {
            "message": behavior.error_message or "The fake upstream failed mid-stream.",
            "type": behavior.error_type or "server_error",
            "param": None,
            "code": behavior.error_code,
        }
        return b"data: " + _encode({"error": error}) + b"\n\n"

    def malformed_event(self) -> bytes:
        return b"data: {this is not json\n\n"

    def models_body(self, models: Sequence[str]) -> bytes:
        data = [
            {"id": model, "object": "model", "created": 1700000000, "owned_by": "fake-upstream"}
            for model in models
        ]
        return _encode({"object": "list", "data": data})
