"""The Anthropic Messages renderer: message bodies and SSE event sequences, each validated
against the official SDK's own types (``anthropic.types``), and the error shapes."""

from __future__ import annotations

import json
from typing import Any

import anthropic.types
import pydantic
import pytest

from interlock.api.anthropic_render import EventWriter, error_event, message_body
from interlock.api.errors import anthropic_error_body, anthropic_error_response
from interlock.chat.types import (
    ChatResult,
    Event,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from interlock.errors import (
    AuthenticationFailed,
    BodyTooLarge,
    InterlockError,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamTimeout,
)

StreamEvent: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)


def sse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Split a rendered stream into (event name, data) pairs; every event is named and its
    data's ``type`` is the same name."""
    assert raw.endswith(b"\n\n")
    events = []
    for chunk in raw.decode().split("\n\n")[:-1]:
        name_line, data_line = chunk.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        name, data = name_line[7:], json.loads(data_line[6:])
        assert data["type"] == name
        events.append((name, data))
    return events


def render(events: list[Event], input_tokens: int = 3) -> list[tuple[str, dict[str, Any]]]:
    writer = EventWriter("msg_1", "claude-x")
    raw = writer.start(input_tokens) + b"".join(writer.feed(e) for e in events) + writer.end()
    rendered = sse_events(raw)
    for name, data in rendered:
        if name != "ping":
            StreamEvent.validate_python(data)  # the SDK's own schema accepts it
    return rendered


def accumulate(rendered: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Fold a stream as a client does: block by block, deltas by index."""
    message: dict[str, Any] = {}
    buffers: dict[int, str] = {}
    for name, data in rendered:
        if name == "message_start":
            message = data["message"]
        elif name == "content_block_start":
            assert data["index"] == len(message["content"])
            message["content"].append(dict(data["content_block"]))
        elif name == "content_block_delta":
            block, delta = message["content"][data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            else:
                buffers[data["index"]] = buffers.get(data["index"], "") + delta["partial_json"]
        elif name == "message_delta":
            message.update(data["delta"])
            message["usage"].update(data["usage"])
    for index, text in buffers.items():
        message["content"][index]["input"] = json.loads(text)
    return message


def names(rendered: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [name for name, _ in rendered]


def test_plain_text_stream_has_the_exact_event_sequence() -> None:
    rendered = render(
        [TextDelta("Hel"), TextDelta("lo"), Usage(10, 2), Finish("stop")], input_tokens=9
    )
    assert names(rendered) == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = rendered[0][1]["message"]
    assert start["id"] == "msg_1" and start["model"] == "claude-x"
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["input_tokens"] == 9
    assert rendered[2][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert rendered[3][1]["delta"] == {"type": "text_delta", "text": "Hel"}
    assert rendered[5][1] == {"type": "content_block_stop", "index": 0}
    delta = rendered[6][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["input_tokens"] == 10 and delta["usage"]["output_tokens"] == 2
    message = accumulate(rendered)
    assert message["content"] == [{"type": "text", "text": "Hello"}]


def test_reasoning_text_and_tool_calls_are_separate_blocks() -> None:
    rendered = render(
        [
            ReasoningDelta("Think"),
            ReasoningDelta("ing."),
            TextDelta("Checking."),
            ToolCallDelta(0, "call_a", "weather", ""),
            ToolCallDelta(0, None, None, '{"city":'),
            ToolCallDelta(0, None, None, '"Paris"}'),
            ToolCallDelta(1, "call_b", "clock", "{}"),
            Usage(5, 7),
            Finish("tool_calls"),
        ]
    )
    message = accumulate(rendered)
    assert message["content"] == [
        {"type": "thinking", "thinking": "Thinking.", "signature": ""},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_a", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_b", "name": "clock", "input": {}},
    ]
    assert message["stop_reason"] == "tool_use"
    starts = [data["index"] for name, data in rendered if name == "content_block_start"]
    stops = [data["index"] for name, data in rendered if name == "content_block_stop"]
    assert starts == stops == [0, 1, 2, 3]
    deltas = [data["delta"]["type"] for name, data in rendered if name == "content_block_delta"]
    assert deltas == [
        "thinking_delta",
        "thinking_delta",
        "text_delta",
        "input_json_delta",
        "input_json_delta",
        "input_json_delta",
    ]


@pytest.mark.parametrize(
    ("reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("other", "end_turn"),
    ],
)
def test_finish_reasons_map_to_stop_reasons(reason: Any, stop_reason: str) -> None:
    rendered = render([TextDelta("x"), Usage(1, 1), Finish(reason)])
    assert rendered[-2][1]["delta"]["stop_reason"] == stop_reason
    result = ChatResult("x", "", [], reason, Usage(1, 1))
    assert message_body("msg_1", "m", result)["stop_reason"] == stop_reason


def test_a_stop_sequence_the_provider_named() -> None:
    rendered = render([TextDelta("x"), Usage(1, 1), Finish("stop", "END")])
    assert rendered[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    body = message_body("m", "m", ChatResult("x", "", [], "stop", Usage(1, 1), "END"))
    assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", "END")
    anthropic.types.Message.model_validate(body)


def test_empty_deltas_open_no_block() -> None:
    rendered = render([TextDelta(""), ReasoningDelta(""), Usage(1, 0), Finish("stop")])
    assert names(rendered) == ["message_start", "ping", "message_delta", "message_stop"]


def test_cached_tokens_are_split_out_of_the_input() -> None:
    rendered = render([TextDelta("x"), Usage(100, 4, cached_tokens=60), Finish("stop")])
    usage = rendered[-2][1]["usage"]
    assert usage["input_tokens"] == 40
    assert usage["cache_read_input_tokens"] == 60
    assert usage["output_tokens"] == 4


def test_a_stream_without_finish_cannot_end_normally() -> None:
    writer = EventWriter("msg_1", "m")
    writer.start(1)
    writer.feed(TextDelta("x"))
    with pytest.raises(UpstreamProtocolError):
        writer.end()


def test_interleaved_or_unstarted_tool_calls_are_protocol_errors() -> None:
    writer = EventWriter("msg_1", "m")
    writer.start(1)
    writer.feed(ToolCallDelta(0, "a", "f", "{"))
    writer.feed(ToolCallDelta(1, "b", "g", "{"))
    with pytest.raises(UpstreamProtocolError):
        writer.feed(ToolCallDelta(0, None, None, "}"))  # block 0 is already closed
    writer = EventWriter("msg_1", "m")
    writer.start(1)
    with pytest.raises(UpstreamProtocolError):
        writer.feed(ToolCallDelta(0, None, None, "{}"))


def test_message_body_matches_the_sdk_message_type() -> None:
    result = ChatResult(
        text="Let me look.",
        reasoning="Hmm.",
        tool_calls=[ToolCall("toolu_1", "weather", '{"city": "Paris"}'), ToolCall("t2", "f", "")],
        finish_reason="tool_calls",
        usage=Usage(12, 5, cached_tokens=2),
    )
    body = message_body("msg_9", "claude-x", result)
    message = anthropic.types.Message.model_validate(body)
    assert message.id == "msg_9" and message.role == "assistant" and message.model == "claude-x"
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "text", "tool_use", "tool_use"]
    assert body["content"][2]["input"] == {"city": "Paris"}
    assert body["content"][3]["input"] == {}
    assert message.stop_reason == "tool_use" and message.stop_sequence is None
    assert message.usage.input_tokens == 10 and message.usage.cache_read_input_tokens == 2
    assert message.usage.output_tokens == 5


def test_a_text_only_answer_has_one_text_block() -> None:
    body = message_body("msg_1", "m", ChatResult("Hi", "", [], "stop", Usage(1, 1)))
    assert body["content"] == [{"type": "text", "text": "Hi"}]


@pytest.mark.parametrize("arguments", ["[1, 2]", "not json", '"a string"'])
def test_tool_arguments_that_are_not_an_object_are_a_provider_fault(arguments: str) -> None:
    result = ChatResult("", "", [ToolCall("t", "f", arguments)], "tool_calls", Usage())
    with pytest.raises(UpstreamProtocolError) as caught:
        message_body("msg_1", "m", result)
    assert "'f'" in caught.value.message


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (InvalidRequest("bad"), 400, "invalid_request_error"),
        (AuthenticationFailed(), 401, "authentication_error"),
        (PermissionDenied(), 403, "permission_error"),
        (ModelNotFound(), 404, "not_found_error"),
        (BodyTooLarge(), 413, "request_too_large"),
        (RateLimited(retry_after=2.5), 429, "rate_limit_error"),
        (InternalError(), 500, "api_error"),
        (UpstreamError(), 502, "api_error"),
        (UpstreamOverloaded(), 503, "overloaded_error"),
        (ServiceUnavailable(), 503, "overloaded_error"),
        (UpstreamTimeout(), 504, "timeout_error"),
    ],
)
def test_error_shapes(error: InterlockError, status: int, error_type: str) -> None:
    response = anthropic_error_response(error, "req_abc")
    assert response.status_code == status
    assert json.loads(response.body) == {
        "type": "error",
        "error": {"type": error_type, "message": error.message},
        "request_id": "req_abc",
    }
    assert response.headers["request-id"] == "req_abc"
    if error.retry_after is not None:
        assert response.headers["retry-after"] == "3"
    else:
        assert "retry-after" not in response.headers
    if error_type != "request_too_large":  # in Anthropic's error docs, not in the SDK's types
        anthropic.types.ErrorResponse.model_validate(json.loads(response.body))


def test_error_event_is_named_and_typed() -> None:
    [(name, data)] = sse_events(error_event(UpstreamOverloaded(), "req_1"))
    assert name == "error"
    assert data == anthropic_error_body(UpstreamOverloaded(), "req_1")
    assert data["error"]["type"] == "overloaded_error"
