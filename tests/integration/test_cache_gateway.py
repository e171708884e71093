"""The response cache end to end: the official ``openai`` client against a real gateway on
loopback, in front of the fake upstream. A repeated deterministic request is answered from
the cache, in either shape (streamed or not), with the ``x-interlock-cache`` header, and
costs nothing in the usage ledger; callers can opt out per request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from interlock.store.models import UsageRow
from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve, usage_rows


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    dep = {
        "provider": "openai",
        "model": "fake-model",
        "base_url": upstream.openai_base_url,
        "api_key_env": "FAKE_PROVIDER_KEY",
        "name": "openai-fake-model",
        "input_price": 2,
        "output_price": 8,
    }
    config = {
        "usage": {"flush_interval_ms": 20},
        "models.gpt-fake": {"deployments": [dep]},
        "models.uncached": {"deployments": [{**dep, "name": "openai-uncached"}]},
        "cache": {"ttl": 600},
        "cache.models.uncached": {"enabled": False},
    }
    with serve(make_settings(tmp_path_factory.mktemp("cache-gateway"), config)) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.default = Behavior(text="Forty two is the answer to everything")


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.openai_base_url, api_key=ADMIN_KEY, max_retries=0) as c:
        yield c


def ask(prompt: str) -> list[Any]:
    return [{"role": "user", "content": prompt}]


def usage_row(gateway: RunningGateway, request_id: str) -> UsageRow:
    [row] = usage_rows(gateway, request_id)
    return row


def test_a_repeated_request_is_answered_from_the_cache_and_costs_nothing(
    client: openai.OpenAI, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="Forty two is the answer to life and everything. " * 5)
    messages = ask("What is the answer? (non-streaming, then streaming)")
    first = client.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=messages, temperature=0
    )
    assert first.headers["x-interlock-cache"] == "miss"
    fresh = first.parse()
    second = client.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=messages, temperature=0
    )
    assert second.headers["x-interlock-cache"] == "hit"
    assert second.headers["x-interlock-deployment"] == "openai-fake-model"
    assert second.headers["x-interlock-attempts"] == "0"
    cached = second.parse()
    assert cached.choices[0].message.content == fresh.choices[0].message.content
    assert cached.choices[0].finish_reason == "stop"
    assert cached.usage is not None and fresh.usage is not None
    assert cached.usage.completion_tokens == fresh.usage.completion_tokens

    # the stream flag is not part of the key: a streaming client gets a replayed stream
    with client.chat.completions.with_streaming_response.create(
        model="gpt-fake",
        messages=messages,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-interlock-cache"] == "hit"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fresh.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == fresh.usage.completion_tokens
    assert len(upstream.ledger) == 1

    miss_row = usage_row(gateway, first.headers["x-request-id"])
    hit_row = usage_row(gateway, second.headers["x-request-id"])
    assert (miss_row.cache_hit, hit_row.cache_hit) == (False, True)
    assert miss_row.cost > 0
    assert hit_row.cost == 0
    assert (hit_row.input_tokens, hit_row.output_tokens) == (
        miss_row.input_tokens,
        miss_row.output_tokens,
    )
    assert (hit_row.status, hit_row.attempts, hit_row.deployment) == (200, 0, "openai-fake-model")


def test_a_streamed_answer_is_stored_for_a_later_non_streaming_request(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    messages = ask("Stream first")
    stream = client.chat.completions.create(
        model="gpt-fake", messages=messages, seed=11, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    response = client.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=messages, seed=11
    )
    assert response.headers["x-interlock-cache"] == "hit"
    assert response.parse().choices[0].message.content == streamed
    assert len(upstream.ledger) == 1


def test_sampled_requests_and_disabled_models_bypass_the_cache(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    for _ in range(2):
        response = client.chat.completions.with_raw_response.create(
            model="gpt-fake", messages=ask("Be creative"), temperature=0.9
        )
        assert response.headers["x-interlock-cache"] == "bypass"
        response = client.chat.completions.with_raw_response.create(
            model="uncached", messages=ask("Be exact"), temperature=0
        )
        assert response.headers["x-interlock-cache"] == "bypass"
    assert len(upstream.ledger) == 4


def test_callers_opt_out_with_cache_control_or_the_body_field(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    messages = ask("Opt out")

    def create(**options: Any) -> str:
        response = client.chat.completions.with_raw_response.create(
            model="gpt-fake", messages=messages, temperature=0, **options
        )
        return response.headers["x-interlock-cache"]

    assert create(extra_headers={"Cache-Control": "no-store"}) == "bypass"
    assert create(extra_body={"interlock": {"cache": False}}) == "bypass"
    assert create() == "miss"  # no-store wrote nothing
    assert create() == "hit"
    upstream.default = Behavior(text="A fresher answer")
    assert create(extra_headers={"Cache-Control": "no-cache"}) == "miss"  # refreshed
    refreshed = client.chat.completions.create(model="gpt-fake", messages=messages, temperature=0)
    assert refreshed.choices[0].message.content == "A fresher answer"
    assert create(extra_body={"interlock": {"cache": "no-cache"}}) == "miss"
    assert len(upstream.ledger) == 5  # every request but the two hits


def test_a_bad_body_field_is_a_400_naming_it(gateway: RunningGateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-fake", "messages": ask("x"), "interlock": {"cache": "sometimes"}},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "interlock.cache")
    assert response.headers["x-interlock-cache"] == "bypass"


def test_a_failed_answer_is_not_stored(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    messages = ask("Fail mid-stream")
    upstream.default = Behavior(text="one two three four five six", cut_after=2)
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(
                model="gpt-fake", messages=messages, temperature=0, stream=True
            )
        )
    upstream.default = Behavior(text="one two three four five six")
    response = client.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=messages, temperature=0
    )
    assert response.headers["x-interlock-cache"] == "miss"


def test_identical_requests_at_the_same_time_make_one_upstream_call(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="A slow but single answer", first_byte_delay=1.5)
    body = {"model": "gpt-fake", "messages": ask("All at once"), "temperature": 0}

    async def one(client: httpx.AsyncClient, stream: bool) -> httpx.Response:
        return await client.post(
            f"{gateway.url}/v1/chat/completions",
            json={**body, "stream": stream},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(one(client, i % 2 == 0) for i in range(8)))

    responses = asyncio.run(all_at_once())
    assert [r.status_code for r in responses] == [200] * 8
    assert sorted(r.headers["x-interlock-cache"] for r in responses) == ["hit"] * 7 + ["miss"]
    assert len(upstream.ledger) == 1
    for response in responses[1::2]:  # the non-streaming ones
        assert response.json()["choices"][0]["message"]["content"] == "A slow but single answer"
    for response in responses[::2]:  # the streaming ones end properly
        assert response.text.endswith("data: [DONE]\n\n")


def new_member_key(gateway: RunningGateway) -> str:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    user = httpx.post(
        f"{gateway.url}/admin/users", json={"name": "other", "tier": "enterprise"}, headers=admin
    )
    assert user.status_code == 201, user.text
    key = httpx.post(f"{gateway.url}/admin/users/{user.json()['id']}/keys", json={}, headers=admin)
    assert key.status_code == 201, key.text
    secret: str = key.json()["key"]
    return secret


def test_the_same_prompt_from_another_tenant_misses(
    client: openai.OpenAI, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    messages = ask("Tell me the secret plan")
    first = client.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=messages, temperature=0
    )
    assert first.headers["x-interlock-cache"] == "miss"
    key = new_member_key(gateway)
    with openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0) as other:
        theirs = other.chat.completions.with_raw_response.create(
            model="gpt-fake", messages=messages, temperature=0
        )
        assert theirs.headers["x-interlock-cache"] == "miss"  # never another user's answer
        again = other.chat.completions.with_raw_response.create(
            model="gpt-fake", messages=messages, temperature=0
        )
        assert again.headers["x-interlock-cache"] == "hit"  # their own, from now on
    assert len(upstream.ledger) == 2


def test_an_answer_cached_through_one_protocol_is_replayed_in_another(
    client: openai.OpenAI, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    import anthropic

    messages = ask("Which protocol am I?")
    fresh = client.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=messages, temperature=0, max_tokens=200
    )
    assert fresh.headers["x-interlock-cache"] == "miss"
    text = fresh.parse().choices[0].message.content
    with anthropic.Anthropic(
        base_url=gateway.url,
        api_key=ADMIN_KEY,
        max_retries=0,
        default_headers={"anthropic-version": "2023-06-01"},
    ) as claude:
        # The current SDK has no temperature parameter: API version 2023-06-01 still takes it.
        deterministic = {"temperature": 0}
        raw = claude.messages.with_raw_response.create(
            model="gpt-fake", messages=messages, max_tokens=200, extra_body=deterministic
        )
        assert raw.headers["x-interlock-cache"] == "hit"
        message = raw.parse()
        assert message.content[0].type == "text" and message.content[0].text == text
        assert message.stop_reason == "end_turn"
        with claude.messages.stream(
            model="gpt-fake", messages=messages, max_tokens=200, extra_body=deterministic
        ) as stream:
            streamed = stream.get_final_message()
        assert streamed.content[0].type == "text" and streamed.content[0].text == text
    assert len(upstream.ledger) == 1
