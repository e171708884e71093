"""The OpenAI-compatible surface, driven by the official ``openai`` client against a real
gateway on loopback, in front of the fake upstream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from interlock.testing.fake_upstream import Behavior, FakeUpstream, ToolCallReply
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve

PROVIDER_KEY = "sk-fake-provider-key-123"


def deployment(base_url: str, model: str, provider: str = "openai", **extra: Any) -> dict[str, Any]:
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
        "models.gpt-fake": {"deployments": [deployment(upstream.openai_base_url, "fake-model")]},
        "models.claude-fake": {
            "deployments": [deployment(upstream.anthropic_base_url, "claude-fake", "anthropic")]
        },
        "models.failover": {
            "deployments": [
                deployment(upstream.openai_base_url, "primary", priority=1),
                deployment(upstream.openai_base_url, "secondary", priority=2),
            ]
        },
        "models.with-fallback": {
            "deployments": [deployment(upstream.openai_base_url, "broken")],
            "fallbacks": ["claude-fake"],
        },
        # Its own deployment: a Retry-After keeps a deployment out of traffic that long.
        "models.limited": {"deployments": [deployment(upstream.openai_base_url, "limited")]},
    }
    with serve(make_settings(tmp, config)) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.openai_base_url, api_key=ADMIN_KEY, max_retries=0) as c:
        yield c


def raw(
    gateway: RunningGateway,
    body: Any = None,
    *,
    content: bytes | None = None,
    key: str | None = ADMIN_KEY,
    path: str = "/v1/chat/completions",
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(f"{gateway.url}{path}", json=body, content=content, headers=headers)


HELLO = [{"role": "user", "content": "Say hello"}]


def test_non_streaming_answer_with_usage_and_served_headers(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="Hello there friend")
    response = client.chat.completions.with_raw_response.create(model="gpt-fake", messages=HELLO)
    completion = response.parse()
    assert completion.choices[0].message.content == "Hello there friend"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-fake"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert response.headers["x-interlock-model"] == "gpt-fake"
    assert response.headers["x-interlock-deployment"] == "openai-fake-model"
    assert response.headers["x-interlock-attempts"] == "1"
    assert float(response.headers["x-interlock-overhead-ms"]) >= 0
    assert response.headers["x-request-id"].startswith("req_")
    [served] = upstream.ledger
    assert served.body["model"] == "fake-model"
    assert served.headers["authorization"] == f"Bearer {PROVIDER_KEY}"


def test_streaming_chunks_share_id_and_carry_null_usage(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="one two three four")
    chunks = list(client.chat.completions.create(model="gpt-fake", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "one two three four"
    )
    assert len({chunk.id for chunk in chunks}) == 1
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks), "no usage chunk unless include_usage"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_include_usage_gives_exactly_one_final_usage_chunk(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(tokens=4)
    chunks = list(
        client.chat.completions.create(
            model="gpt-fake", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    usage_chunks = [chunk for chunk in chunks if chunk.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is chunks[-1]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_raw_stream_ends_with_done(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.default = Behavior(tokens=2)
    response = raw(gateway, {"model": "gpt-fake", "messages": HELLO, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"


def test_tool_calls_round_trip(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.default = Behavior(tool_call=ToolCallReply("get_weather", '{"city": "Paris"}'))
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    completion = client.chat.completions.create(model="gpt-fake", messages=HELLO, tools=tools)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert call.function.arguments == '{"city": "Paris"}'  # type: ignore[union-attr]
    sent = upstream.ledger[0].body
    assert sent["tools"][0]["function"]["name"] == "get_weather"

    stream = client.chat.completions.create(
        model="gpt-fake", messages=HELLO, tools=tools, stream=True
    )
    arguments = ""
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            arguments += delta.function.arguments or "" if delta.function else ""
    assert arguments == '{"city": "Paris"}'


def test_sampling_parameters_pass_through(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    client.chat.completions.create(
        model="gpt-fake",
        messages=[
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "Hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        ],
        temperature=0.3,
        top_p=0.9,
        max_tokens=50,
        stop=["END"],
        seed=7,
        user="user-1",
        response_format={"type": "json_object"},
    )
    sent = upstream.ledger[0].body
    assert sent["temperature"] == 0.3
    assert sent["top_p"] == 0.9
    assert sent["stop"] == ["END"]
    assert sent["seed"] == 7
    assert sent["user"] == "user-1"
    assert sent["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool"]
    assert sent["messages"][3]["tool_call_id"] == "call_1"


def test_anthropic_deployment_served_through_openai_surface(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="Bonjour le monde")
    completion = client.chat.completions.create(model="claude-fake", messages=HELLO)
    assert completion.choices[0].message.content == "Bonjour le monde"
    chunks = list(client.chat.completions.create(model="claude-fake", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Bonjour le monde"
    served = upstream.ledger[0]
    assert served.protocol == "anthropic"
    assert served.headers["x-api-key"] == PROVIDER_KEY


def test_failover_before_first_byte_is_invisible(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("primary", Behavior(status=500))
    upstream.set_model_behavior("secondary", Behavior(text="from secondary"))
    response = client.chat.completions.with_raw_response.create(
        model="failover", messages=HELLO, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == "from secondary"
    assert response.headers["x-interlock-attempts"] == "3"  # a 500 is retried once
    assert response.headers["x-interlock-deployment"] == "openai-secondary"
    assert [s.model for s in upstream.ledger] == ["primary", "primary", "secondary"]


def test_error_event_inside_200_stream_before_content_fails_over(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("primary", Behavior(error_event_after=0))
    upstream.set_model_behavior("secondary", Behavior(text="recovered"))
    chunks = list(client.chat.completions.create(model="failover", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "recovered"


def test_fallback_model_serves_when_the_model_fails(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("broken", Behavior(status=503))
    upstream.set_model_behavior("claude-fake", Behavior(text="fallback answer"))
    response = client.chat.completions.with_raw_response.create(
        model="with-fallback", messages=HELLO
    )
    assert response.parse().choices[0].message.content == "fallback answer"
    assert response.headers["x-interlock-model"] == "claude-fake"


def test_mid_stream_failure_ends_with_error_event_not_a_fake_finish(
    gateway: RunningGateway, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(tokens=10, cut_after=3)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="gpt-fake", messages=HELLO, stream=True):
            pass
    response = raw(gateway, {"model": "gpt-fake", "messages": HELLO, "stream": True})
    assert response.status_code == 200
    events = [event for event in response.text.split("\n\n") if event]
    assert events[-1].startswith('data: {"error":')
    assert '"finish_reason":"stop"' not in response.text
    assert "[DONE]" not in response.text


@pytest.mark.parametrize(
    ("behavior", "status", "code"),
    [
        (
            Behavior(status=401, error_message="Incorrect API key provided: sk-fake-pro****123"),
            502,
            "upstream_auth_failed",
        ),
        (Behavior(status=400, error_message="bad thing"), 400, "upstream_rejected"),
        (Behavior(status=503), 503, "upstream_overloaded"),
        (Behavior(status=429, retry_after=7), 429, "upstream_rate_limited"),
    ],
)
def test_upstream_errors_are_classified_and_scrubbed(
    gateway: RunningGateway, upstream: FakeUpstream, behavior: Behavior, status: int, code: str
) -> None:
    upstream.default = behavior
    model = "limited" if status == 429 else "gpt-fake"
    response = raw(gateway, {"model": model, "messages": HELLO})
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert PROVIDER_KEY not in response.text
    assert "sk-fake-pro" not in response.text
    if status == 429:
        assert response.headers["retry-after"] == "7"


def test_client_bad_request_is_not_retried_or_failed_over(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("primary", Behavior(status=400))
    response = raw(gateway, {"model": "failover", "messages": HELLO})
    assert response.status_code == 400
    assert len(upstream.ledger) == 1


def test_every_deployment_failing_gives_the_last_error(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(status=502)
    response = raw(gateway, {"model": "failover", "messages": HELLO, "stream": True})
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
    assert len(upstream.ledger) == 4  # each deployment: the call and one retry


# ---- bad input ------------------------------------------------------------------------------


def test_missing_and_wrong_keys_are_401(client: openai.OpenAI, gateway: RunningGateway) -> None:
    bad = openai.OpenAI(base_url=gateway.openai_base_url, api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="gpt-fake", messages=HELLO)
    response = raw(gateway, {"model": "gpt-fake", "messages": HELLO}, key=None)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    for hostile in ['il_live_"quoted', "a\\b" * 50, "x" * 10_000]:
        response = raw(gateway, {"model": "gpt-fake", "messages": HELLO}, key=hostile)
        assert response.status_code == 401


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-fake", "messages": []}, "messages"),
        (
            {"model": "gpt-fake", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
        ),
        ({"model": "gpt-fake", "messages": "hello"}, "messages"),
        ({"model": 12, "messages": HELLO}, "model"),
        ({"messages": HELLO}, None),
        ({"model": "gpt-fake", "messages": HELLO, "max_tokens": 10**9}, "max_tokens"),
        ({"model": "gpt-fake", "messages": HELLO, "max_tokens": -1}, "max_tokens"),
        ({"model": "gpt-fake", "messages": HELLO, "temperature": 9}, "temperature"),
        ({"model": "gpt-fake", "messages": HELLO, "n": 3}, "n"),
        (
            {"model": "gpt-fake", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
    ],
)
def test_malformed_bodies_are_400_in_openai_shape(
    gateway: RunningGateway, upstream: FakeUpstream, body: Any, param: str | None
) -> None:
    response = raw(gateway, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert "Traceback" not in response.text
    assert upstream.ledger == []


def test_invalid_json_is_400(gateway: RunningGateway) -> None:
    for content in (b"{not json", b"", b"[1, 2]", b"\xff\xfe"):
        response = raw(gateway, content=content)
        assert response.status_code == 400
        assert "error" in response.json()


def test_oversized_body_is_413(client: openai.OpenAI, gateway: RunningGateway) -> None:
    huge = [{"role": "user", "content": "x" * 100_000}]
    response = raw(gateway, {"model": "gpt-fake", "messages": huge})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:
        yield b'{"model": "gpt-fake", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}]}'

    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        content=chunked(),
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert response.status_code == 413


def test_unknown_routes_are_openai_shaped(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.url}/v1/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = httpx.get(f"{gateway.url}/v1/chat/completions")
    assert response.status_code == 405


def test_models_lists_public_names(client: openai.OpenAI, gateway: RunningGateway) -> None:
    names = {model.id for model in client.models.list()}
    assert names == {"gpt-fake", "claude-fake", "failover", "with-fallback", "limited"}
    assert httpx.get(f"{gateway.url}/v1/models").status_code == 401


def test_health(gateway: RunningGateway) -> None:
    assert httpx.get(f"{gateway.url}/health/live").json() == {"status": "ok"}
    ready = httpx.get(f"{gateway.url}/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"]["status"] == "ok"


# ---- cancellation ---------------------------------------------------------------------------


def test_client_disconnect_mid_stream_closes_the_upstream_call(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(tokens=1000, token_delay=0.01)
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-fake", "messages": HELLO, "stream": True},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    ) as response:
        for _ in response.iter_lines():
            break
    served = upstream.wait_for(lambda served: served.client_disconnected, 2.0)
    assert not served.completed
    assert served.chunks_sent < 1000


def test_client_disconnect_cancels_a_non_streaming_call(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(never_answer=True)
    with httpx.Client(timeout=0.5) as raw_client, pytest.raises(httpx.ReadTimeout):
        raw_client.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "gpt-fake", "messages": HELLO},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
    upstream.wait_for(lambda served: served.client_disconnected, 2.0)


def test_settings_files_are_kept_in_tmp(gateway: RunningGateway) -> None:
    assert Path(gateway.settings.data_dir).is_dir()


def test_a_client_leaving_while_sending_its_body_is_not_an_error(
    gateway: RunningGateway, upstream: FakeUpstream, capfd: pytest.CaptureFixture[str]
) -> None:
    import socket

    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"model": "gpt-fake", "mess'
        )
    # The next request is served normally, and nothing was reported as a crash.
    assert raw(gateway, {"model": "gpt-fake", "messages": HELLO}).status_code == 200
    captured = capfd.readouterr()
    assert "unhandled_error" not in captured.out + captured.err
    assert "Traceback" not in captured.out + captured.err
    assert upstream.ledger[-1].body["messages"][0]["content"] == "Say hello"


def test_a_bug_in_the_chat_route_is_a_clean_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from interlock.chat.pipeline import ChatPipeline

    def broken(self: ChatPipeline, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug with a secret sk-canary-0123456789abcdef in it")

    config = {
        "models.m": {
            "deployments": [
                {
                    "provider": "openai",
                    "model": "x",
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key_env": "FAKE_PROVIDER_KEY",
                }
            ]
        }
    }
    with serve(make_settings(tmp_path, config)) as gateway:
        monkeypatch.setattr(ChatPipeline, "begin", broken)
        response = httpx.post(
            f"{gateway.openai_base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("internal_error", "server_error")
    assert "canary" not in response.text and "Traceback" not in response.text
