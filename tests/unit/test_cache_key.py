"""Cache keys: scoped to the tenant, over the whole normalized request, and nothing else."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from interlock.api import openai_wire
from interlock.cache.key import IGNORED_FIELDS, Tenant, cache_key
from interlock.chat.types import ChatRequest, ImagePart, Message, TextPart, Tool, ToolCall

ALICE = Tenant("user", "alice")


def request() -> ChatRequest:
    return ChatRequest(
        model="gpt",
        messages=[
            Message("system", [TextPart("Be brief.")]),
            Message("user", [TextPart("What is 2+2?")]),
            Message("assistant", [], tool_calls=[ToolCall("c1", "calc", '{"x":"2+2"}')]),
            Message("tool", [TextPart("4")], tool_call_id="c1"),
            Message("user", [TextPart("And 3+3?")]),
        ],
        max_tokens=100,
        temperature=0.0,
        top_p=1.0,
        stop=["\n\n"],
        seed=7,
        tools=[Tool("calc", "adds", {"type": "object", "properties": {"x": {"type": "string"}}})],
        tool_choice="auto",
        parallel_tool_calls=False,
        response_format={"type": "json_object"},
        user="end-user-1",
    )


def test_a_key_is_a_sha256_hex_digest_and_stable() -> None:
    key = cache_key(request(), ALICE)
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert cache_key(request(), ALICE) == key


def test_the_same_prompt_from_two_tenants_has_two_keys() -> None:
    keys = {
        cache_key(request(), Tenant("user", "alice")),
        cache_key(request(), Tenant("user", "bob")),
        cache_key(request(), Tenant("team", "alice")),  # a team named like a user
        cache_key(request(), Tenant("shared", "")),
    }
    assert len(keys) == 4


def test_tenant_resolution_follows_the_configured_scope() -> None:
    assert Tenant.resolve("user", user="u1", team="t1") == Tenant("user", "u1")
    assert Tenant.resolve("team", user="u1", team="t1") == Tenant("team", "t1")
    # no team: never shared wider than the user
    assert Tenant.resolve("team", user="u1", team=None) == Tenant("user", "u1")
    assert Tenant.resolve("shared", user="u1", team="t1") == Tenant("shared", "")


def _message(index: int, change: Callable[[Message], None]) -> Callable[[ChatRequest], None]:
    def apply(chat: ChatRequest) -> None:
        change(chat.messages[index])

    return apply


# Each change names the ChatRequest field it touches; the last test checks all are covered.
CHANGES: list[tuple[str, Callable[[ChatRequest], None]]] = [
    ("model", lambda r: setattr(r, "model", "gpt-mini")),
    ("messages", _message(0, lambda m: setattr(m, "content", [TextPart("Be long.")]))),
    ("messages", _message(1, lambda m: setattr(m, "content", [TextPart("What is 2+3?")]))),
    ("messages", _message(1, lambda m: setattr(m, "role", "system"))),
    ("messages", _message(1, lambda m: setattr(m, "name", "carol"))),
    ("messages", _message(1, lambda m: m.content.append(ImagePart("https://x/y.png")))),
    ("messages", _message(2, lambda m: setattr(m.tool_calls[0], "arguments", '{"x":"2+3"}'))),
    ("messages", _message(2, lambda m: setattr(m.tool_calls[0], "name", "calc2"))),
    ("messages", _message(3, lambda m: setattr(m, "tool_call_id", "c2"))),
    ("messages", lambda r: r.messages.pop(0)),
    ("messages", lambda r: r.messages.append(Message("user", [TextPart("thanks")]))),
    ("max_tokens", lambda r: setattr(r, "max_tokens", 101)),
    ("temperature", lambda r: setattr(r, "temperature", 0.2)),
    ("top_p", lambda r: setattr(r, "top_p", 0.9)),
    ("top_k", lambda r: setattr(r, "top_k", 5)),
    ("stop", lambda r: setattr(r, "stop", ["END"])),
    ("seed", lambda r: setattr(r, "seed", 8)),
    ("tools", lambda r: setattr(r.tools[0], "description", "sums")),
    ("tools", lambda r: setattr(r.tools[0], "parameters", {"type": "object"})),
    ("tools", lambda r: r.tools.append(Tool("search"))),
    ("tool_choice", lambda r: setattr(r, "tool_choice", "required")),
    ("parallel_tool_calls", lambda r: setattr(r, "parallel_tool_calls", True)),
    ("response_format", lambda r: setattr(r, "response_format", {"type": "text"})),
]


@pytest.mark.parametrize(("field", "change"), CHANGES, ids=[f for f, _ in CHANGES])
def test_any_change_that_can_change_the_answer_changes_the_key(
    field: str, change: Callable[[ChatRequest], None]
) -> None:
    changed = request()
    change(changed)
    assert cache_key(changed, ALICE) != cache_key(request(), ALICE)


def test_every_request_field_but_the_ignored_ones_is_covered_above() -> None:
    names = set(ChatRequest.__struct_fields__)
    assert {field for field, _ in CHANGES} == names - IGNORED_FIELDS


def test_who_asks_is_not_part_of_the_key() -> None:
    other = msgspec.structs.replace(request(), user="end-user-2")
    assert cache_key(other, ALICE) == cache_key(request(), ALICE)


def test_the_key_is_canonical_over_mapping_order_and_number_spelling() -> None:
    reordered = request()
    reordered.tools[0].parameters = {"properties": {"x": {"type": "string"}}, "type": "object"}
    reordered.temperature = 0  # an int, as a client may send it
    reordered.top_p = 1
    assert cache_key(reordered, ALICE) == cache_key(request(), ALICE)


def test_a_text_part_and_an_image_part_never_collide() -> None:
    text = ChatRequest("m", [Message("user", [TextPart("https://x/y.png")])])
    image = ChatRequest("m", [Message("user", [ImagePart("https://x/y.png")])])
    assert cache_key(text, ALICE) != cache_key(image, ALICE)


def test_the_stream_flag_and_user_metadata_of_a_wire_request_do_not_change_the_key() -> None:
    body = {
        "model": "gpt",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0,
        "seed": 3,
    }
    variants = [
        body,
        {**body, "stream": True},
        {**body, "stream": True, "stream_options": {"include_usage": True}},
        {**body, "user": "someone", "metadata": {"trace": "abc"}},
    ]
    keys = {cache_key(openai_wire.parse(msgspec.json.encode(v), 1000)[1], ALICE) for v in variants}
    assert len(keys) == 1
    different = {**body, "messages": [{"role": "user", "content": "Hi!"}]}
    assert cache_key(openai_wire.parse(msgspec.json.encode(different), 1000)[1], ALICE) not in keys
