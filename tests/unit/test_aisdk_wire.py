"""AI SDK request bodies (ai 5+ UI messages, ai 4 messages) → the canonical request; every
bad body is an ``InvalidRequest`` naming what is wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest

from interlock.api.aisdk_wire import Options, is_v4, parse_ui, parse_v4
from interlock.chat.types import ChatRequest, ImagePart, Message, TextPart, ToolCall
from interlock.errors import InvalidRequest

OPTIONS = Options(default_model="default-model", max_output_tokens=1000)
PNG = "data:image/png;base64,iVBORw0KGgo="


def ui(messages: list[Any], **extra: Any) -> ChatRequest:
    raw = json.dumps({"id": "chat-1", "messages": messages, "trigger": "submit-message", **extra})
    return parse_ui(raw.encode(), OPTIONS)[1]


def v4(messages: list[Any], **extra: Any) -> ChatRequest:
    return parse_v4(json.dumps({"id": "chat-1", "messages": messages, **extra}).encode(), OPTIONS)[
        1
    ]


def user(*parts: dict[str, Any], id: str = "u1") -> dict[str, Any]:
    return {"id": id, "role": "user", "parts": list(parts)}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def test_a_first_ui_message_becomes_a_user_message_with_the_default_model() -> None:
    chat = ui([user(text("Hi"), text(" there"))])
    assert chat.model == "default-model"
    assert chat.messages == [Message(role="user", content=[TextPart("Hi"), TextPart(" there")])]


def test_body_fields_set_the_model_temperature_and_output_cap() -> None:
    body, chat = parse_ui(
        json.dumps(
            {
                "id": "c",
                "messages": [user(text("x"))],
                "trigger": "regenerate-message",
                "messageId": "m9",
                "model": "gpt-x",
                "temperature": 0.5,
                "maxOutputTokens": 100,
                "someAppField": {"anything": True},
            }
        ).encode(),
        OPTIONS,
    )
    assert (chat.model, chat.temperature, chat.max_tokens) == ("gpt-x", 0.5, 100)
    assert (body.id, body.trigger, body.messageId) == ("c", "regenerate-message", "m9")


def test_history_with_steps_tools_reasoning_and_data_parts() -> None:
    assistant = {
        "id": "a1",
        "role": "assistant",
        "parts": [
            {"type": "step-start"},
            {"type": "reasoning", "text": "thinking", "state": "done"},
            {"type": "text", "text": "Let me look.", "state": "done"},
            {
                "type": "tool-weather",
                "toolCallId": "call-1",
                "state": "output-available",
                "input": {"city": "Oslo"},
                "output": {"temp": 3},
            },
            {
                "type": "dynamic-tool",
                "toolName": "clock",
                "toolCallId": "call-2",
                "state": "output-error",
                "input": {},
                "errorText": "no clock",
            },
            {"type": "tool-pending", "toolCallId": "call-3", "state": "input-available"},
            {"type": "step-start"},
            {"type": "text", "text": "It is 3 degrees.", "state": "done"},
            {"type": "data-weather", "data": {"x": 1}},
            {"type": "source-url", "sourceId": "s", "url": "https://example.org"},
            {"type": "some-future-part", "whatever": 1},
        ],
    }
    chat = ui(
        [
            {"id": "s", "role": "system", "parts": [text("Be brief")]},
            user(text("Weather?")),
            assistant,
        ]
    )
    assert chat.messages == [
        Message(role="system", content=[TextPart("Be brief")]),
        Message(role="user", content=[TextPart("Weather?")]),
        Message(
            role="assistant",
            content=[TextPart("Let me look.")],
            tool_calls=[
                ToolCall("call-1", "weather", '{"city":"Oslo"}'),
                ToolCall("call-2", "clock", "{}"),
            ],
        ),
        Message(role="tool", content=[TextPart('{"temp":3}')], tool_call_id="call-1"),
        Message(role="tool", content=[TextPart("no clock")], tool_call_id="call-2"),
        Message(role="assistant", content=[TextPart("It is 3 degrees.")]),
    ]


def test_an_image_file_part_becomes_an_image() -> None:
    chat = ui([user(text("What is this?"), {"type": "file", "mediaType": "image/png", "url": PNG})])
    assert chat.messages[0].content == [TextPart("What is this?"), ImagePart(PNG)]


BAD_UI_BODIES: list[tuple[str, Any, str | None]] = [
    ("not json", b"{nope", None),
    ("no messages", {"id": "c"}, None),
    ("messages not a list", {"messages": "hi"}, "messages"),
    ("empty messages", {"messages": []}, "messages"),
    ("bad role", {"messages": [{"id": "1", "role": "tool", "parts": []}]}, "messages[0].role"),
    ("parts missing", {"messages": [{"id": "1", "role": "user"}]}, None),
    ("part not an object", {"messages": [user("hi")]}, "messages[0].parts[0]"),  # type: ignore[arg-type]
    ("part without type", {"messages": [user({"text": "x"})]}, "messages[0].parts[0].type"),
    (
        "text not a string",
        {"messages": [user({"type": "text", "text": 5})]},
        "messages[0].parts[0].text",
    ),
    ("bad trigger", {"messages": [user(text("x"))], "trigger": "resume"}, "trigger"),
    ("bad temperature", {"messages": [user(text("x"))], "temperature": 9}, "temperature"),
    (
        "output cap too big",
        {"messages": [user(text("x"))], "maxOutputTokens": 5000},
        "maxOutputTokens",
    ),
    ("model empty", {"messages": [user(text("x"))], "model": ""}, "model"),
    (
        "pdf file",
        {"messages": [user({"type": "file", "mediaType": "application/pdf", "url": PNG})]},
        "messages[0].parts[0]",
    ),
    (
        "file url not a url",
        {"messages": [user({"type": "file", "mediaType": "image/png", "url": "/etc/passwd"})]},
        "messages[0].parts[0].url",
    ),
    (
        "tool part in a user message",
        {"messages": [user({"type": "tool-x", "toolCallId": "c", "state": "output-available"})]},
        "messages[0].parts[0]",
    ),
    (
        "unknown tool state",
        {
            "messages": [
                {
                    "id": "a",
                    "role": "assistant",
                    "parts": [{"type": "tool-x", "toolCallId": "c", "state": "done"}],
                }
            ]
        },
        "messages[0].parts[0].state",
    ),
    (
        "tool part without call id",
        {
            "messages": [
                {
                    "id": "a",
                    "role": "assistant",
                    "parts": [{"type": "tool-x", "state": "input-available"}],
                }
            ]
        },
        "messages[0].parts[0].toolCallId",
    ),
    (
        "dynamic tool without name",
        {
            "messages": [
                {
                    "id": "a",
                    "role": "assistant",
                    "parts": [
                        {"type": "dynamic-tool", "toolCallId": "c", "state": "input-available"}
                    ],
                }
            ]
        },
        "messages[0].parts[0].toolName",
    ),
    ("chat id too long", {"id": "x" * 200, "messages": [user(text("x"))]}, "id"),
]


@pytest.mark.parametrize(
    ("body", "param"),
    [(body, param) for _, body, param in BAD_UI_BODIES],
    ids=[name for name, _, _ in BAD_UI_BODIES],
)
def test_bad_ui_bodies_are_clear_400s(body: Any, param: str | None) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as caught:
        parse_ui(raw, OPTIONS)
    assert caught.value.status == 400
    assert caught.value.message
    if param is not None:
        assert caught.value.param == param


def test_without_a_model_anywhere_the_400_says_how_to_send_one() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_ui(json.dumps({"messages": [user(text("x"))]}).encode(), Options(None, 100))
    assert caught.value.param == "model"
    assert "aisdk.default_model" in caught.value.message


# ---- ai 4 ---------------------------------------------------------------------------------


def test_v4_messages_with_content_parts_attachments_and_tool_invocations() -> None:
    chat = v4(
        [
            {"role": "system", "content": "Be brief"},
            {
                "role": "user",
                "content": "Look",
                "experimental_attachments": [{"url": PNG, "name": "a.png"}],
            },
            {
                "role": "assistant",
                "content": "Checking.",
                "parts": [
                    {"type": "step-start"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool-invocation",
                        "toolInvocation": {
                            "state": "result",
                            "toolCallId": "t1",
                            "toolName": "weather",
                            "args": {"city": "Oslo"},
                            "result": "3C",
                        },
                    },
                    {"type": "reasoning", "reasoning": "hm", "details": []},
                ],
            },
            {"role": "data", "content": "ignored"},
            {"role": "user", "content": "Thanks"},
        ],
        model="m4",
        maxTokens=10,
    )
    assert chat.model == "m4" and chat.max_tokens == 10
    assert chat.messages == [
        Message(role="system", content=[TextPart("Be brief")]),
        Message(role="user", content=[TextPart("Look"), ImagePart(PNG)]),
        Message(
            role="assistant",
            content=[TextPart("Checking.")],
            tool_calls=[ToolCall("t1", "weather", '{"city":"Oslo"}')],
        ),
        Message(role="tool", content=[TextPart("3C")], tool_call_id="t1"),
        Message(role="user", content=[TextPart("Thanks")]),
    ]


def test_v4_tool_invocations_without_parts() -> None:
    chat = v4(
        [
            {"role": "user", "content": "Hi"},
            {
                "role": "assistant",
                "content": "",
                "toolInvocations": [
                    {"state": "call", "toolCallId": "t0", "toolName": "x", "args": {}},
                    {
                        "state": "result",
                        "toolCallId": "t1",
                        "toolName": "x",
                        "args": {},
                        "result": 1,
                    },
                ],
            },
        ]
    )
    assert chat.messages[1:] == [
        Message(role="assistant", tool_calls=[ToolCall("t1", "x", "{}")]),
        Message(role="tool", content=[TextPart("1")], tool_call_id="t1"),
    ]


BAD_V4_BODIES: list[tuple[str, Any, str | None]] = [
    ("not json", b"[1,", None),
    ("role", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ("content not a string", {"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    (
        "pdf attachment",
        {
            "messages": [
                {
                    "role": "user",
                    "content": "x",
                    "experimental_attachments": [{"url": "data:application/pdf;base64,AA=="}],
                }
            ]
        },
        "messages[0].experimental_attachments[0]",
    ),
    (
        "bad invocation state",
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": "",
                    "toolInvocations": [{"state": "done", "toolCallId": "t", "toolName": "x"}],
                }
            ]
        },
        "messages[0].toolInvocations[0].state",
    ),
    (
        "invocation not an object",
        {"messages": [{"role": "assistant", "content": "", "toolInvocations": [1]}]},
        "messages[0].toolInvocations[0]",
    ),
    ("only data messages", {"messages": [{"role": "data", "content": "x"}]}, "messages"),
    (
        "max tokens zero",
        {"messages": [{"role": "user", "content": "x"}], "maxTokens": 0},
        "maxTokens",
    ),
]


@pytest.mark.parametrize(
    ("body", "param"),
    [(body, param) for _, body, param in BAD_V4_BODIES],
    ids=[name for name, _, _ in BAD_V4_BODIES],
)
def test_bad_v4_bodies_are_clear_400s(body: Any, param: str | None) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as caught:
        parse_v4(raw, OPTIONS)
    assert caught.value.status == 400
    if param is not None:
        assert caught.value.param == param


def test_the_body_shape_tells_ai_4_from_ai_5() -> None:
    assert is_v4(json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode())
    assert not is_v4(json.dumps({"messages": [user(text("x"))]}).encode())
    assert not is_v4(b"not json")
