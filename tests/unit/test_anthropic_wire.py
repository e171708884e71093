"""The Anthropic Messages parser: every shape it takes into the canonical request, and every
way a body can be wrong, each a 400 ``InvalidRequest`` that names the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from interlock.api.anthropic_wire import check_version, parse
from interlock.chat.types import ChatRequest, ImagePart, TextPart
from interlock.errors import InvalidRequest

MAX_OUTPUT = 4096
HI = [{"role": "user", "content": "Hi"}]


def chat(body: dict[str, Any], **kwargs: Any) -> ChatRequest:
    return parse(json.dumps(body).encode(), MAX_OUTPUT, **kwargs)[1]


def refused(body: Any, **kwargs: Any) -> InvalidRequest:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as caught:
        parse(raw, MAX_OUTPUT, **kwargs)
    assert caught.value.status == 400
    return caught.value


def base(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 100, "messages": HI, **extra}


def test_minimal_request() -> None:
    request = chat(base())
    assert request.model == "m"
    assert request.max_tokens == 100
    [message] = request.messages
    assert message.role == "user"
    assert message.content == [TextPart("Hi")]
    assert request.stop == [] and request.tools == [] and request.tool_choice is None


def test_sampling_stop_sequences_and_user() -> None:
    request = chat(
        base(
            temperature=0.5,
            top_p=0.9,
            top_k=40,
            stop_sequences=["END", "\n\nHuman:"],
            metadata={"user_id": "user-42"},
            thinking={"type": "enabled", "budget_tokens": 2048},
            service_tier="auto",
        )
    )
    assert (request.temperature, request.top_p, request.top_k) == (0.5, 0.9, 40)
    assert request.stop == ["END", "\n\nHuman:"]
    assert request.user == "user-42"


@pytest.mark.parametrize(
    ("system", "texts"),
    [
        ("Be brief.", ["Be brief."]),
        ([{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}], ["One.", "Two."]),
        (
            [{"type": "text", "text": "Cached.", "cache_control": {"type": "ephemeral"}}],
            ["Cached."],
        ),
    ],
)
def test_system_prompt_becomes_the_first_message(system: Any, texts: list[str]) -> None:
    request = chat(base(system=system))
    first = request.messages[0]
    assert first.role == "system"
    assert [part.text for part in first.content if isinstance(part, TextPart)] == texts
    assert request.messages[1].role == "user"


def test_empty_system_prompt_is_left_out() -> None:
    assert [m.role for m in chat(base(system="")).messages] == ["user"]
    assert [m.role for m in chat(base(system=[])).messages] == ["user"]


def test_tool_use_round_trip() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Two calls.", "signature": "sig"},
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "21C"}],
                    "is_error": False,
                },
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]
    tools = [
        {
            "name": "weather",
            "description": "Current weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    request = chat(
        base(
            messages=messages,
            tools=tools,
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        )
    )
    roles = [m.role for m in request.messages]
    assert roles == ["user", "assistant", "tool", "tool", "user"]
    assistant = request.messages[1]
    assert assistant.content == [TextPart("Let me check.")]  # thinking dropped
    assert [(c.id, c.name, json.loads(c.arguments)) for c in assistant.tool_calls] == [
        ("toolu_1", "weather", {"city": "Paris"}),
        ("toolu_2", "weather", {"city": "Rome"}),
    ]
    assert request.messages[2].tool_call_id == "toolu_1"
    assert request.messages[2].content == [TextPart("18C")]
    assert request.messages[3].tool_call_id == "toolu_2"
    assert request.messages[3].content == [TextPart("21C")]
    assert request.messages[4].content == [TextPart("Thanks")]
    [tool] = request.tools
    assert (tool.name, tool.description) == ("weather", "Current weather")
    assert tool.parameters == tools[0]["input_schema"]
    assert request.tool_choice == "auto"
    assert request.parallel_tool_calls is False


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, ("auto", None)),
        ({"type": "any"}, ("required", None)),
        ({"type": "none"}, ("none", None)),
        ({"type": "tool", "name": "weather"}, ("weather", None)),
        (
            {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
            ("weather", False),
        ),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: tuple[str, bool | None]) -> None:
    tools = [{"name": "weather", "input_schema": {"type": "object"}}]
    request = chat(base(tools=tools, tool_choice=choice))
    assert (request.tool_choice, request.parallel_tool_calls) == expected


def test_images_become_image_parts() -> None:
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "What are these?"},
    ]
    [message] = chat(base(messages=[{"role": "user", "content": content}])).messages
    assert message.content == [
        ImagePart("data:image/png;base64,iVBO"),
        ImagePart("https://example.com/cat.jpg"),
        TextPart("What are these?"),
    ]


def test_assistant_prefill_and_string_content() -> None:
    messages = [*HI, {"role": "assistant", "content": "The answer is"}]
    request = chat(base(messages=messages))
    assert [m.role for m in request.messages] == ["user", "assistant"]
    assert request.messages[1].text() == "The answer is"


def test_count_tokens_body_needs_no_max_tokens() -> None:
    request = chat({"model": "m", "messages": HI}, require_max_tokens=False)
    assert request.max_tokens is None


@pytest.mark.parametrize("version", ["2023-06-01", "2026-10-21", None, "", " 2023-01-01 "])
def test_versions_are_accepted(version: str | None) -> None:
    assert len(check_version(version)) == 10


def test_a_malformed_version_is_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_version("latest")
    assert caught.value.param == "anthropic-version"
    assert "anthropic-version" in caught.value.message


@pytest.mark.parametrize("field", ["temperature", "top_p", "top_k"])
def test_sampling_parameters_are_refused_from_version_2026_10_21(field: str) -> None:
    body = base(**{field: 1})
    assert chat(body, version="2023-06-01") is not None
    error = refused(body, version="2026-10-21")
    assert error.param == field
    assert field in error.message and "2026-10-21" in error.message


# ---- every error names its field -----------------------------------------------------------

TOOLS = [{"name": "weather", "input_schema": {"type": "object"}}]
CALL = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"model": "m", "messages": HI}, "max_tokens", "Field required"),
        ({"max_tokens": 10, "messages": HI}, "model", "Field required"),
        ({"model": "m", "max_tokens": 10}, "messages", "Field required"),
        (base(model=""), "model", "length"),
        (base(model=7), "model", "Expected `str`"),
        (base(max_tokens=0), "max_tokens", ">= 1"),
        (base(max_tokens="ten"), "max_tokens", "Expected `int"),
        (base(max_tokens=10**9), "max_tokens", "at most 4096"),
        (base(messages=[]), "messages", "at least one"),
        (base(messages="hi"), "messages", "Expected `array`"),
        (base(messages=[{"role": "system", "content": "x"}]), "messages[0].role", "Invalid"),
        (base(messages=[{"role": "user"}]), "messages[0].content", "Field required"),
        (base(messages=[{"role": "user", "content": 5}]), "messages[0].content", "Expected"),
        (base(messages=[{"role": "user", "content": []}]), "messages[0].content", "at least"),
        (
            base(messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]),
            "messages[0].content[0].type",
            "Invalid value 'video'",
        ),
        (
            base(messages=[{"role": "user", "content": [{"type": "text"}]}]),
            "messages[0].content[0].text",
            "Field required",
        ),
        (
            base(messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}]),
            "messages[0].content[0].type",
            "`document` blocks are not supported",
        ),
        (
            base(messages=[{"role": "user", "content": [CALL]}]),
            "messages[0].content[0].type",
            "user message cannot contain a `tool_use`",
        ),
        (
            base(
                messages=[
                    *HI,
                    {"role": "assistant", "content": [{"type": "image", "source": {}}]},
                ]
            ),
            "messages[1].content[0].source.type",
            "Field required",
        ),
        (
            base(
                messages=[
                    *HI,
                    {
                        "role": "assistant",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "url", "url": "https://x/y.png"},
                            }
                        ],
                    },
                ]
            ),
            "messages[1].content[0].type",
            "assistant message cannot contain a `image`",
        ),
        (
            base(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}],
                    }
                ]
            ),
            "messages[0].content[0].tool_use_id",
            "does not answer",
        ),
        (
            base(
                messages=[
                    *HI,
                    {"role": "assistant", "content": [CALL]},
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "toolu_2"}],
                    },
                ]
            ),
            "messages[2].content[0].tool_use_id",
            "'toolu_2'",
        ),
        (
            base(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/bmp",
                                    "data": "x",
                                },
                            }
                        ],
                    }
                ]
            ),
            "messages[0].content[0].source.media_type",
            "'image/bmp' is not supported",
        ),
        (
            base(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image", "source": {"type": "url", "url": "file:///etc"}}
                        ],
                    }
                ]
            ),
            "messages[0].content[0].source.url",
            "https://",
        ),
        (base(system=5), "system", "Expected `str | array | null`"),
        (base(system=[{"type": "image"}]), "system[0].type", "Invalid value 'image'"),
        (base(stop_sequences="END"), "stop_sequences", "got `str`"),
        (base(stop_sequences=[""]), "stop_sequences[0]", "length"),
        (base(temperature=1.5), "temperature", "<= 1"),
        (base(top_p=-0.1), "top_p", ">= 0"),
        (base(top_k=-1), "top_k", ">= 0"),
        (base(stream="yes"), "stream", "Expected `bool`"),
        (base(tools=[{"name": "w"}]), "tools[0].input_schema", "Field required"),
        (base(tools=[{"input_schema": {}}]), "tools[0].name", "Field required"),
        (
            base(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
            "tools[0].type",
            "server tools",
        ),
        (base(tools=TOOLS, tool_choice={"type": "sometimes"}), "tool_choice.type", "Invalid"),
        (base(tools=TOOLS, tool_choice={"type": "tool"}), "tool_choice.name", "Field required"),
        (
            base(tools=TOOLS, tool_choice={"type": "tool", "name": "other"}),
            "tool_choice.name",
            "not one of the `tools`",
        ),
        (base(tool_choice={"type": "any"}), "tool_choice", "`tools` is empty"),
        (base(metadata={"user_id": 5}), "metadata.user_id", "Expected `str"),
        (base(metadata={"user_id": "u" * 300}), "metadata.user_id", "length"),
        (base(thinking={"type": "enabled"}), "thinking.budget_tokens", "Field required"),
    ],
)
def test_malformed_bodies_name_the_field(body: Any, param: str, words: str) -> None:
    error = refused(body)
    assert error.param == param, error.message
    assert error.message.startswith(f"{param}:"), error.message
    assert words in error.message


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b"[1, 2]", b'"text"', b"null"])
def test_bodies_that_are_not_a_json_object(raw: bytes) -> None:
    error = refused(raw)
    assert "JSON" in error.message or "object" in error.message


# ---- never anything but a 400 ------------------------------------------------------------------

FULL: dict[str, Any] = {
    "model": "m",
    "max_tokens": 100,
    "system": [{"type": "text", "text": "Be brief."}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Hi"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBO"}},
        ]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "s"},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "x"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": [{"type": "text", "text": "18C"}]},
        ]},
    ],
    "stop_sequences": ["END"],
    "temperature": 0.5,
    "top_k": 3,
    "tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "tool", "name": "weather"},
    "metadata": {"user_id": "u"},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
}  # fmt: skip

WRONG_VALUES: list[Any] = [None, 0, -1, 1.5, True, "", "x", [], [None], {}, {"type": "x"}]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def replaced(path: tuple[Any, ...], new: Any, *, delete: bool = False) -> Any:
    body = json.loads(json.dumps(FULL))
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return body


def test_the_full_body_parses() -> None:
    request = chat(FULL)
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool"]


@pytest.mark.parametrize("path", paths(FULL), ids=lambda p: ".".join(map(str, p)))
def test_any_field_wrong_or_missing_is_a_400_or_accepted(path: tuple[Any, ...]) -> None:
    """Every field of a full body, replaced by every kind of wrong value or removed: the
    parser accepts it or raises ``InvalidRequest`` with a message, never anything else."""
    bodies = [replaced(path, value) for value in WRONG_VALUES]
    bodies.append(replaced(path, None, delete=True))
    refusals: list[InvalidRequest] = []
    for body in bodies:
        try:
            parse(json.dumps(body).encode(), MAX_OUTPUT)
        except InvalidRequest as error:
            refusals.append(error)
    assert all(error.status == 400 and error.message for error in refusals)
