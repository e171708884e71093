"""The Anthropic Messages surface, driven by the official ``anthropic`` client against a real
gateway on loopback, in front of the fake upstream: answers from Anthropic and OpenAI
deployments alike, streams with the exact event sequence, tools, errors in Anthropic's
shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from interlock.testing.fake_upstream import Behavior, FakeUpstream, ToolCallReply
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve, usage_rows

PROVIDER_KEY = "sk-fake-provider-key-123"
OLD_VERSION = "2023-06-01"
NEW_VERSION = "2026-10-21"
HELLO: Any = [{"role": "user", "content": "Say hello"}]
WEATHER: Any = [
    {
        "name": "get_weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def deployment(base_url: str, model: str, provider: str, **extra: Any) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": model,
        "base_url": base_url,
        "api_key_env": "FAKE_PROVIDER_KEY",
        "name": extra.pop("name", f"{provider}-{model}"),
        **extra,
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    config = {
        "server": {"max_body_bytes": 64 * 1024, "max_output_tokens": 4096},
        "usage": {"flush_interval_ms": 20},
        "models.claude-fake": {
            "deployments": [deployment(upstream.anthropic_base_url, "claude-up", "anthropic")]
        },
        "models.gpt-fake": {
            "deployments": [deployment(upstream.openai_base_url, "gpt-up", "openai")]
        },
        "models.failover": {
            "deployments": [
                deployment(upstream.anthropic_base_url, "primary", "anthropic", priority=1),
                deployment(upstream.openai_base_url, "secondary", "openai", priority=2),
            ]
        },
        # Its own deployment: a Retry-After keeps a deployment out of traffic that long.
        "models.limited": {
            "deployments": [deployment(upstream.openai_base_url, "limited", "openai")]
        },
    }
    with serve(make_settings(tmp, config)) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=ADMIN_KEY, max_retries=0) as c:
        yield c


def raw(
    gateway: RunningGateway,
    body: Any = None,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
    path: str = "/v1/messages",
) -> httpx.Response:
    sent = {"content-type": "application/json", "x-api-key": ADMIN_KEY}
    sent.update(headers or {})
    return httpx.post(
        f"{gateway.url}{path}",
        json=body,
        content=content,
        headers={k: v for k, v in sent.items() if v},
    )


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of a raw stream, as (event name, data); each must be named."""
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        assert set(lines) == {"event", "data"}, block
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        events.append((lines["event"], data))
    return events


# ---- answers ---------------------------------------------------------------------------------


def test_plain_answer_from_an_anthropic_deployment(
    client: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="Hello there friend")
    response = client.messages.with_raw_response.create(
        model="claude-fake", max_tokens=100, messages=HELLO
    )
    message = response.parse()
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == "claude-fake"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello there friend"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens == 3  # the fake counts 1 + the words of each message
    assert message.usage.output_tokens == 3
    assert response.headers["request-id"] == response.headers["x-request-id"]
    assert response.headers["x-interlock-deployment"] == "anthropic-claude-up"
    [served] = upstream.ledger
    assert served.protocol == "anthropic"
    assert served.body["model"] == "claude-up"
    assert served.body["max_tokens"] == 100
    assert served.api_key == PROVIDER_KEY


def test_an_openai_deployment_serves_a_messages_call(
    client: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="Bonjour le monde")
    message = client.messages.create(
        model="gpt-fake",
        max_tokens=50,
        system="Answer in French.",
        messages=HELLO,
        metadata={"user_id": "user-7"},
    )
    assert message.content[0].text == "Bonjour le monde"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 3
    with client.messages.stream(model="gpt-fake", max_tokens=50, messages=HELLO) as stream:
        assert "".join(stream.text_stream) == "Bonjour le monde"
        final = stream.get_final_message()
    assert final.content[0].text == "Bonjour le monde"  # type: ignore[union-attr]
    first = upstream.ledger[0]
    assert first.protocol == "openai"
    assert first.body["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert first.body["messages"][1]["role"] == "user"
    assert first.body["user"] == "user-7"
    assert first.body["max_tokens"] == 50


def test_streaming_event_sequence_and_accumulated_message(
    client: anthropic.Anthropic, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="one two three four")
    with client.messages.stream(model="claude-fake", max_tokens=100, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three four"
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 3 and final.usage.output_tokens == 4

    response = raw(
        gateway, {"model": "claude-fake", "max_tokens": 100, "messages": HELLO, "stream": True}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    events = sse_events(response.text)
    assert [name for name, _ in events] == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[2][1]["content_block"] == {"type": "text", "text": ""}
    assert events[3][1]["delta"] == {"type": "text_delta", "text": "one"}
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] == 4
    assert "[DONE]" not in response.text


def test_tool_use_round_trip(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    upstream.default = Behavior(tool_call=ToolCallReply("get_weather", '{"city": "Paris"}'))
    for model in ("claude-fake", "gpt-fake"):
        message = client.messages.create(
            model=model,
            max_tokens=100,
            messages=HELLO,
            tools=WEATHER,
            tool_choice={"type": "any"},
        )
        assert message.stop_reason == "tool_use"
        [call] = message.content
        assert call.type == "tool_use"
        assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
        with client.messages.stream(
            model=model, max_tokens=100, messages=HELLO, tools=WEATHER
        ) as stream:
            final = stream.get_final_message()
        [streamed] = final.content
        assert streamed.type == "tool_use"
        assert streamed.input == {"city": "Paris"}
        assert final.stop_reason == "tool_use"

        # The caller runs the tool and sends the result back.
        upstream.reset()
        upstream.default = Behavior(text="It is sunny.")
        answer = client.messages.create(
            model=model,
            max_tokens=100,
            tools=WEATHER,
            messages=[
                *HELLO,
                {"role": "assistant", "content": message.content},  # type: ignore[dict-item]
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21C"}
                    ],
                },
            ],
        )
        assert answer.content[0].text == "It is sunny."  # type: ignore[union-attr]
        sent = upstream.ledger[0].body
        if model == "gpt-fake":
            assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
            assert json.loads(sent["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {
                "city": "Paris"
            }
            assert sent["messages"][2] == {
                "role": "tool",
                "tool_call_id": call.id,
                "content": "Sunny, 21C",
            }
            assert sent["tools"][0]["function"]["name"] == "get_weather"
        else:
            assert sent["messages"][1]["content"][0]["type"] == "tool_use"
            assert sent["messages"][1]["content"][0]["input"] == {"city": "Paris"}
            assert sent["messages"][2]["content"][0] == {
                "type": "tool_result",
                "tool_use_id": call.id,
                "content": "Sunny, 21C",
            }
            assert sent["tools"][0]["input_schema"] == WEATHER[0]["input_schema"]
        upstream.reset()
        upstream.default = Behavior(tool_call=ToolCallReply("get_weather", '{"city": "Paris"}'))


def test_tool_choice_reaches_the_provider(
    client: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    client.messages.create(
        model="gpt-fake",
        max_tokens=10,
        messages=HELLO,
        tools=WEATHER,
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    )
    client.messages.create(
        model="claude-fake",
        max_tokens=10,
        messages=HELLO,
        tools=WEATHER,
        tool_choice={"type": "any"},
    )
    openai_body, anthropic_body = (served.body for served in upstream.ledger)
    assert openai_body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert openai_body["parallel_tool_calls"] is False
    assert anthropic_body["tool_choice"] == {"type": "any"}


def test_system_prompt_as_blocks(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    system: Any = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": " Be kind."}]
    client.messages.create(model="claude-fake", max_tokens=10, system=system, messages=HELLO)
    client.messages.create(model="gpt-fake", max_tokens=10, system=system, messages=HELLO)
    anthropic_body, openai_body = (served.body for served in upstream.ledger)
    assert "Be brief." in anthropic_body["system"] and "Be kind." in anthropic_body["system"]
    assert anthropic_body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Say hello"}]}
    ]
    assert openai_body["messages"][0]["role"] == "system"
    assert "Be brief." in json.dumps(openai_body["messages"][0]["content"])


def test_stop_sequences_and_max_tokens(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    client.messages.create(
        model="claude-fake", max_tokens=10, messages=HELLO, stop_sequences=["END", "STOP"]
    )
    client.messages.create(model="gpt-fake", max_tokens=10, messages=HELLO, stop_sequences=["END"])
    anthropic_body, openai_body = (served.body for served in upstream.ledger)
    assert anthropic_body["stop_sequences"] == ["END", "STOP"]
    assert openai_body["stop"] == ["END"]
    # A provider that says which stop sequence ended the answer: passed on as it said.
    upstream.default = Behavior(text="Count: one two", finish_reason="stop_sequence")
    message = client.messages.create(
        model="claude-fake", max_tokens=10, messages=HELLO, stop_sequences=["three", "four"]
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "three")
    with client.messages.stream(
        model="claude-fake", max_tokens=10, messages=HELLO, stop_sequences=["three"]
    ) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "three")
    assert final.content[0].text == "Count: one two"  # type: ignore[union-attr]
    upstream.default = Behavior()
    # The fake stops at max_tokens words, as a model would.
    message = client.messages.create(model="gpt-fake", max_tokens=2, messages=HELLO)
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == "Hello from"  # type: ignore[union-attr]


def test_sampling_parameters_with_the_old_version(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    sampling = {"temperature": 0.2, "top_p": 0.8, "top_k": 5}
    for model in ("claude-fake", "gpt-fake"):
        body = {"model": model, "max_tokens": 10, "messages": HELLO, **sampling}
        response = raw(gateway, body, headers={"anthropic-version": OLD_VERSION})
        assert response.status_code == 200, response.text
    anthropic_body, openai_body = (served.body for served in upstream.ledger)
    assert (anthropic_body["temperature"], anthropic_body["top_p"], anthropic_body["top_k"]) == (
        0.2,
        0.8,
        5,
    )
    assert (openai_body["temperature"], openai_body["top_p"]) == (0.2, 0.8)
    assert "top_k" not in openai_body  # OpenAI's API has no top_k

    body = {"model": "claude-fake", "max_tokens": 10, "messages": HELLO, "top_k": 5}
    response = raw(gateway, body, headers={"anthropic-version": NEW_VERSION})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "top_k" in response.json()["error"]["message"]
    assert len(upstream.ledger) == 2


# ---- credentials and versions ----------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": ADMIN_KEY, "anthropic-version": OLD_VERSION},
        {"x-api-key": "", "authorization": f"Bearer {ADMIN_KEY}", "anthropic-version": NEW_VERSION},
        {"x-api-key": ADMIN_KEY},  # no version: the old one is assumed
    ],
)
def test_x_api_key_and_bearer_both_work(
    gateway: RunningGateway, upstream: FakeUpstream, headers: dict[str, str]
) -> None:
    response = raw(
        gateway, {"model": "claude-fake", "max_tokens": 10, "messages": HELLO}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "Hello from the fake upstream"


def test_an_old_style_client_sending_x_api_key(
    gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    headers = {"X-Api-Key": ADMIN_KEY, "anthropic-version": OLD_VERSION}
    with anthropic.Anthropic(
        base_url=gateway.url, api_key=None, default_headers=headers, max_retries=0
    ) as old:
        message = old.messages.create(model="gpt-fake", max_tokens=10, messages=HELLO)
    assert message.content[0].text == "Hello from the fake upstream"  # type: ignore[union-attr]


def test_a_malformed_version_is_refused(gateway: RunningGateway) -> None:
    response = raw(
        gateway,
        {"model": "claude-fake", "max_tokens": 10, "messages": HELLO},
        headers={"anthropic-version": "latest"},
    )
    assert response.status_code == 400
    assert "anthropic-version" in response.json()["error"]["message"]


# ---- errors ----------------------------------------------------------------------------------


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"type", "error", "request_id"}
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["request_id"] == response.headers["request-id"]
    assert "Traceback" not in response.text
    error: dict[str, Any] = body["error"]
    return error


def test_wrong_or_missing_key_is_an_authentication_error(
    gateway: RunningGateway, client: anthropic.Anthropic
) -> None:
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key="wrong-key", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        bad.messages.create(model="claude-fake", max_tokens=10, messages=HELLO)
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    response = raw(
        gateway,
        {"model": "claude-fake", "max_tokens": 10, "messages": HELLO},
        headers={"x-api-key": ""},
    )
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=10, messages=HELLO)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="no-such-model", max_tokens=10, messages=HELLO, stream=True)


def test_bad_requests(client: anthropic.Anthropic, upstream: FakeUpstream) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="claude-fake", max_tokens=5000, messages=HELLO)
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in caught.value.message
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="claude-fake", max_tokens=10, messages=[])
    assert "messages" in caught.value.message
    assert upstream.ledger == []


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"model": "claude-fake", "messages": HELLO}, "max_tokens: Field required"),
        (
            {
                "model": "claude-fake",
                "max_tokens": 10,
                "messages": [{"role": "system", "content": "x"}],
            },
            "messages[0].role",
        ),
        ({"model": "claude-fake", "max_tokens": "10", "messages": HELLO}, "max_tokens"),
        ([1, 2], "Expected `object`"),
    ],
)
def test_malformed_bodies_are_400_in_anthropic_shape(
    gateway: RunningGateway, upstream: FakeUpstream, body: Any, words: str
) -> None:
    response = raw(gateway, body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert words in error["message"]
    for content in (b"{not json", b"", b"\xff"):
        response = raw(gateway, content=content)
        assert response.status_code == 400
        assert error_of(response)["type"] == "invalid_request_error"
    assert upstream.ledger == []


def test_oversized_body_is_413_request_too_large(gateway: RunningGateway) -> None:
    huge = [{"role": "user", "content": "x" * 100_000}]
    response = raw(gateway, {"model": "claude-fake", "max_tokens": 10, "messages": huge})
    assert response.status_code == 413
    assert error_of(response)["type"] == "request_too_large"


def test_upstream_rate_limit_is_a_rate_limit_error_with_retry_after(
    client: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(status=429, retry_after=7)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="limited", max_tokens=10, messages=HELLO)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("behavior", "status", "error_type"),
    [
        (Behavior(status=503), 503, "overloaded_error"),
        (Behavior(status=529), 503, "overloaded_error"),
        (Behavior(status=401, error_message=f"invalid x-api-key {PROVIDER_KEY}"), 502, "api_error"),
    ],
)
def test_upstream_failures_are_api_status_errors(
    client: anthropic.Anthropic,
    upstream: FakeUpstream,
    behavior: Behavior,
    status: int,
    error_type: str,
) -> None:
    upstream.default = behavior
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="claude-fake", max_tokens=10, messages=HELLO)
    assert caught.value.status_code == status
    assert caught.value.body["error"]["type"] == error_type  # type: ignore[index]
    assert PROVIDER_KEY not in caught.value.response.text


def test_mid_stream_failure_ends_with_an_error_event(
    client: anthropic.Anthropic, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(tokens=10, cut_after=3)
    received: list[str] = []

    def read() -> None:
        with client.messages.stream(model="claude-fake", max_tokens=100, messages=HELLO) as stream:
            received.extend(stream.text_stream)

    with pytest.raises(anthropic.APIStatusError) as caught:
        read()
    assert "".join(received) == "Hello from the"
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]

    response = raw(
        gateway, {"model": "gpt-fake", "max_tokens": 100, "messages": HELLO, "stream": True}
    )
    assert response.status_code == 200
    events = sse_events(response.text)
    names = [name for name, _ in events]
    assert names[-1] == "error"
    assert "message_stop" not in names and "message_delta" not in names
    assert events[-1][1]["error"]["type"] == "api_error"


def test_failover_before_the_first_byte_is_invisible(
    client: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("primary", Behavior(status=529))
    upstream.set_model_behavior("secondary", Behavior(text="from secondary"))
    with client.messages.stream(model="failover", max_tokens=10, messages=HELLO) as stream:
        assert "".join(stream.text_stream) == "from secondary"
    assert upstream.ledger[-1].model == "secondary"


def test_client_disconnect_mid_stream_closes_the_upstream_call(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(tokens=1000, token_delay=0.01)
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/messages",
        json={"model": "claude-fake", "max_tokens": 4000, "messages": HELLO, "stream": True},
        headers={"x-api-key": ADMIN_KEY},
    ) as response:
        for _ in response.iter_lines():
            break
    served = upstream.wait_for(lambda served: served.client_disconnected, 2.0)
    assert not served.completed


def test_unknown_routes_and_methods_under_messages_are_anthropic_shaped(
    gateway: RunningGateway,
) -> None:
    response = httpx.get(f"{gateway.url}/v1/messages", headers={"x-api-key": ADMIN_KEY})
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = raw(gateway, {}, path="/v1/messages/batches")
    assert response.status_code == 404
    assert response.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "No route for POST /v1/messages/batches."},
    }


# ---- usage -----------------------------------------------------------------------------------


def test_every_messages_request_leaves_one_usage_row(
    client: anthropic.Anthropic, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="one two three")
    response = client.messages.with_raw_response.create(
        model="gpt-fake", max_tokens=10, messages=HELLO
    )
    message = response.parse()
    [row] = usage_rows(gateway, response.headers["request-id"])
    assert (row.input_tokens, row.output_tokens) == (
        message.usage.input_tokens,
        message.usage.output_tokens,
    )
    assert (row.status, row.streaming, row.partial, row.model) == (200, False, False, "gpt-fake")

    with client.messages.with_streaming_response.create(
        model="claude-fake", max_tokens=10, messages=HELLO, stream=True
    ) as streamed:
        request_id = streamed.headers["request-id"]
        for _ in streamed.iter_lines():
            pass
    [row] = usage_rows(gateway, request_id)
    assert (row.status, row.streaming, row.partial, row.output_tokens) == (200, True, False, 3)

    upstream.default = Behavior(tokens=10, error_event_after=3)
    response = raw(
        gateway, {"model": "claude-fake", "max_tokens": 10, "messages": HELLO, "stream": True}
    )
    assert sse_events(response.text)[-1][0] == "error"
    [row] = usage_rows(gateway, response.headers["request-id"])
    assert (row.status, row.partial, row.error) == (200, True, "upstream_overloaded")

    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=10, messages=HELLO)
    [row] = usage_rows(gateway, caught.value.response.headers["request-id"])
    assert (row.status, row.error) == (404, "model_not_found")


# ---- count_tokens ----------------------------------------------------------------------------


def test_count_tokens_is_an_estimate_of_four_characters_a_token(
    client: anthropic.Anthropic, upstream: FakeUpstream
) -> None:
    text = "x" * 400
    count = client.messages.count_tokens(
        model="claude-fake", messages=[{"role": "user", "content": text}]
    )
    assert count.input_tokens == 100
    with_system = client.messages.count_tokens(
        model="gpt-fake", system="y" * 40, messages=[{"role": "user", "content": text}]
    )
    assert with_system.input_tokens == 110
    with_tools = client.messages.count_tokens(
        model="gpt-fake", messages=[{"role": "user", "content": text}], tools=WEATHER
    )
    assert with_tools.input_tokens > 100
    assert upstream.ledger == []  # no provider is asked


def test_count_tokens_errors(gateway: RunningGateway, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="no-such-model", messages=HELLO)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="claude-fake", messages=[])
    response = raw(
        gateway,
        {"model": "claude-fake", "messages": HELLO},
        path="/v1/messages/count_tokens",
        headers={"x-api-key": "wrong"},
    )
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"
