"""The OpenAI Chat Completions adapter: request and reply translation as pure functions, then
real streams against the fake upstream on loopback (errors, faults, timeouts, disconnects),
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
    UpstreamAuthFailed,
    UpstreamConnectionFailed,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from interlock.providers.base import Timeouts
from interlock.providers.openai import (
    OpenAIProvider,
    OpenAIStreamDecoder,
    build_request_body,
    max_tokens_field_for,
)
from interlock.providers.upstream_client import UpstreamClients
from interlock.settings import DeploymentConfig
from interlock.testing.fake_upstream import (
    Behavior,
    FakeUpstream,
    ServedRequest,
    ToolCallReply,
    default_text,
)

KEY = "sk-test-provider-key-0123456789"
FAST = Timeouts(connect=2.0, first_token=None, idle=2.0, total=None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---- request translation (pure) --------------------------------------------------------------


def test_minimal_body_streams_with_usage_and_replaces_the_model() -> None:
    request = ChatRequest(model="public-name", messages=[Message("user", [TextPart("Hi")])])
    assert build_request_body(request, "gpt-4o-mini") == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_every_set_field_is_sent() -> None:
    request = ChatRequest(
        model="m",
        messages=[
            Message("system", [TextPart("Be brief.")]),
            Message("user", [TextPart("Look: "), ImagePart("https://x.test/a.png", "low")]),
            Message(
                "assistant",
                tool_calls=[ToolCall("call_1", "get_weather", '{"city":"Oslo"}')],
            ),
            Message("tool", [TextPart("sunny")], tool_call_id="call_1"),
            Message("user", [TextPart("Thanks")], name="ada"),
        ],
        max_tokens=100,
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
        seed=7,
        tools=[Tool("get_weather", "Weather by city", {"type": "object"})],
        tool_choice="get_weather",
        parallel_tool_calls=False,
        response_format={"type": "json_object"},
        user="user-42",
    )
    body = build_request_body(request, "m", max_tokens_field="max_completion_tokens")
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look: "},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://x.test/a.png", "detail": "low"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        {"role": "user", "content": "Thanks", "name": "ada"},
    ]
    assert body["max_completion_tokens"] == 100
    assert "max_tokens" not in body
    assert body["temperature"] == 0.2
    assert body["top_p"] == 0.9
    assert body["stop"] == ["END"]
    assert body["seed"] == 7
    assert body["response_format"] == {"type": "json_object"}
    assert body["user"] == "user-42"
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather by city",
                "parameters": {"type": "object"},
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_keywords_pass_through(choice: str) -> None:
    request = ChatRequest(
        model="m",
        messages=[Message("user", [TextPart("x")])],
        tools=[Tool("t")],
        tool_choice=choice,
    )
    body = build_request_body(request, "m")
    assert body["tool_choice"] == choice
    assert body["tools"] == [{"type": "function", "function": {"name": "t"}}]


def test_tool_options_are_not_sent_without_tools() -> None:
    request = ChatRequest(
        model="m",
        messages=[Message("user", [TextPart("x")])],
        tool_choice="auto",
        parallel_tool_calls=True,
    )
    body = build_request_body(request, "m")
    assert "tool_choice" not in body
    assert "parallel_tool_calls" not in body


@pytest.mark.parametrize(
    ("base_url", "field"),
    [
        ("https://api.openai.com/v1", "max_completion_tokens"),
        ("http://127.0.0.1:8000/v1", "max_tokens"),
        ("https://openrouter.ai/api/v1", "max_tokens"),
    ],
)
def test_max_tokens_field_by_host(base_url: str, field: str) -> None:
    assert max_tokens_field_for(base_url) == field


# ---- reply translation (pure) ----------------------------------------------------------------


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return msgspec.json.encode({"id": "c", "choices": choices, "usage": None, **extra})


def decode_all(*datas: bytes) -> list[Event]:
    decoder = OpenAIStreamDecoder()
    events: list[Event] = []
    for data in datas:
        events.extend(decoder.feed(data))
    return events + decoder.end()


def test_text_reasoning_usage_and_finish() -> None:
    usage = {
        "prompt_tokens": 11,
        "completion_tokens": 3,
        "total_tokens": 14,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    events = decode_all(
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "hmm"}),
        chunk({"reasoning": " ok"}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo"}),
        chunk({}, finish="stop"),
        msgspec.json.encode({"id": "c", "choices": [], "usage": usage}),
        b"[DONE]",
    )
    assert events == [
        ReasoningDelta("hmm"),
        ReasoningDelta(" ok"),
        TextDelta("Hel"),
        TextDelta("lo"),
        Usage(input_tokens=11, output_tokens=3, cached_tokens=4),
        Finish("stop"),
    ]


def test_tool_call_fragments_carry_id_and_name_once() -> None:
    first = {
        "index": 0,
        "id": "call_a",
        "type": "function",
        "function": {"name": "f", "arguments": ""},
    }
    events = decode_all(
        chunk({"tool_calls": [first]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
        # some servers repeat id and name on every fragment
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_a", "function": {"name": "f", "arguments": "1}"}}
                ]
            }
        ),
        chunk(
            {
                "tool_calls": [
                    {"index": 1, "id": "call_b", "function": {"name": "g", "arguments": "{}"}}
                ]
            }
        ),
        chunk({}, finish="tool_calls"),
        b"[DONE]",
    )
    assert events == [
        ToolCallDelta(0, "call_a", "f", ""),
        ToolCallDelta(0, None, None, '{"a":'),
        ToolCallDelta(0, None, None, "1}"),
        ToolCallDelta(1, "call_b", "g", "{}"),
        Finish("tool_calls"),
    ]


@pytest.mark.parametrize(
    ("wire", "canonical"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("content_filter", "content_filter"),
        ("something_new", "other"),
    ],
)
def test_finish_reasons(wire: str, canonical: str) -> None:
    assert decode_all(chunk({}, finish=wire), b"[DONE]") == [Finish(canonical)]  # type: ignore[arg-type]


def test_no_usage_reported_means_no_usage_event() -> None:
    assert decode_all(chunk({"content": "x"}), chunk({}, finish="stop"), b"[DONE]") == [
        TextDelta("x"),
        Finish("stop"),
    ]


def test_a_finish_reason_without_done_still_ends_the_stream() -> None:
    assert decode_all(chunk({"content": "x"}, finish="length")) == [
        TextDelta("x"),
        Finish("length"),
    ]


def test_a_stream_without_done_or_finish_reason_ended_early() -> None:
    decoder = OpenAIStreamDecoder()
    decoder.feed(chunk({"content": "x"}))
    with pytest.raises(UpstreamProtocolError, match="ended early"):
        decoder.end()


def test_error_chunk_is_classified() -> None:
    decoder = OpenAIStreamDecoder(secret="sk-secret-value-1234")
    data = msgspec.json.encode(
        {
            "error": {
                "message": "overloaded sk-secret-value-1234",
                "type": "server_error",
                "code": None,
            }
        }
    )
    with pytest.raises(UpstreamOverloaded) as caught:
        decoder.feed(data)
    assert "sk-secret-value-1234" not in caught.value.message


def test_a_vllm_style_error_chunk_is_classified() -> None:
    data = msgspec.json.encode(
        {"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}
    )
    with pytest.raises(UpstreamRejected):
        OpenAIStreamDecoder().feed(data)


@pytest.mark.parametrize("data", [b"{not json", b'{"choices": "nope"}', b"[1, 2]"])
def test_malformed_chunks_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(UpstreamProtocolError, match="malformed"):
        OpenAIStreamDecoder().feed(data)


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
) -> OpenAIProvider:
    deployment = DeploymentConfig(
        provider="openai", model="fake-model", base_url=base_url, api_key_env="FAKE_KEY"
    )
    return OpenAIProvider(deployment, clients.for_url(base_url), api_key, **options)


@pytest.fixture
def provider(upstream: FakeUpstream, clients: UpstreamClients) -> OpenAIProvider:
    return provider_for(upstream.openai_base_url, clients)


def ask(text: str = "Say hello", **fields: Any) -> ChatRequest:
    return ChatRequest(model="public-model", messages=[Message("user", [TextPart(text)])], **fields)


async def collect(
    provider: OpenAIProvider, request: ChatRequest | None = None, timeouts: Timeouts = FAST
) -> list[Event]:
    return [event async for event in provider.stream(request or ask(), timeouts)]


async def collect_until_error(
    provider: OpenAIProvider, request: ChatRequest | None = None, timeouts: Timeouts = FAST
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
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    events = await collect(provider, ask("Say hello", max_tokens=50, temperature=0.3))

    assert text_of(events) == default_text(5)
    assert all(event.text for event in events if isinstance(event, TextDelta))
    assert events[-2:] == [Usage(input_tokens=3, output_tokens=5, cached_tokens=0), Finish("stop")]
    [served] = upstream.ledger
    assert served.path == "/v1/chat/completions"
    assert served.headers["authorization"] == f"Bearer {KEY}"
    assert served.headers["content-type"] == "application/json"
    assert served.body == {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Say hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "temperature": 0.3,
    }
    assert served.completed
    assert not served.client_disconnected


@pytest.mark.anyio
async def test_length_finish(provider: OpenAIProvider) -> None:
    events = await collect(provider, ask(max_tokens=2))
    assert text_of(events) == default_text(2)
    assert events[-1] == Finish("length")


@pytest.mark.anyio
async def test_an_upstream_without_usage_gets_no_usage_event(
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(include_usage=False))
    events = await collect(provider)
    assert not any(isinstance(event, Usage) for event in events)
    assert events[-1] == Finish("stop")


@pytest.mark.anyio
async def test_no_key_sends_no_authorization(
    upstream: FakeUpstream, clients: UpstreamClients
) -> None:
    await collect(provider_for(upstream.openai_base_url, clients, api_key=None))
    assert "authorization" not in upstream.ledger[0].headers


@pytest.mark.anyio
async def test_tool_call_reply(provider: OpenAIProvider, upstream: FakeUpstream) -> None:
    arguments = '{"city": "Oslo", "unit": "celsius"}'
    upstream.push(Behavior(tool_call=ToolCallReply("get_weather", arguments)))
    events = await collect(provider)

    calls = [event for event in events if isinstance(event, ToolCallDelta)]
    assert calls[0].index == 0
    assert calls[0].id is not None
    assert calls[0].name == "get_weather"
    assert all(call.index == 0 and call.id is None and call.name is None for call in calls[1:])
    assert "".join(call.arguments for call in calls) == arguments
    assert events[-1] == Finish("tool_calls")


@pytest.mark.anyio
async def test_tool_history_and_tools_are_sent(
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    request = ChatRequest(
        model="public-model",
        messages=[
            Message("user", [TextPart("Weather in Oslo?")]),
            Message("assistant", tool_calls=[ToolCall("call_1", "get_weather", '{"city":"Oslo"}')]),
            Message("tool", [TextPart("sunny")], tool_call_id="call_1"),
        ],
        tools=[Tool("get_weather", "Weather by city", {"type": "object"})],
        tool_choice="auto",
    )
    await collect(provider, request)
    body = upstream.ledger[0].body
    assert body["messages"][1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Oslo"}',
    }
    assert body["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tool_choice"] == "auto"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, UpstreamRejected),
        (401, UpstreamAuthFailed),
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
    provider: OpenAIProvider,
    upstream: FakeUpstream,
    status: int,
    expected: type[UpstreamError],
) -> None:
    upstream.push(Behavior(status=status))
    events, error = await collect_until_error(provider)
    assert events == []
    assert type(error) is expected


@pytest.mark.anyio
async def test_rate_limit_retry_after_seconds(
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(status=429, retry_after=3))
    _, error = await collect_until_error(provider)
    assert isinstance(error, UpstreamRateLimited)
    assert error.retry_after == 3.0


@pytest.mark.anyio
async def test_rate_limit_retry_after_ms(provider: OpenAIProvider, upstream: FakeUpstream) -> None:
    upstream.push(Behavior(status=429, headers={"retry-after-ms": "1500", "retry-after": "2"}))
    _, error = await collect_until_error(provider)
    assert error.retry_after == 1.5


@pytest.mark.anyio
async def test_context_length_rejection(provider: OpenAIProvider, upstream: FakeUpstream) -> None:
    upstream.push(
        Behavior(
            status=400,
            error_code="context_length_exceeded",
            error_message="This model's maximum context length is 8192 tokens.",
        )
    )
    _, error = await collect_until_error(provider)
    assert isinstance(error, UpstreamRejected)
    assert error.code == "context_length_exceeded"
    assert not error.retryable


@pytest.mark.anyio
async def test_the_key_never_reaches_an_error_message(
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(status=401, error_message=f"Incorrect API key provided: {KEY}."))
    _, error = await collect_until_error(provider)
    assert isinstance(error, UpstreamAuthFailed)
    assert KEY not in error.message
    assert KEY not in str(error)
    assert KEY not in repr(provider)


@pytest.mark.anyio
async def test_in_stream_error_event(provider: OpenAIProvider, upstream: FakeUpstream) -> None:
    upstream.push(Behavior(error_event_after=2, error_type="server_error"))
    events, error = await collect_until_error(provider)
    assert text_of(events) == default_text(2)
    assert type(error) is UpstreamOverloaded


@pytest.mark.anyio
async def test_in_stream_rate_limit(provider: OpenAIProvider, upstream: FakeUpstream) -> None:
    upstream.push(
        Behavior(error_event_after=1, error_type="requests", error_code="rate_limit_exceeded")
    )
    _, error = await collect_until_error(provider)
    assert type(error) is UpstreamRateLimited


@pytest.mark.anyio
async def test_malformed_event(provider: OpenAIProvider, upstream: FakeUpstream) -> None:
    upstream.push(Behavior(malformed_after=1))
    events, error = await collect_until_error(provider)
    assert text_of(events) == default_text(1)
    assert type(error) is UpstreamProtocolError


@pytest.mark.anyio
async def test_a_cut_stream_ended_early_never_a_normal_finish(
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(cut_after=2))
    events, error = await collect_until_error(provider)
    assert text_of(events) == default_text(2)
    assert not any(isinstance(event, Finish) for event in events)
    assert type(error) is UpstreamProtocolError


@pytest.mark.anyio
async def test_a_huge_line_is_refused_without_reading_it_all(
    upstream: FakeUpstream, clients: UpstreamClients
) -> None:
    provider = provider_for(upstream.openai_base_url, clients, max_event_bytes=64 * 1024)
    upstream.push(Behavior(huge_line_bytes=8 * 1024 * 1024))
    _, error = await collect_until_error(provider)
    assert type(error) is UpstreamProtocolError
    assert "too long" in error.message
    # The fake stalls after the line until the client leaves: we left, and at once.
    await disconnected(upstream)


@pytest.mark.anyio
async def test_a_key_that_cannot_be_sent_is_a_clear_error_without_the_key(
    upstream: FakeUpstream, clients: UpstreamClients
) -> None:
    key = "sk-pasted-with-a-stray-\u2028"
    provider = provider_for(upstream.openai_base_url, clients, api_key=key)
    events, error = await collect_until_error(provider)
    assert events == []
    assert type(error) is UpstreamConnectionFailed
    assert "invalid request header" in error.message
    assert key not in error.message
    assert upstream.ledger == []


@pytest.mark.anyio
async def test_connection_refused(clients: UpstreamClients) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free now, and nobody listens once closed
    provider = provider_for(f"http://127.0.0.1:{port}/v1", clients)
    events, error = await collect_until_error(provider)
    assert events == []
    assert type(error) is UpstreamConnectionFailed
    assert str(port) not in error.message


@pytest.mark.anyio
async def test_idle_timeout_on_a_stall(provider: OpenAIProvider, upstream: FakeUpstream) -> None:
    upstream.push(Behavior(stall_after=1))
    timeouts = Timeouts(connect=2.0, first_token=None, idle=0.2, total=None)
    events, error = await collect_until_error(provider, timeouts=timeouts)
    assert text_of(events) == default_text(1)
    assert type(error) is UpstreamTimeout
    await disconnected(upstream)


@pytest.mark.anyio
async def test_idle_timeout_before_the_response_head(
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(never_answer=True))
    timeouts = Timeouts(connect=2.0, first_token=None, idle=0.2, total=None)
    _, error = await collect_until_error(provider, timeouts=timeouts)
    assert type(error) is UpstreamTimeout


@pytest.mark.anyio
async def test_closing_the_stream_early_disconnects_the_upstream(
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(tokens=200, token_delay=0.01))
    stream = provider.stream(ask(), FAST)
    first = await stream.__anext__()
    assert first == TextDelta("Hello")
    await stream.aclose()

    served = await disconnected(upstream)
    assert not served.completed
    assert served.chunks_sent < 200


@pytest.mark.anyio
async def test_the_connection_is_reused_after_a_complete_stream(
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    await collect(provider)
    await collect(provider)
    first, second = upstream.ledger
    assert first.client_port is not None
    assert first.client_port == second.client_port


# ---- whole replies: a non-streaming caller's request is sent with "stream": false -------------


async def whole(provider: OpenAIProvider, request: ChatRequest | None = None) -> list[Event]:
    return [event async for event in provider.stream(request or ask(), FAST, whole=True)]


@pytest.mark.anyio
async def test_a_whole_reply_gives_the_same_events_as_the_stream(
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    events = await whole(provider, ask("Say hello", max_tokens=50))
    assert events == [
        TextDelta(default_text(5)),
        Usage(input_tokens=3, output_tokens=5, cached_tokens=0),
        Finish("stop"),
    ]
    [served] = upstream.ledger
    assert served.body["stream"] is False and "stream_options" not in served.body
    assert served.headers["accept"] == "application/json"
    assert served.completed


@pytest.mark.anyio
async def test_a_whole_tool_call_reply(provider: OpenAIProvider, upstream: FakeUpstream) -> None:
    arguments = '{"city": "Oslo"}'
    upstream.push(Behavior(tool_call=ToolCallReply("get_weather", arguments)))
    events = await whole(provider)
    [call] = [event for event in events if isinstance(event, ToolCallDelta)]
    assert (call.index, call.name, call.arguments) == (0, "get_weather", arguments)
    assert call.id
    assert events[-1] == Finish("tool_calls")


@pytest.mark.anyio
async def test_a_whole_reply_without_usage_or_with_length(
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(include_usage=False))
    events = await whole(provider, ask(max_tokens=2))
    assert events == [TextDelta(default_text(2)), Finish("length")]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "expected"),
    [(401, UpstreamAuthFailed), (400, UpstreamRejected), (429, UpstreamRateLimited)],
)
async def test_whole_reply_error_statuses(
    provider: OpenAIProvider, upstream: FakeUpstream, status: int, expected: type[UpstreamError]
) -> None:
    upstream.push(Behavior(status=status, retry_after=2 if status == 429 else None))
    with pytest.raises(expected) as caught:
        await whole(provider)
    assert KEY not in caught.value.message
    if status == 429:
        assert caught.value.retry_after == 2


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b'{"error": {"message": "overloaded", "type": "server_error"}}', UpstreamError),
        (b'{"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}', None),
        (b"not json", UpstreamProtocolError),
        (b'{"choices": []}', UpstreamProtocolError),
    ],
)
def test_whole_replies_that_report_or_are_failures(
    reply: bytes, expected: type[UpstreamError] | None
) -> None:
    from interlock.providers.openai import decode_completion

    with pytest.raises(expected or UpstreamError):
        decode_completion(reply)


def test_a_whole_reply_with_reasoning_and_two_tool_calls() -> None:
    from interlock.providers.openai import decode_completion

    reply = msgspec.json.encode(
        {
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "reasoning_content": "thinking",
                        "tool_calls": [
                            {"id": "a", "function": {"name": "f", "arguments": "{}"}},
                            {"id": "b", "function": {"name": "g", "arguments": '{"x":1}'}},
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 4,
                "prompt_tokens_details": {"cached_tokens": 3},
            },
        }
    )
    assert decode_completion(reply) == [
        ReasoningDelta("thinking"),
        ToolCallDelta(0, "a", "f", "{}"),
        ToolCallDelta(1, "b", "g", '{"x":1}'),
        Usage(input_tokens=9, output_tokens=4, cached_tokens=3),
        Finish("tool_calls"),
    ]


@pytest.mark.anyio
async def test_a_whole_reply_over_the_size_limit_is_refused(
    upstream: FakeUpstream, clients: UpstreamClients
) -> None:
    provider = provider_for(upstream.openai_base_url, clients, max_reply_bytes=1000)
    upstream.push(Behavior(tokens=2000))
    with pytest.raises(UpstreamProtocolError, match="too large"):
        await whole(provider)


@pytest.mark.anyio
async def test_closing_a_whole_reply_early_disconnects_the_upstream(
    provider: OpenAIProvider, upstream: FakeUpstream
) -> None:
    upstream.push(Behavior(never_answer=True))
    with anyio.move_on_after(0.3):
        await whole(provider)
    served = await disconnected(upstream)
    assert served.client_disconnected
