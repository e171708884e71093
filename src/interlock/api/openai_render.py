"""Canonical results and events rendered as OpenAI Chat Completions responses.

Stream chunks are assembled from pre-encoded bytes: every chunk of a stream shares its
``id``, ``created`` and ``model``, so only the delta is encoded per chunk.
"""

from __future__ import annotations

from typing import Any

import msgspec

from interlock.api.errors import openai_error_body
from interlock.chat.types import ChatResult, FinishReason, ToolCallDelta, Usage
from interlock.errors import InterlockError

_encode = msgspec.json.encode

DONE = b"data: [DONE]\n\n"


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def completion_body(
    completion_id: str, created: int, model: str, result: ChatResult
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.text if result.text or not result.tool_calls else None,
        "refusal": None,
    }
    if result.reasoning:
        message["reasoning_content"] = result.reasoning
    if result.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in result.tool_calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage_body(result.usage),
        "system_fingerprint": None,
    }


class ChunkWriter:
    """Writes the SSE events of one OpenAI stream."""

    __slots__ = ("_close", "_head", "_open")

    def __init__(self, completion_id: str, created: int, model: str) -> None:
        self._head = (
            b'data: {"id":' + _encode(completion_id)
            + b',"object":"chat.completion.chunk","created":' + str(created).encode()
            + b',"model":' + _encode(model)
        )  # fmt: skip
        self._open = self._head + b',"choices":[{"index":0,"delta":'
        self._close = b',"logprobs":null,"finish_reason":null}],"usage":null}\n\n'

    def role(self) -> bytes:
        return self._open + b'{"role":"assistant","content":""}' + self._close

    def text(self, text: str) -> bytes:
        return self._open + b'{"content":' + _encode(text) + b"}" + self._close

    def reasoning(self, text: str) -> bytes:
        return self._open + b'{"reasoning_content":' + _encode(text) + b"}" + self._close

    def tool_call(self, delta: ToolCallDelta) -> bytes:
        call: dict[str, Any] = {"index": delta.index}
        if delta.id is not None:
            call["id"] = delta.id
            call["type"] = "function"
            call["function"] = {"name": delta.name or "", "arguments": delta.arguments}
        else:
            call["function"] = {"arguments": delta.arguments}
        return self._open + b'{"tool_calls":[' + _encode(call) + b"]}" + self._close

    def finish(self, reason: FinishReason) -> bytes:
        return (
            self._open
            + b'{},"logprobs":null,"finish_reason":'
            + _encode(reason)
            + b'}],"usage":null}\n\n'
        )

    def usage(self, usage: Usage) -> bytes:
        return self._head + b',"choices":[],"usage":' + _encode(usage_body(usage)) + b"}\n\n"

    @staticmethod
    def error(error: InterlockError) -> bytes:
        return b"data: " + _encode(openai_error_body(error)) + b"\n\n"
