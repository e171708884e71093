"""The fake upstream, driven over loopback by httpx and the official openai / anthropic SDKs."""

from __future__ import annotations

import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from interlock.testing import (
    Behavior,
    FakeUpstream,
    ToolCallReply,
    default_text,
    split_words,
)

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-ant-test"}
DEFAULT_REPLY = "Hello from the fake upstream"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    # One client for the module: building one (its TLS context) costs far more than a test.
    with httpx.Client(timeout=5) as http:
        yield http


@pytest.fixture(scope="module")
def sdk_http() -> Iterator[httpx2.Client]:
    """The HTTP client shared by the official SDKs (they are built on ``httpx2``)."""
    with httpx2.Client(timeout=5) as http:
        yield http


def openai_sdk(upstream: FakeUpstream, http: httpx2.Client, key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=upstream.openai_base_url, api_key=key, max_retries=0, http_client=http
    )


def anthropic_sdk(upstream: FakeUpstream, http: httpx2.Client) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=upstream.anthropic_base_url, api_key="sk-ant", max_retries=0, http_client=http
    )


def chat_body(content: str = "Hi there", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-fake", "messages": [{"role": "user", "content": content}], **extra}


def messages_body(content: str = "Hi there", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-fake",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) for each SSE event of a complete body."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        events.append((name, "\n".join(data)))
    return events


def openai_payloads(text: str) -> list[Any]:
    """The data of each event of an OpenAI stream, JSON-decoded except ``[DONE]``."""
    return [data if data == "[DONE]" else json.loads(data) for _, data in sse_events(text)]


def content_of(payloads: list[Any]) -> list[str]:
    """The text of each content chunk (the role chunk's empty content excluded)."""
    deltas = [
        p["choices"][0]["delta"] for p in payloads if isinstance(p, dict) and p.get("choices")
    ]
    return [d["content"] for d in deltas if "content" in d and "role" not in d]


def stream_lines(client: httpx.Client, url: str, body: dict[str, Any], **kwargs: Any) -> list[str]:
    """Read a stream line by line until it ends or fails; the failure is re-raised with the
    lines read so far attached as ``lines``."""
    lines: list[str] = []
    try:
        with client.stream("POST", url, json=body, **kwargs) as response:
            lines.extend(response.iter_lines())
    except httpx.HTTPError as error:
        error.lines = lines  # type: ignore[attr-defined]
        raise
    return lines


def read_until_stalled(client: httpx.Client, url: str, body: dict[str, Any]) -> bytes:
    """The raw body bytes received until the stream stalls (0.3 s without data)."""
    received = bytearray()
    try:
        with client.stream("POST", url, json=body, timeout=0.3) as response:
            for piece in response.iter_raw():
                received += piece
    except httpx.ReadTimeout:
        return bytes(received)
    pytest.fail("the stream ended instead of stalling")


# -- lifecycle ---------------------------------------------------------------------------------


def test_starts_fast_on_loopback_and_stops_without_leaking_threads(client: httpx.Client) -> None:
    threads_before = set(threading.enumerate())
    started = time.perf_counter()
    upstream = FakeUpstream().start()
    assert time.perf_counter() - started < 0.5
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", upstream.url)
        assert upstream.port > 0
        assert upstream.openai_base_url == upstream.url + "/v1"
        assert upstream.anthropic_base_url == upstream.url
        assert client.get(upstream.url + "/v1/models").status_code == 200
    finally:
        upstream.stop()
    upstream.stop()  # idempotent
    assert set(threading.enumerate()) == threads_before
    with pytest.raises(httpx.ConnectError):
        client.get(upstream.url + "/v1/models")


def test_keeps_connections_alive(upstream: FakeUpstream, client: httpx.Client) -> None:
    for _ in range(3):
        response = client.post(upstream.url + CHAT, json=chat_body(stream=True))
        assert response.status_code == 200
        assert "connection" not in response.headers
    ports = {r.client_port for r in upstream.ledger}
    assert len(ports) == 1
    assert None not in ports


# -- OpenAI happy paths ------------------------------------------------------------------------


def test_openai_reply_shape_and_deterministic_usage(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    body = {
        "model": "gpt-fake",
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
        ],
    }
    response = client.post(upstream.url + CHAT, json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"].startswith("req_")
    data = response.json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert data["model"] == "gpt-fake"
    assert data["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": DEFAULT_REPLY,
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    # prompt: (1 + 2 words) for each message; completion: 5 default tokens
    usage = data["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (6, 5, 11)


def test_openai_stream_follows_the_wire_format(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with client.stream("POST", upstream.url + CHAT, json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    assert text.endswith("data: [DONE]\n\n")
    payloads = openai_payloads(text)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content_of(chunks) == ["Hello", " from", " the", " fake", " upstream"]
    finish = chunks[-2]
    assert finish["choices"][0]["delta"] == {}
    assert finish["choices"][0]["finish_reason"] == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 5
    assert all(c["usage"] is None for c in chunks[:-1])


def test_openai_stream_sends_no_usage_chunk_unless_asked(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    text = client.post(upstream.url + CHAT, json=chat_body(stream=True)).text
    chunks = openai_payloads(text)[:-1]
    assert all(c["choices"] for c in chunks)
    assert all(c["usage"] is None for c in chunks)


def test_openai_sdk_reads_replies_and_streams(
    upstream: FakeUpstream, sdk_http: httpx2.Client
) -> None:
    sdk = openai_sdk(upstream, sdk_http)
    completion = sdk.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "Hi there"}]
    )
    assert completion.choices[0].message.content == DEFAULT_REPLY
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5

    pieces, usage = [], None
    for chunk in sdk.chat.completions.create(
        model="gpt-fake",
        messages=[{"role": "user", "content": "Hi there"}],
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == DEFAULT_REPLY
    assert usage is not None
    assert usage.prompt_tokens == 3
    assert usage.completion_tokens == 5


@pytest.mark.parametrize("cap_field", ["max_tokens", "max_completion_tokens"])
def test_openai_token_cap_truncates_with_length(
    upstream: FakeUpstream, client: httpx.Client, cap_field: str
) -> None:
    data = client.post(upstream.url + CHAT, json=chat_body(**{cap_field: 2})).json()
    assert data["choices"][0]["message"]["content"] == "Hello from"
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 2


def test_openai_tool_call_streams_in_fragments(
    upstream: FakeUpstream, sdk_http: httpx2.Client
) -> None:
    arguments = '{"city": "Paris", "unit": "celsius"}'
    upstream.default = Behavior(tool_call=ToolCallReply("get_weather", arguments))
    sdk = openai_sdk(upstream, sdk_http)
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    messages: Any = [{"role": "user", "content": "Weather?"}]

    completion = sdk.chat.completions.create(model="gpt-fake", messages=messages, tools=tools)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert (call.function.name, call.function.arguments) == ("get_weather", arguments)

    deltas, finish = [], None
    for chunk in sdk.chat.completions.create(
        model="gpt-fake", messages=messages, tools=tools, stream=True
    ):
        delta = chunk.choices[0].delta
        deltas.extend(delta.tool_calls or [])
        finish = chunk.choices[0].finish_reason or finish
    first, rest = deltas[0], deltas[1:]
    assert first.id is not None
    assert first.type == "function"
    assert first.function is not None
    assert (first.function.name, first.function.arguments) == ("get_weather", "")
    assert len(rest) > 1
    assert all(d.id is None and d.index == 0 for d in rest)
    assert "".join(d.function.arguments or "" for d in rest if d.function) == arguments
    assert finish == "tool_calls"


# -- Anthropic happy paths ---------------------------------------------------------------------


def test_anthropic_stream_has_the_exact_event_sequence(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    response = client.post(
        upstream.url + MESSAGES, json=messages_body(stream=True), headers=ANTHROPIC_HEADERS
    )
    assert response.status_code == 200
    assert response.headers["request-id"].startswith("req_")
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 5,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [json.loads(data) for _, data in events]
    assert all(p["type"] == name for p, name in zip(payloads, names, strict=True))
    start = payloads[0]["message"]
    assert (start["content"], start["stop_reason"], start["usage"]["input_tokens"]) == ([], None, 3)
    assert payloads[1]["content_block"] == {"type": "text", "text": ""}
    assert [p["delta"] for p in payloads[3:8]] == [
        {"type": "text_delta", "text": token} for token in split_words(DEFAULT_REPLY)
    ]
    assert payloads[-2]["delta"]["stop_reason"] == "end_turn"
    assert payloads[-2]["usage"] == {"output_tokens": 5}
    assert "[DONE]" not in response.text


def test_anthropic_reply_and_sdk_accumulator(
    upstream: FakeUpstream, sdk_http: httpx2.Client
) -> None:
    sdk = anthropic_sdk(upstream, sdk_http)
    message = sdk.messages.create(
        model="claude-fake", max_tokens=100, messages=[{"role": "user", "content": "Hi there"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == DEFAULT_REPLY
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (3, 5)

    with sdk.messages.stream(
        model="claude-fake", max_tokens=3, messages=[{"role": "user", "content": "Hi there"}]
    ) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == "Hello from the"
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 3


def test_anthropic_tool_use_after_text(upstream: FakeUpstream, sdk_http: httpx2.Client) -> None:
    upstream.default = Behavior(
        text="Let me check.", tool_call=ToolCallReply("get_weather", '{"city": "Paris"}')
    )
    sdk = anthropic_sdk(upstream, sdk_http)
    request: Any = {
        "model": "claude-fake",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
    }
    with sdk.messages.stream(**request) as stream:
        final = stream.get_final_message()
    created = sdk.messages.create(**request)
    for message in (final, created):
        text, tool = message.content
        assert text.type == "text"
        assert text.text == "Let me check."
        assert tool.type == "tool_use"
        assert (tool.name, tool.input) == ("get_weather", {"city": "Paris"})
        assert message.stop_reason == "tool_use"


# -- content behaviours ------------------------------------------------------------------------


def test_default_reply_cycles_and_text_splits_into_word_tokens() -> None:
    assert default_text(5) == DEFAULT_REPLY
    assert default_text(7) == DEFAULT_REPLY + " Hello from"
    assert split_words("Sure, here  it is") == ["Sure,", " here", "  it", " is"]


def test_text_echo_and_token_count(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Behavior(text="Sure, here it is"))
    upstream.push(Behavior(echo=True))
    upstream.push(Behavior(tokens=2))
    payloads = openai_payloads(client.post(upstream.url + CHAT, json=chat_body(stream=True)).text)
    assert content_of(payloads) == ["Sure,", " here", " it", " is"]
    body = {
        "model": "gpt-fake",
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": "echo this back"},
        ],
    }
    reply = client.post(upstream.url + CHAT, json=body).json()
    assert reply["choices"][0]["message"]["content"] == "echo this back"
    reply = client.post(upstream.url + CHAT, json=chat_body()).json()
    assert reply["choices"][0]["message"]["content"] == "Hello from"


def test_finish_reason_override_maps_to_anthropic(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    upstream.default = Behavior(finish_reason="content_filter")
    reply = client.post(upstream.url + CHAT, json=chat_body()).json()
    assert reply["choices"][0]["finish_reason"] == "content_filter"
    message = client.post(upstream.url + MESSAGES, json=messages_body(), headers=ANTHROPIC_HEADERS)
    assert message.json()["stop_reason"] == "refusal"


def test_include_usage_false_sends_no_usage_anywhere(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    upstream.default = Behavior(include_usage=False)
    assert "usage" not in client.post(upstream.url + CHAT, json=chat_body()).json()
    body = chat_body(stream=True, stream_options={"include_usage": True})
    chunks = openai_payloads(client.post(upstream.url + CHAT, json=body).text)[:-1]
    assert all(c["choices"] and c["usage"] is None for c in chunks)

    message = client.post(upstream.url + MESSAGES, json=messages_body(), headers=ANTHROPIC_HEADERS)
    assert "usage" not in message.json()
    response = client.post(
        upstream.url + MESSAGES, json=messages_body(stream=True), headers=ANTHROPIC_HEADERS
    )
    assert '"usage"' not in response.text
    assert "message_delta" in response.text


# -- errors ------------------------------------------------------------------------------------


def test_error_status_in_openai_shape_with_retry_after(
    upstream: FakeUpstream, client: httpx.Client, sdk_http: httpx2.Client
) -> None:
    upstream.push(Behavior(status=429, retry_after=3, headers={"X-Extra": "yes"}))
    response = client.post(upstream.url + CHAT, json=chat_body())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-extra"] == "yes"
    assert response.json() == {
        "error": {
            "message": "Rate limit reached for requests.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    upstream.push(
        Behavior(status=503, error_type="server_error", error_message="down", error_code="x1")
    )
    sdk = openai_sdk(upstream, sdk_http)
    with pytest.raises(openai.InternalServerError) as raised:
        sdk.chat.completions.create(model="gpt-fake", messages=[{"role": "user", "content": "x"}])
    assert raised.value.status_code == 503
    assert (raised.value.code, raised.value.type) == ("x1", "server_error")
    assert raised.value.message.endswith("down")


def test_error_status_in_anthropic_shape(
    upstream: FakeUpstream, client: httpx.Client, sdk_http: httpx2.Client
) -> None:
    upstream.push(Behavior(status=529, retry_after=0.5))
    response = client.post(upstream.url + MESSAGES, json=messages_body(), headers=ANTHROPIC_HEADERS)
    assert response.status_code == 529
    assert response.headers["retry-after"] == "0.5"
    body = response.json()
    assert body["type"] == "error"
    assert body["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    assert body["request_id"] == response.headers["request-id"]

    upstream.push(Behavior(status=429, error_message="slow down"))
    sdk = anthropic_sdk(upstream, sdk_http)
    with pytest.raises(anthropic.RateLimitError) as raised:
        sdk.messages.create(
            model="claude-fake", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
        "request_id": raised.value.response.headers["request-id"],
    }


@pytest.mark.parametrize(
    ("path", "content", "headers", "fragment"),
    [
        (CHAT, b"{not json", {}, "parse the JSON"),
        (CHAT, b"[1, 2]", {}, "JSON object"),
        (CHAT, b'{"messages": [{"role": "user", "content": "x"}]}', {}, "model"),
        (CHAT, b'{"model": "m"}', {}, "messages"),
        (CHAT, b'{"model": "m", "messages": [1], "stream": "yes"}', {}, "stream"),
        (CHAT, b'{"model": "m", "messages": [1], "max_tokens": 0}', {}, "max_tokens"),
        (MESSAGES, b'{"model": "m", "max_tokens": 5, "messages": [1]}', {}, "anthropic-version"),
        (MESSAGES, b'{"model": "m", "messages": [1]}', ANTHROPIC_HEADERS, "max_tokens"),
        (MESSAGES, b"\xff\xfe", ANTHROPIC_HEADERS, "parse the JSON"),
    ],
)
def test_bad_requests_get_400_in_the_protocol_shape(
    upstream: FakeUpstream,
    client: httpx.Client,
    path: str,
    content: bytes,
    headers: dict[str, str],
    fragment: str,
) -> None:
    upstream.push(Behavior(text="kept for the next good request"))
    response = client.post(upstream.url + path, content=content, headers=headers)
    assert response.status_code == 400
    body = response.json()
    if path == CHAT:
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "invalid_request_error"
        message = body["error"]["message"]
    else:
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
        message = body["error"]["message"]
    assert fragment in message
    assert upstream.pending == 1  # a refused request consumes no behaviour
    assert client.post(upstream.url + CHAT, json=chat_body()).status_code == 200


def test_require_key_answers_401_in_each_shape(
    client: httpx.Client, sdk_http: httpx2.Client
) -> None:
    with FakeUpstream(require_key="sk-right") as upstream:
        wrong = client.post(
            upstream.url + CHAT, json=chat_body(), headers={"authorization": "Bearer sk-wrong"}
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        right = client.post(
            upstream.url + CHAT, json=chat_body(), headers={"authorization": "Bearer sk-right"}
        )
        assert right.status_code == 200

        wrong = client.post(
            upstream.url + MESSAGES,
            json=messages_body(),
            headers={"anthropic-version": "2023-06-01", "x-api-key": "sk-wrong"},
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
        for credentials in ({"x-api-key": "sk-right"}, {"authorization": "Bearer sk-right"}):
            right = client.post(
                upstream.url + MESSAGES,
                json=messages_body(),
                headers={"anthropic-version": "2023-06-01", **credentials},
            )
            assert right.status_code == 200

        sdk = openai_sdk(upstream, sdk_http, "sk-wrong")
        with pytest.raises(openai.AuthenticationError):
            sdk.chat.completions.create(
                model="gpt-fake", messages=[{"role": "user", "content": "x"}]
            )
        assert [r.api_key for r in upstream.ledger] == [
            "sk-wrong",
            "sk-right",
            "sk-wrong",
            "sk-right",
            "sk-right",
            "sk-wrong",
        ]


def test_models_endpoint_and_unknown_paths(client: httpx.Client) -> None:
    with FakeUpstream(models=("gpt-a", "claude-b")) as upstream:
        listed = client.get(upstream.url + "/v1/models").json()
        assert listed["object"] == "list"
        assert [m["id"] for m in listed["data"]] == ["gpt-a", "claude-b"]
        listed = client.get(upstream.url + "/v1/models", headers=ANTHROPIC_HEADERS).json()
        assert [m["type"] for m in listed["data"]] == ["model", "model"]
        assert listed["has_more"] is False

        missing = client.get(upstream.url + "/v2/nothing")
        assert missing.status_code == 404
        assert "error" in missing.json()
        assert [(r.path, r.status) for r in upstream.ledger] == [
            ("/v1/models", 200),
            ("/v1/models", 200),
            ("/v2/nothing", 404),
        ]


def test_behavior_rejects_nonsense() -> None:
    for bad in (
        {"status": 99},
        {"status": 600},
        {"first_byte_delay": -1},
        {"tokens": -1},
        {"cut_after": -1},
        {"huge_line_bytes": 4},
    ):
        with pytest.raises(ValueError, match="must"):
            Behavior(**bad)


# -- timing ------------------------------------------------------------------------------------


def test_first_byte_and_token_delays(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Behavior(first_byte_delay=0.15))
    started = time.perf_counter()
    assert client.post(upstream.url + CHAT, json=chat_body()).status_code == 200
    assert time.perf_counter() - started >= 0.15

    upstream.push(Behavior(token_delay=0.04, tokens=4))
    arrivals = []
    with client.stream("POST", upstream.url + CHAT, json=chat_body(stream=True)) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                arrivals.append(time.perf_counter())
    assert len(arrivals) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert min(gaps) >= 0.03

    upstream.push(Behavior(token_delay=0.04, tokens=4))  # non-streaming: (4 - 1) * 0.04 s
    started = time.perf_counter()
    client.post(upstream.url + CHAT, json=chat_body())
    assert time.perf_counter() - started >= 0.12


# -- faults ------------------------------------------------------------------------------------


def test_cut_after_closes_without_terminator(upstream: FakeUpstream, client: httpx.Client) -> None:
    upstream.push(Behavior(cut_after=2))
    with pytest.raises(httpx.RemoteProtocolError) as raised:
        stream_lines(client, upstream.url + CHAT, chat_body(stream=True))
    lines = [line for line in raised.value.lines if line]  # type: ignore[attr-defined]
    assert len(lines) == 3  # role chunk + 2 content chunks, then nothing
    assert "[DONE]" not in "".join(lines)
    assert "error" not in "".join(lines)
    record = upstream.wait_for(lambda r: r.ended_at is not None)
    assert (record.chunks_sent, record.completed, record.client_disconnected) == (2, False, False)

    upstream.push(Behavior(cut_after=0))
    with pytest.raises(httpx.RemoteProtocolError) as raised:
        stream_lines(
            client, upstream.url + MESSAGES, messages_body(stream=True), headers=ANTHROPIC_HEADERS
        )
    assert raised.value.lines == []  # type: ignore[attr-defined]

    upstream.push(Behavior(cut_after=1))  # non-streaming: half the body, then close
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(upstream.url + CHAT, json=chat_body())


def test_stall_after_holds_the_stream_until_the_client_leaves(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    upstream.push(Behavior(stall_after=1))
    with pytest.raises(httpx.ReadTimeout) as raised:
        stream_lines(client, upstream.url + CHAT, chat_body(stream=True), timeout=0.3)
    lines = [line for line in raised.value.lines if line]  # type: ignore[attr-defined]
    assert content_of(openai_payloads("\n\n".join(lines))) == ["Hello"]
    record = upstream.wait_for(lambda r: r.client_disconnected, timeout=2)
    assert (record.status, record.chunks_sent, record.completed) == (200, 1, False)
    assert record.ended_at is not None
    assert record.ended_at - record.started_at >= 0.25


@pytest.mark.anyio
async def test_disconnect_is_recorded_promptly_when_the_client_closes(
    upstream: FakeUpstream,
) -> None:
    upstream.push(Behavior(stall_after=2), model="claude-fake")
    async with (
        httpx.AsyncClient(timeout=5) as http,
        http.stream(
            "POST",
            upstream.url + MESSAGES,
            json=messages_body(stream=True),
            headers=ANTHROPIC_HEADERS,
        ) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("event: ping"):
                break
    closed = time.monotonic()
    record = upstream.wait_for(lambda r: r.client_disconnected, timeout=2)
    assert record.ended_at is not None
    assert record.ended_at - closed < 0.5
    assert record.protocol == "anthropic"
    assert record.chunks_sent == 2


def test_never_answer_sends_nothing_and_records_the_disconnect(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    upstream.push(Behavior(never_answer=True))
    with pytest.raises(httpx.ReadTimeout):
        client.post(upstream.url + CHAT, json=chat_body(), timeout=0.2)
    record = upstream.wait_for(lambda r: r.client_disconnected, timeout=2)
    assert (record.status, record.completed, record.chunks_sent) == (None, False, 0)


def test_malformed_after_sends_a_garbage_line_then_carries_on(
    upstream: FakeUpstream, client: httpx.Client, sdk_http: httpx2.Client
) -> None:
    upstream.push(Behavior(malformed_after=1, tokens=2))
    lines = [
        line for line in stream_lines(client, upstream.url + CHAT, chat_body(stream=True)) if line
    ]
    assert lines[2] == "data: {this is not json"
    assert lines[-1] == "data: [DONE]"
    assert content_of([json.loads(line[6:]) for line in lines[:2] + lines[3:-1]]) == [
        "Hello",
        " from",
    ]

    upstream.push(Behavior(malformed_after=0))
    sdk = anthropic_sdk(upstream, sdk_http)
    with (
        pytest.raises(json.JSONDecodeError),
        sdk.messages.stream(
            model="claude-fake", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        stream.get_final_message()


def test_error_event_as_the_first_thing_in_a_200_stream(
    upstream: FakeUpstream, client: httpx.Client, sdk_http: httpx2.Client
) -> None:
    upstream.default = Behavior(error_event_after=0)
    response = client.post(upstream.url + CHAT, json=chat_body(stream=True))
    assert response.status_code == 200
    assert openai_payloads(response.text) == [
        {
            "error": {
                "message": "The fake upstream failed mid-stream.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    ]
    response = client.post(
        upstream.url + MESSAGES, json=messages_body(stream=True), headers=ANTHROPIC_HEADERS
    )
    assert response.status_code == 200
    assert sse_events(response.text) == [
        ("error", '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
    ]

    sdk = openai_sdk(upstream, sdk_http)
    with pytest.raises(openai.APIError, match="failed mid-stream"):
        for _ in sdk.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass
    claude = anthropic_sdk(upstream, sdk_http)
    with (
        pytest.raises(anthropic.APIStatusError, match="overloaded_error"),
        claude.messages.stream(
            model="claude-fake", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        ) as stream,
    ):
        stream.get_final_message()


def test_error_event_after_chunks_ends_the_body(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    upstream.push(Behavior(error_event_after=2, error_message="boom", error_type="server_error"))
    payloads = openai_payloads(client.post(upstream.url + CHAT, json=chat_body(stream=True)).text)
    assert content_of(payloads) == ["Hello", " from"]
    assert payloads[-1] == {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": None}
    }
    record = upstream.ledger[-1]
    assert (record.chunks_sent, record.completed) == (2, False)


def test_huge_line_never_ends(upstream: FakeUpstream, client: httpx.Client) -> None:
    size = 300_000
    upstream.push(Behavior(huge_line_bytes=size))
    received = read_until_stalled(client, upstream.url + CHAT, chat_body(stream=True))
    before, _, last_line = received.rpartition(b"\n")
    assert last_line == b"data: " + b"x" * (size - len(b"data: "))
    assert len(content_of(openai_payloads(before.decode()))) == 1
    assert upstream.wait_for(lambda r: r.client_disconnected, timeout=2).chunks_sent == 1


def test_stop_ends_stalled_and_unanswered_requests_promptly(client: httpx.Client) -> None:
    upstream = FakeUpstream().start()
    upstream.push(Behavior(stall_after=1), model="stalled")
    upstream.push(Behavior(never_answer=True), model="silent")
    outcomes: dict[str, Any] = {}

    def call(model: str, stream: bool) -> None:
        try:
            response = client.post(upstream.url + CHAT, json=chat_body(model=model, stream=stream))
            outcomes[model] = (response.status_code, response.text)
        except httpx.HTTPError as error:  # pragma: no cover - reported by the asserts
            outcomes[model] = error

    threads = [
        threading.Thread(target=call, args=("stalled", True)),
        threading.Thread(target=call, args=("silent", False)),
    ]
    for thread in threads:
        thread.start()
    upstream.wait_for(lambda r: r.model == "stalled" and r.chunks_sent == 1)
    upstream.wait_for(lambda r: r.model == "silent")
    started = time.perf_counter()
    upstream.stop()
    assert time.perf_counter() - started < 1
    for thread in threads:
        thread.join(5)
    status, text = outcomes["stalled"]
    assert status == 200
    assert "[DONE]" not in text
    status, text = outcomes["silent"]
    assert status == 503
    assert "shutting down" in text


# -- scripting and the ledger ------------------------------------------------------------------


def test_push_default_model_behaviors_and_reset(
    upstream: FakeUpstream, client: httpx.Client
) -> None:
    def ask(model: str) -> str:
        reply = client.post(upstream.url + CHAT, json=chat_body(model=model)).json()
        content: str = reply["choices"][0]["message"]["content"]
        return content

    upstream.default = Behavior(text="default")
    upstream.set_model_behavior("model-b", Behavior(text="sticky b"))
    upstream.push(Behavior(text="first"))
    upstream.push(Behavior(text="only for a"), model="model-a")
    upstream.push(Behavior(text="second"))
    assert upstream.pending == 3
    assert [ask("model-b"), ask("model-b"), ask("model-b")] == ["first", "second", "sticky b"]
    assert [ask("model-c"), ask("model-a"), ask("model-a")] == ["default", "only for a", "default"]
    assert upstream.pending == 0
    upstream.set_model_behavior("model-b", None)
    assert ask("model-b") == "default"

    upstream.set_model_behavior("model-b", Behavior(text="sticky b"))
    upstream.push(Behavior(text="never used"))
    upstream.reset()
    assert upstream.pending == 0
    assert upstream.ledger == []
    assert ask("model-b") == DEFAULT_REPLY
    assert upstream.ledger[0].seq == 8  # sequence numbers keep counting across resets


def test_ledger_records_each_request(upstream: FakeUpstream, client: httpx.Client) -> None:
    client.post(
        upstream.url + CHAT,
        json=chat_body(stream=True),
        headers={"Authorization": "Bearer sk-openai", "X-Trace": "t1"},
    )
    client.post(
        upstream.url + MESSAGES,
        json=messages_body(),
        headers={"Anthropic-Version": "2023-06-01", "X-Api-Key": "sk-anthropic"},
    )
    first, second = upstream.ledger
    assert (first.seq, first.method, first.path, first.protocol) == (1, "POST", CHAT, "openai")
    assert (first.model, first.stream, first.status) == ("gpt-fake", True, 200)
    assert (first.chunks_sent, first.completed, first.client_disconnected) == (5, True, False)
    assert first.body == chat_body(stream=True)
    assert first.headers["authorization"] == "Bearer sk-openai"
    assert first.headers["x-trace"] == "t1"
    assert first.api_key == "sk-openai"
    assert first.behavior == Behavior()
    assert first.ended_at is not None
    assert first.started_at <= first.ended_at <= second.started_at
    assert (second.seq, second.protocol, second.model, second.stream) == (
        2,
        "anthropic",
        "claude-fake",
        False,
    )
    assert (second.status, second.chunks_sent, second.completed) == (200, 5, True)
    assert second.headers["anthropic-version"] == "2023-06-01"
    assert second.api_key == "sk-anthropic"

    first.status = 999  # a snapshot is a copy
    assert upstream.ledger[0].status == 200
    with pytest.raises(TimeoutError, match="no served request matched"):
        upstream.wait_for(lambda r: r.status == 500, timeout=0.05)


def test_record_false_keeps_no_ledger(client: httpx.Client) -> None:
    with FakeUpstream(record=False) as upstream:
        assert client.post(upstream.url + CHAT, json=chat_body()).status_code == 200
        assert upstream.ledger == []


@pytest.mark.anyio
async def test_concurrent_requests_each_get_their_own_answer(upstream: FakeUpstream) -> None:
    import anyio

    upstream.default = Behavior(echo=True, token_delay=0.01)
    answers: dict[str, str] = {}

    async def ask(http: httpx.AsyncClient, index: int) -> None:
        question = f"question number {index}"
        body = chat_body(question, stream=True)
        async with http.stream("POST", upstream.url + CHAT, json=body) as response:
            text = (await response.aread()).decode()
        answers[question] = "".join(content_of(openai_payloads(text)))

    async with httpx.AsyncClient(timeout=5) as http, anyio.create_task_group() as group:
        for index in range(40):
            group.start_soon(ask, http, index)
    assert len(answers) == 40
    assert all(question == answer for question, answer in answers.items())
    assert len(upstream.ledger) == 40
    assert all(r.completed for r in upstream.ledger)


# -- the benchmark's process -------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_runs_as_a_process_and_exits_cleanly_on_signal(
    signum: signal.Signals, client: httpx.Client
) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "interlock.testing.fake_upstream",
            "--port",
            "0",
            "--tokens",
            "16",
            "--first-byte-delay-ms",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        match = re.fullmatch(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line
        reply = client.post(match.group(1) + CHAT, json=chat_body()).json()
        assert reply["usage"]["completion_tokens"] == 16
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=5)
    finally:
        if process.poll() is None:  # pragma: no cover - only when an assert failed
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert stderr == ""
