"""Canonical events → AI SDK streams: the UI message stream chunks (and the assistant message
they build), the ai 4 data stream lines, and the text stream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from interlock.api.aisdk_render import (
    DataStreamWriter,
    TextStreamWriter,
    UIMessageStreamWriter,
    parse_version,
    tool_input,
)
from interlock.chat.types import (
    Event,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)

ANSWER: list[Event] = [
    ReasoningDelta("Think"),
    ReasoningDelta("ing"),
    TextDelta("Hel"),
    TextDelta(""),
    TextDelta("lo"),
    ToolCallDelta(0, id="call-1", name="weather", arguments='{"city":'),
    ToolCallDelta(0, arguments='"Oslo"}'),
    ToolCallDelta(1, arguments="orphan"),  # no start: dropped
    Usage(input_tokens=7, output_tokens=3),
    Finish("tool_calls"),
]


def sse_chunks(data: bytes) -> list[Any]:
    events = data.decode().split("\n\n")
    assert events[-1] == "", "every event ends with a blank line"
    assert all(event.startswith("data: ") for event in events[:-1])
    payloads = [event.removeprefix("data: ") for event in events[:-1]]
    assert payloads[-1] == "[DONE]"
    return [json.loads(payload) for payload in payloads[:-1]]


def ui_stream(
    events: list[Event], *, finish_reason: bool
) -> tuple[list[Any], UIMessageStreamWriter]:
    writer = UIMessageStreamWriter("msg-1", finish_reason=finish_reason)
    out = writer.start() + b"".join(writer.event(event) for event in events) + writer.end()
    return sse_chunks(out), writer


def test_ui_message_stream_opens_and_closes_every_block_in_order() -> None:
    chunks, writer = ui_stream(ANSWER, finish_reason=True)
    assert chunks == [
        {"type": "start", "messageId": "msg-1"},
        {"type": "start-step"},
        {"type": "reasoning-start", "id": "reasoning-1"},
        {"type": "reasoning-delta", "id": "reasoning-1", "delta": "Think"},
        {"type": "reasoning-delta", "id": "reasoning-1", "delta": "ing"},
        {"type": "reasoning-end", "id": "reasoning-1"},
        {"type": "text-start", "id": "text-2"},
        {"type": "text-delta", "id": "text-2", "delta": "Hel"},
        {"type": "text-delta", "id": "text-2", "delta": "lo"},
        {"type": "text-end", "id": "text-2"},
        {"type": "tool-input-start", "toolCallId": "call-1", "toolName": "weather"},
        {"type": "tool-input-delta", "toolCallId": "call-1", "inputTextDelta": '{"city":'},
        {"type": "tool-input-delta", "toolCallId": "call-1", "inputTextDelta": '"Oslo"}'},
        {
            "type": "tool-input-available",
            "toolCallId": "call-1",
            "toolName": "weather",
            "input": {"city": "Oslo"},
        },
        {"type": "finish-step"},
        {"type": "finish", "finishReason": "tool-calls"},
    ]
    assert writer.finished
    assert writer.message() == {
        "id": "msg-1",
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {"type": "reasoning", "text": "Thinking", "state": "done"},
            {"type": "text", "text": "Hello", "state": "done"},
            {
                "type": "tool-weather",
                "toolCallId": "call-1",
                "state": "input-available",
                "input": {"city": "Oslo"},
            },
        ],
    }


def test_oldest_clients_get_no_finish_reason() -> None:
    chunks, _ = ui_stream([TextDelta("Hi"), Finish("stop")], finish_reason=False)
    assert chunks[-1] == {"type": "finish"}


@pytest.mark.parametrize(
    ("reason", "sdk"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool-calls"),
        ("content_filter", "content-filter"),
        ("other", "other"),
    ],
)
def test_finish_reasons_in_the_sdk_vocabulary(reason: Any, sdk: str) -> None:
    chunks, _ = ui_stream([TextDelta("x"), Finish(reason)], finish_reason=True)
    assert chunks[-1] == {"type": "finish", "finishReason": sdk}


def test_text_after_a_tool_call_is_a_new_block_and_a_later_part() -> None:
    events: list[Event] = [
        TextDelta("a"),
        ToolCallDelta(0, id="c", name="t", arguments=""),
        TextDelta("b"),
        Finish("stop"),
    ]
    chunks, writer = ui_stream(events, finish_reason=True)
    starts = [chunk["id"] for chunk in chunks if chunk["type"] == "text-start"]
    ends = [chunk["id"] for chunk in chunks if chunk["type"] == "text-end"]
    assert starts == ends == ["text-1", "text-2"]
    kinds = [part["type"] for part in writer.message()["parts"]]
    assert kinds == ["step-start", "text", "tool-t", "text"]
    available = next(chunk for chunk in chunks if chunk["type"] == "tool-input-available")
    assert available["input"] == {}


def test_the_error_chunk_is_terminal() -> None:
    assert sse_chunks(UIMessageStreamWriter.error("It broke.")) == [
        {"type": "error", "errorText": "It broke."}
    ]


def test_invalid_tool_json_is_passed_as_text() -> None:
    assert tool_input('{"a": 1}') == {"a": 1}
    assert tool_input("{not json") == "{not json"
    assert tool_input("") == {}


def test_versions_parse_strictly() -> None:
    assert parse_version("5.0.92") == (5, 0, 92)
    for bad in ("5", "5.0", "v5.0.0", "5.0.x", ""):
        with pytest.raises(ValueError, match="not a version"):
            parse_version(bad)


def data_lines(data: bytes) -> list[tuple[str, Any]]:
    text = data.decode()
    assert text.endswith("\n")
    lines = []
    for line in text.splitlines():
        code, _, value = line.partition(":")
        lines.append((code, json.loads(value)))
    return lines


def test_data_stream_lines_end_with_the_finish_message_and_usage() -> None:
    writer = DataStreamWriter("msg-4")
    out = writer.start() + b"".join(writer.event(event) for event in ANSWER) + writer.end()
    usage = {"promptTokens": 7, "completionTokens": 3}
    assert data_lines(out) == [
        ("f", {"messageId": "msg-4"}),
        ("g", "Think"),
        ("g", "ing"),
        ("0", "Hel"),
        ("0", "lo"),
        ("b", {"toolCallId": "call-1", "toolName": "weather"}),
        ("c", {"toolCallId": "call-1", "argsTextDelta": '{"city":'}),
        ("c", {"toolCallId": "call-1", "argsTextDelta": '"Oslo"}'}),
        ("9", {"toolCallId": "call-1", "toolName": "weather", "args": {"city": "Oslo"}}),
        ("e", {"finishReason": "tool-calls", "usage": usage, "isContinued": False}),
        ("d", {"finishReason": "tool-calls", "usage": usage}),
    ]
    assert data_lines(DataStreamWriter.error("Oops")) == [("3", "Oops")]


def test_text_stream_is_the_text_only() -> None:
    assert b"".join(TextStreamWriter.event(event) for event in ANSWER) == b"Hello"
    assert TextStreamWriter.event(TextDelta("é\n")) == "é\n".encode()
