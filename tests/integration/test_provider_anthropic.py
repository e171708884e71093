"""The Anthropic Messages adapter: request and reply translation as pure functions, then real
streams against the fake upstream on loopback (errors, faults, timeouts, disconnects),
checking through its ledger exactly what the upstream received."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import msgspec
import pytest

from interlock.chat.types import (
    ChatRequest,
    Event,
    Finish,
    ImagePart,
    Message,
    ReasoningDelta,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from interlock.errors import (
    InvalidRequest,
    UpstreamAuthFailed,
    UpstreamConnectionFailed,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from interlock.providers.anthropic import (
    ANTHROPIC_VERSION,
    DEFAULT_MAX_TOKENS,
    AnthropicProvider,
    build_request_body,
)
from interlock.providers.anthropic_reply import AnthropicStreamDecoder
from interlock.providers.base import Timeouts
from interlock.providers.upstream_client import UpstreamClients
from interlock.settings import DeploymentConfig
from interlock.testing.fake_upstream import (
    Behavior,
    FakeUpstream,
    ServedRequest,
    ToolCallReply,
    default_text,
)

KEY = "sk-ant-test-provider-key-0123456789"
FAST = Timeouts(connect=2.0, first_token=None, idle=2.0, total=None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---- request translation (pure) --------------------------------------------------------------


def user(text: str) -> Message:
    return Message("user", [TextPart(text)])


def test_minimal_body_has_max_tokens_and_replaces_the_model() -> None:
    body = build_request_body(ChatRequest(model="public", messages=[user("Hi")]), "claude-x")
    assert body == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": DEFAULT_MAX_TOKENS,
        "stream": True,
    }


def test_system_is_hoisted_and_same_role_turns_are_merged() -> None:
    request = ChatRequest(
        model="m",
        messages=[
            Message("system", [TextPart("Be brief.")]),
            user("one"),
            user("two"),
            Message("system", [TextPart("Use metric units.")]),
            Message("assistant", [TextPart("ok")]),
            Message("assistant", [TextPart("")]),  # empty text blocks are refused upstream
            user("three"),
        ],
    )
    body = build_request_body(request, "m")
    assert body["system"] == "Be brief.\n\nUse metric units."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
        {"role": "user", "content": [{"type": "text", "text": "three"}]},
    ]


def test_tool_calls_and_results_become_blocks() -> None:
    request = ChatRequest(
        model="m",
        messages=[
            user("Weather in Oslo and Rome?"),
            Message(
                "assistant",
                [TextPart("Checking.")],
                tool_calls=[
                    ToolCall("toolu_1", "get_weather", '{"city": "Oslo"}'),
                    ToolCall("toolu_2", "get_weather", ""),
                ],
            ),
            Message("tool", [TextPart("sunny")], tool_call_id="toolu_1"),
            Message("tool", [TextPart("rain")], tool_call_id="toolu_2"),
            user("And tomorrow?"),
        ],
    )
    body = build_request_body(request, "m")
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "rain"},
            {"type": "text", "text": "And tomorrow?"},
        ],
    }


def test_tool_results_open_the_user_turn() -> None:
    request = ChatRequest(
        model="m",
        messages=[
            Message("assistant", tool_calls=[ToolCall("t1", "f", "{}")]),
            user("(note)"),
            Message("tool", [TextPart("42")], tool_call_id="t1"),
        ],
    )
    content = build_request_body(request, "m")["messages"][1]["content"]
    assert [block["type"] for block in content] == ["tool_result", "text"]


@pytest.mark.parametrize("arguments", ['{"city": ', "[1, 2]", '"text"'])
def test_tool_arguments_that_are_not_a_json_object_are_refused_before_sending(
    arguments: str,
) -> None:
    request = ChatRequest(
        model="m", messages=[Message("assistant", tool_calls=[ToolCall("t1", "f", arguments)])]
    )
    with pytest.raises(InvalidRequest):
        build_request_body(request, "m")


def test_images() -> None:
    request = ChatRequest(
        model="m",
        messages=[
            Message(
                "user",
                [
                    ImagePart("data:image/png;base64,iVBORw0KGgo="),
                    ImagePart("https://x.test/cat.jpg"),
                    TextPart("What is this?"),
                ],
            )
        ],
    )
    assert build_request_body(request, "m")["messages"][0]["content"] == [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        },
        {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
        {"type": "text", "text": "What is this?"},
    ]


@pytest.mark.parametrize(
    "url", ["data:image/png,raw-not-base64", "data:text/plain;base64,aGk=", "ftp://x.test/a.png"]
)
def test_unusable_images_are_refused(url: str) -> None:
    request = ChatRequest(model="m", messages=[Message("user", [ImagePart(url)])])
    with pytest.raises(InvalidRequest):
        build_request_body(request, "m")


def test_options_tools_and_metadata() -> None:
    request = ChatRequest(
        model="m",
        messages=[user("x")],
        max_tokens=50,
        temperature=1.7,
        top_p=0.8,
        top_k=40,
        stop=["END"],
        seed=3,
        response_format={"type": "json_object"},
        tools=[
            Tool("f", "does f", {"type": "object", "properties": {"a": {"type": "string"}}}),
            Tool("g"),
        ],
        tool_choice="required",
        parallel_tool_calls=False,
        user="user-9",
    )
    body = build_request_body(request, "m")
    assert body["max_tokens"] == 50
    assert body["temperature"] == 1.0  # clamped to Anthropic's range
    assert body["top_p"] == 0.8
    assert body["top_k"] == 40
    assert body["stop_sequences"] == ["END"]
    assert body["metadata"] == {"user_id": "user-9"}
    assert body["tools"] == [
        {
            "name": "f",
            "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}},
            "description": "does f",
        },
        {"name": "g", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert "seed" not in body
    assert "response_format" not in body


@pytest.mark.parametrize(
    ("choice", "parallel", "wire"),
    [
        (None, None, None),
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ("f", None, {"type": "tool", "name": "f"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, True, None),
    ],
)
def test_tool_choice(
    choice: str | None, parallel: bool | None, wire: dict[str, Any] | None
) -> None:
    request = ChatRequest(
        model="m",
        messages=[user("x")],
        tools=[Tool("f")],
        tool_choice=choice,
        parallel_tool_calls=parallel,
    )
    assert build_request_body(request, "m").get("tool_choice") == wire


# ---- reply translation (pure) ----------------------------------------------------------------


def sse(event: str, payload: dict[str, Any]) -> tuple[str, bytes]:
    return event, msgspec.json.encode({"type": event, **payload})


def message_start(**usage: int) -> tuple[str, bytes]:
    return sse("message_start", {"message": {"id": "msg_1", "content": [], "usage": usage}})


def block_start(index: int, block: dict[str, Any]) -> tuple[str, bytes]:
    return sse("content_block_start", {"index": index, "content_block": block})


def block_delta(index: int, delta: dict[str, Any]) -> tuple[str, bytes]:
    return sse("content_block_delta", {"index": index, "delta": delta})


def block_stop(index: int) -> tuple[str, bytes]:
    return sse("content_block_stop", {"index": index})


def message_delta(stop_reason: str, **usage: int) -> tuple[str, bytes]:
    return sse("message_delta", {"delta": {"stop_reason": stop_reason}, "usage": usage})


MESSAGE_STOP = sse("message_stop", {})
PING = sse("ping", {})


def decode_all(*events: tuple[str, bytes]) -> list[Event]:
    decoder = AnthropicStreamDecoder()
    out: list[Event] = []
    for name, data in events:
        out.extend(decoder.feed(name, data))
    return out + decoder.end()


def test_text_thinking_and_one_usage_at_the_end() -> None:
    events = decode_all(
        message_start(input_tokens=10, output_tokens=1, cache_read_input_tokens=100),
        PING,
        block_start(0, {"type": "thinking", "thinking": ""}),
        block_delta(0, {"type": "thinking_delta", "thinking": "Let me see."}),
        block_delta(0, {"type": "signature_delta", "signature": "abc"}),
        block_stop(0),
        block_start(1, {"type": "text", "text": ""}),
        block_delta(1, {"type": "text_delta", "text": "Hel"}),
        block_delta(1, {"type": "text_delta", "text": ""}),
        block_delta(1, {"type": "text_delta", "text": "lo"}),
        block_stop(1),
        message_delta("end_turn", output_tokens=7),
        sse("brand_new_event", {"x": 1}),
        MESSAGE_STOP,
    )
    assert events == [
        ReasoningDelta("Let me see."),
        TextDelta("Hel"),
        TextDelta("lo"),
        Usage(input_tokens=110, output_tokens=7, cached_tokens=100),
        Finish("stop"),
    ]


def test_tool_use_blocks_are_indexed_among_tool_calls_only() -> None:
    events = decode_all(
        message_start(input_tokens=5),
        block_start(0, {"type": "text", "text": ""}),
        block_delta(0, {"type": "text_delta", "text": "Let me check."}),
        block_stop(0),
        block_start(1, {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}),
        block_delta(1, {"type": "input_json_delta", "partial_json": ""}),
        block_delta(1, {"type": "input_json_delta", "partial_json": '{"city": '}),
        block_delta(1, {"type": "input_json_delta", "partial_json": '"Oslo"}'}),
        block_stop(1),
        block_start(2, {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}}),
        block_stop(2),
        message_delta("tool_use", output_tokens=30),
        MESSAGE_STOP,
    )
    assert events == [
        TextDelta("Let me check."),
        ToolCallDelta(0, "toolu_a", "get_weather", ""),
        ToolCallDelta(0, None, None, '{"city": '),
        ToolCallDelta(0, None, None, '"Oslo"}'),
        ToolCallDelta(1, "toolu_b", "now", ""),
        ToolCallDelta(1, None, None, "{}"),  # a call without input still parses
        Usage(input_tokens=5, output_tokens=30, cached_tokens=0),
        Finish("tool_calls"),
    ]


@pytest.mark.parametrize(
    ("stop_reason", "canonical"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "other"),
        ("model_context_window_exceeded", "length"),
        ("brand_new_reason", "other"),
    ],
)
def test_stop_reasons(stop_reason: str, canonical: str) -> None:
    events = decode_all(
        message_start(input_tokens=1), message_delta(stop_reason, output_tokens=2), MESSAGE_STOP
    )
    assert events[-1] == Finish(canonical)  # type: ignore[arg-type]


def test_the_stop_sequence_that_ended_the_answer() -> None:
    stopped = sse(
        "message_delta",
        {"delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"}, "usage": {}},
    )
    events = decode_all(message_start(input_tokens=1), stopped, MESSAGE_STOP)
    assert events[-1] == Finish("stop", "END")
    ended = sse(
        "message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {}}
    )
    assert decode_all(message_start(input_tokens=1), ended, MESSAGE_STOP)[-1] == Finish("stop")


def test_no_usage_reported_means_no_usage_event() -> None:
    events = decode_all(
        sse("message_start", {"message": {"id": "m"}}),
        sse("message_delta", {"delta": {"stop_reason": "end_turn"}}),
        MESSAGE_STOP,
    )
    assert events == [Finish("stop")]


def test_a_stream_without_message_stop_ended_early() -> None:
    decoder = AnthropicStreamDecoder()
    decoder.feed(*message_start(input_tokens=1))
    decoder.feed(*message_delta("end_turn", output_tokens=1))
    with pytest.raises(UpstreamProtocolError, match="ended early"):
        decoder.end()


def test_error_event_is_classified() -> None:
    decoder = AnthropicStreamDecoder()
    error = sse("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
    with pytest.raises(UpstreamOverloaded):
        decoder.feed(*error)


def test_input_for_a_block_never_started_is_a_protocol_error() -> None:
    decoder = AnthropicStreamDecoder()
    with pytest.raises(UpstreamProtocolError):
        decoder.feed(*block_delta(3, {"type": "input_json_delta", "partial_json": "{}"}))


@pytest.mark.parametrize("event", ["message_start", "content_block_delta", "error"])
def test_malformed_events_are_protocol_errors(event: str) -> None:
    with pytest.raises(UpstreamProtocolError, match="malformed"):
        AnthropicStreamDecoder().feed(event, b"{not json")


# ---- against the fake upstream ---------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()


@pytest.fixture
async def clients(anyio_backend: str) -> AsyncIterator[UpstreamClients]:
    async with UpstreamClients() as pooled:
        yield pooled


def provider_for(
    base_url: str, clients: UpstreamClients, api_key: str | None = KEY, **options: Any
) -> AnthropicProvider:
    deployment = DeploymentConfig(
        provider="anthropic", model="claude-fake", base_url=base_url, api_key_env="FAKE_KEY"
    )
    return AnthropicProvider(deployment, clients.for_url(base_url), api_key, **options)


@pytest.fixture
def provider(upstream: FakeUpstream, clients: UpstreamClients) -> AnthropicProvider:
    return provider_for(upstream.anthropic_base_url, clients)


def ask(text: str = "Say hello", **fields: Any) -> ChatRequest:
    return ChatRequest(model="public-model", messages=[Message("user", [TextPart(text)])], **fields)


async def collect(
    provider: AnthropicProvider, request: ChatRequest | None = None, timeouts: Timeouts = FAST
) -> list[Event]:
    return [event async for event in provider.stream(request or ask(), timeouts)]


async def collect_until_error(
    provider: AnthropicProvider, request: ChatRequest | None = None, timeouts: Timeouts = FAST
) -> tuple[list[Event], UpstreamError]:
    events: list[Event] = []

    async def consume() -> None:
        async for event in provider.stream(request or ask(), timeouts):
            events.append(event)

    with pytest.raises(UpstreamError) as caught:
        await consume()
    return events, caught.value


async def disconnected(upstream: FakeUpstream) -> ServedRequest:
    """The served request that saw its client leave (waited for off the event loop, which
    must keep running to close the socket)."""
    return await anyio.to_thread.run_sync(
        lambda: upstream.wait_for(lambda served: served.client_disconnected, timeout=2.0)
    )


def text_of(events: list[Event]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


@pytest.mark.anyio
async def test_plain_text_stream_and_what_the_upstream_received(
    provider: AnthropicProvider, upstream: FakeUpstream
) -> None:
    request = ChatRequest(
        model="public-model",
        messages=[Message("system", [TextPart("Be brief.")]), Message("user", [TextPart("Hi")])],
        temperature=0.5,
        stop=["END"],
        user="user-7",
    )
    events = await collect(provider, request)

    assert text_of(events) == default_text(5)
    assert all(event.text for event in events if isinstance(event, TextDelta))
    # The fake counts 1 + words per message, the system prompt included.
    assert events[-2:] == [Usage(input_tokens=5, output_tokens=5, cached_tokens=0), Finish("stop")]
    assert sum(isinstance(event, Usage) for event in events) == 1
    [served] = upstream.ledger
    assert served.path == "/v1/messages"
    assert served.headers["x-api-key"] == KEY
    assert served.headers["anthropic-version"] == ANTHROPIC_VERSION
    assert "authorization" not in served.headers
    assert served.body == {
        "model": "claude-fake",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "max_tokens": DEFAULT_MAX_TOKENS,
        "stream": True,
        "system": "Be brief.",
        "temperature": 0.5,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-7"},
    }
    assert served.completed
    assert not served.client_disconnected


@pytest.mark.anyio
async def test_length_finish(provider: AnthropicProvider, upstream: FakeUpstream) -> None:
    events = await collect(provider, ask(max_tokens=2))
    assert text_of(events) == default_text(2)
    assert events[-1] == Finish("length")
    assert upstream.ledger[0].body["max_tokens"] == 2


@pytest.mark.anyio
async def test_an_upstream_without_usage_gets_no_usage_event(
    provider: AnthropicProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(include_usage=False))
    events = await collect(provider)
    assert not any(isinstance(event, Usage) for event in events)
    assert events[-1] == Finish("stop")


@pytest.mark.anyio
async def test_tool_call_reply(provider: AnthropicProvider, upstream: FakeUpstream) -> None:
    arguments = '{"city": "Oslo", "unit": "celsius"}'
    upstream.push(Behavior(text="Let me check.", tool_call=ToolCallReply("get_weather", arguments)))
    events = await collect(provider)

    assert text_of(events) == "Let me check."
    calls = [event for event in events if isinstance(event, ToolCallDelta)]
    assert calls[0].index == 0  # counts tool calls only, although it is content block 1
    assert calls[0].id is not None
    assert calls[0].id.startswith("toolu_")
    assert calls[0].name == "get_weather"
    assert all(call.index == 0 and call.id is None and call.name is None for call in calls[1:])
    assert "".join(call.arguments for call in calls) == arguments
    assert events[-1] == Finish("tool_calls")


@pytest.mark.anyio
async def test_tool_history_and_tools_are_sent(
    provider: AnthropicProvider, upstream: FakeUpstream
) -> None:
    request = ChatRequest(
        model="public-model",
        messages=[
            Message("user", [TextPart("Weather in Oslo?")]),
            Message(
                "assistant", tool_calls=[ToolCall("toolu_1", "get_weather", '{"city":"Oslo"}')]
            ),
            Message("tool", [TextPart("sunny")], tool_call_id="toolu_1"),
        ],
        tools=[Tool("get_weather", "Weather by city", {"type": "object"})],
        tool_choice="get_weather",
    )
    await collect(provider, request)
    body = upstream.ledger[0].body
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
    }
    assert body["tools"] == [
        {
            "name": "get_weather",
            "input_schema": {"type": "object"},
            "description": "Weather by city",
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}


@pytest.mark.anyio
async def test_invalid_tool_arguments_fail_before_anything_is_sent(
    provider: AnthropicProvider, upstream: FakeUpstream
) -> None:
    request = ChatRequest(
        model="public-model",
        messages=[Message("assistant", tool_calls=[ToolCall("t1", "f", "{broken")])],
    )
    with pytest.raises(InvalidRequest):
        await collect(provider, request)
    assert upstream.ledger == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, UpstreamRejected),
        (401, UpstreamAuthFailed),
        (402, UpstreamAuthFailed),
        (403, UpstreamAuthFailed),
        (404, UpstreamRejected),
        (408, UpstreamTimeout),
        (413, UpstreamRejected),
        (422, UpstreamRejected),
        (429, UpstreamRateLimited),
        (500, UpstreamOverloaded),
        (502, UpstreamOverloaded),
        (503, UpstreamOverloaded),
        (504, UpstreamOverloaded),
        (529, UpstreamOverloaded),
    ],
)
async def test_error_statuses(
    provider: AnthropicProvider,
    upstream: FakeUpstream,
    status: int,
    expected: type[UpstreamError],
) -> None:
    upstream.push(Behavior(status=status))
    events, error = await collect_until_error(provider)
    assert events == []
    assert type(error) is expected


@pytest.mark.anyio
async def test_rate_limit_retry_after(provider: AnthropicProvider, upstream: FakeUpstream) -> None:
    upstream.push(Behavior(status=429, retry_after=12))
    _, error = await collect_until_error(provider)
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after == 12.0


@pytest.mark.anyio
async def test_prompt_too_long(provider: AnthropicProvider, upstream: FakeUpstream) -> None:
    upstream.push(
        Behavior(status=400, error_message="prompt is too long: 210000 tokens > 200000 maximum")
    )
    _, error = await collect_until_error(provider)
    assert isinstance(error, UpstreamRejected)
    assert error.code == "context_length_exceeded"
    assert "prompt is too long" in error.message


@pytest.mark.anyio
async def test_the_key_never_reaches_an_error_message(
    provider: AnthropicProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(status=401, error_message=f"invalid x-api-key {KEY}"))
    _, error = await collect_until_error(provider)
    assert isinstance(error, UpstreamAuthFailed)
    assert KEY not in error.message
    assert KEY not in repr(provider)


@pytest.mark.anyio
async def test_in_stream_overloaded_error(
    provider: AnthropicProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(error_event_after=2))  # the fake's default: overloaded_error
    events, error = await collect_until_error(provider)
    assert text_of(events) == default_text(2)
    assert type(error) is UpstreamOverloaded


@pytest.mark.anyio
async def test_in_stream_rate_limit_error(
    provider: AnthropicProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(error_event_after=1, error_type="rate_limit_error"))
    _, error = await collect_until_error(provider)
    assert type(error) is UpstreamRateLimited


@pytest.mark.anyio
async def test_malformed_event(provider: AnthropicProvider, upstream: FakeUpstream) -> None:
    upstream.push(Behavior(malformed_after=1))
    events, error = await collect_until_error(provider)
    assert text_of(events) == default_text(1)
    assert type(error) is UpstreamProtocolError


@pytest.mark.anyio
async def test_a_cut_stream_ended_early_never_a_normal_finish(
    provider: AnthropicProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(cut_after=3))
    events, error = await collect_until_error(provider)
    assert text_of(events) == default_text(3)
    assert not any(isinstance(event, Finish | Usage) for event in events)
    assert type(error) is UpstreamProtocolError
    assert "ended early" in error.message


@pytest.mark.anyio
async def test_a_huge_line_is_refused_without_reading_it_all(
    upstream: FakeUpstream, clients: UpstreamClients
) -> None:
    provider = provider_for(upstream.anthropic_base_url, clients, max_event_bytes=64 * 1024)
    upstream.push(Behavior(huge_line_bytes=8 * 1024 * 1024))
    _, error = await collect_until_error(provider)
    assert type(error) is UpstreamProtocolError
    assert "too long" in error.message
    await disconnected(upstream)


@pytest.mark.anyio
async def test_connection_refused(clients: UpstreamClients) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now, and nobody listens once closed
    provider = provider_for(f"http://127.0.0.1:{port}", clients)
    events, error = await collect_until_error(provider)
    assert events == []
    assert type(error) is UpstreamConnectionFailed


@pytest.mark.anyio
async def test_idle_timeout_on_a_stall(provider: AnthropicProvider, upstream: FakeUpstream) -> None:
    upstream.push(Behavior(stall_after=2))
    timeouts = Timeouts(connect=2.0, first_token=None, idle=0.2, total=None)
    events, error = await collect_until_error(provider, timeouts=timeouts)
    assert text_of(events) == default_text(2)
    assert type(error) is UpstreamTimeout
    await disconnected(upstream)


@pytest.mark.anyio
async def test_closing_the_stream_early_disconnects_the_upstream(
    provider: AnthropicProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(tokens=200, token_delay=0.01))
    stream = provider.stream(ask(), FAST)
    assert await stream.__anext__() == TextDelta("Hello")
    await stream.aclose()

    served = await disconnected(upstream)
    assert not served.completed
    assert served.chunks_sent < 200


# ---- whole replies: a non-streaming caller's request is sent with "stream": false -------------


async def whole(provider: AnthropicProvider, request: ChatRequest | None = None) -> list[Event]:
    return [event async for event in provider.stream(request or ask(), FAST, whole=True)]


@pytest.mark.anyio
async def test_a_whole_reply_gives_the_same_events_as_the_stream(
    provider: AnthropicProvider, upstream: FakeUpstream
) -> None:
    streamed = await collect(provider, ask("Say hello", max_tokens=50))
    events = await whole(provider, ask("Say hello", max_tokens=50))
    assert events[0] == TextDelta("".join(e.text for e in streamed if isinstance(e, TextDelta)))
    assert events[1:] == [e for e in streamed if not isinstance(e, TextDelta)]
    served = upstream.ledger[-1]
    assert served.body["stream"] is False
    assert served.headers["accept"] == "application/json"


@pytest.mark.anyio
async def test_a_whole_tool_use_reply(provider: AnthropicProvider, upstream: FakeUpstream) -> None:
    upstream.push(Behavior(tool_call=ToolCallReply("get_weather", '{"city": "Oslo"}')))
    events = await whole(provider)
    [call] = [event for event in events if isinstance(event, ToolCallDelta)]
    assert (call.index, call.name) == (0, "get_weather")
    assert msgspec.json.decode(call.arguments) == {"city": "Oslo"}
    assert events[-1].reason == "tool_calls"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_whole_reply_error_status_is_classified(
    provider: AnthropicProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(status=529))
    with pytest.raises(UpstreamOverloaded):
        await whole(provider)


def test_a_whole_reply_with_thinking_cache_and_stop_sequence() -> None:
    from interlock.providers.anthropic_reply import decode_message

    reply = msgspec.json.encode(
        {
            "type": "message",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Hello"},
                {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
            ],
            "stop_reason": "stop_sequence",
            "stop_sequence": "END",
            "usage": {
                "input_tokens": 5,
                "output_tokens": 2,
                "cache_read_input_tokens": 10,
                "cache_creation_input_tokens": 1,
            },
        }
    )
    assert decode_message(reply) == [
        ReasoningDelta("hmm"),
        TextDelta("Hello"),
        ToolCallDelta(0, "t1", "f", "{}"),
        Usage(input_tokens=16, output_tokens=2, cached_tokens=10),
        Finish("stop", "END"),
    ]


@pytest.mark.parametrize(
    "reply",
    [
        b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}',
        b"[1, 2",
        b'{"type": "message"}',
    ],
)
def test_whole_replies_that_report_or_are_failures(reply: bytes) -> None:
    from interlock.providers.anthropic_reply import decode_message

    with pytest.raises(UpstreamError):
        decode_message(reply)
