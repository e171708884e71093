"""Rate limits end to end: chat requests through a real gateway on loopback, in front of the
fake upstream, with the official OpenAI client where it matters.

The gateway trusts 127.0.0.2 as a proxy, so a client bound to 127.0.0.2 speaks for the
addresses it puts in X-Forwarded-For, while one on 127.0.0.1 (untrusted) cannot.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve

HELLO = [{"role": "user", "content": "Say hello"}]  # an estimated 3 prompt tokens
PROXY = "127.0.0.2"


def config(upstream: FakeUpstream) -> dict[str, dict[str, Any]]:
    return {
        "models.gpt-fake": {
            "deployments": [
                {
                    "provider": "openai",
                    "model": "fake-model",
                    "base_url": upstream.openai_base_url,
                    "api_key_env": "FAKE_PROVIDER_KEY",
                }
            ]
        },
        "tiers.slow": {"models": ["gpt-fake"], "rpm": 3},
        "tiers.narrow": {"models": ["gpt-fake"], "max_concurrent": 1},
        "tiers.metered": {"models": ["gpt-fake"], "tpm": 1000},
        "tiers.open": {"models": ["gpt-fake"]},
        "limits": {"failed_auth_per_minute": 3, "trusted_proxies": [PROXY]},
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with serve(make_settings(tmp_path_factory.mktemp("limits"), config(upstream))) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.default = Behavior(text="hi")


def new_key(gateway: RunningGateway, tier: str) -> str:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    user = httpx.post(
        f"{gateway.url}/admin/users", json={"name": "member", "tier": tier}, headers=admin
    )
    assert user.status_code == 201, user.text
    key = httpx.post(f"{gateway.url}/admin/users/{user.json()['id']}/keys", json={}, headers=admin)
    assert key.status_code == 201, key.text
    secret: str = key.json()["key"]
    return secret


def chat(
    gateway: RunningGateway,
    key: str,
    *,
    via: str | None = None,
    forwarded_for: str | None = None,
    **extra: Any,
) -> httpx.Response:
    """One chat request, from ``via`` (a local address to send from) if given."""
    headers = {"authorization": f"Bearer {key}"}
    if forwarded_for is not None:
        headers["x-forwarded-for"] = forwarded_for
    transport = httpx.HTTPTransport(local_address=via) if via else None
    with httpx.Client(transport=transport, timeout=10) as client:
        return client.post(
            f"{gateway.openai_base_url}/chat/completions",
            json={"model": "gpt-fake", "messages": HELLO, "max_tokens": 100, **extra},
            headers=headers,
        )


def test_every_answer_reports_the_limits_left(gateway: RunningGateway) -> None:
    key = new_key(gateway, "slow")
    for remaining in ("2", "1", "0"):
        answer = chat(gateway, key)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-ratelimit-limit-requests"] == "3"
        assert answer.headers["x-ratelimit-remaining-requests"] == remaining
        assert answer.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in answer.headers  # no token limit here
    refused = chat(gateway, key)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "20"  # one request drains in 60 / 3 s
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.json()["error"]["code"] == "user_rate_limit_exceeded"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    # The official client reads it as a rate limit.
    client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
    with client, pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-fake", messages=HELLO)  # type: ignore[arg-type]
    assert raised.value.code == "user_rate_limit_exceeded"


def test_tokens_are_reserved_then_given_back(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    key = new_key(gateway, "metered")  # 1000 tokens a minute
    first = chat(gateway, key, max_tokens=900)  # 903 reserved; the answer uses 4
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 97
    # Only because the first reservation was settled to its real usage does this fit.
    second = chat(gateway, key, max_tokens=900)
    assert second.status_code == 200, second.text
    streamed = chat(gateway, key, max_tokens=900, stream=True)
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    assert chat(gateway, key, max_tokens=900).status_code == 200  # the stream settled too
    too_big = chat(gateway, key, max_tokens=1000)  # can never fit: no Retry-After
    assert too_big.status_code == 429
    assert "retry-after" not in too_big.headers
    assert "max_tokens" in too_big.json()["error"]["message"]
    assert len(upstream.ledger) == 4


def test_a_stream_holds_its_slot_until_the_client_leaves(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    key = new_key(gateway, "narrow")  # one request at a time
    upstream.default = Behavior(text="one two three", stall_after=1)
    body = {"model": "gpt-fake", "messages": HELLO, "stream": True}
    headers = {"authorization": f"Bearer {key}"}
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", f"{gateway.openai_base_url}/chat/completions", json=body, headers=headers
        ) as stream,
    ):
        assert stream.status_code == 200
        lines = stream.iter_lines()  # kept: a dropped iterator would close the response
        assert next(lines).startswith("data: ")  # the answer has started, and stalls
        refused = chat(gateway, key)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert refused.headers["retry-after"] == "1"
    # The client left mid-stream: the slot is free again (give the gateway a moment).
    upstream.default = Behavior(text="hi")
    for _ in range(50):
        answer = chat(gateway, key)
        if answer.status_code == 200:
            break
        time.sleep(0.02)
    assert answer.status_code == 200, answer.text


def test_failed_authentications_lock_out_only_the_failing_client(
    gateway: RunningGateway,
) -> None:
    key = new_key(gateway, "open")
    guesser, neighbour = "203.0.113.5", "203.0.113.6"
    for _ in range(3):
        wrong = chat(gateway, "il-wrong-key", via=PROXY, forwarded_for=guesser)
        assert wrong.status_code == 401
    locked = chat(gateway, "il-another-guess", via=PROXY, forwarded_for=guesser)
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "auth_attempts_exceeded"
    assert locked.headers["retry-after"] == "20"
    # Even a right key from the failing client waits: guessing must not go on meanwhile.
    assert chat(gateway, key, via=PROXY, forwarded_for=guesser).status_code == 429
    # Another client behind the same proxy, and the proxy's own traffic, are not affected.
    assert chat(gateway, key, via=PROXY, forwarded_for=neighbour).status_code == 200
    assert chat(gateway, key, via=PROXY).status_code == 200
    # The chain is read right to left: what the guesser writes itself is not believed.
    chain = f"{neighbour}, {guesser}"
    assert chat(gateway, key, via=PROXY, forwarded_for=chain).status_code == 429


def test_an_untrusted_peer_cannot_borrow_an_ip(gateway: RunningGateway) -> None:
    key = new_key(gateway, "open")
    # Three failures from 127.0.0.1 pretending to be someone else each time...
    for i in range(3):
        assert chat(gateway, "il-wrong", forwarded_for=f"198.51.100.{i}").status_code == 401
    # ...were all counted against 127.0.0.1 itself, whatever the header says.
    assert chat(gateway, key, forwarded_for="198.51.100.200").status_code == 429
    # ...and a locked-out address cannot be claimed by an untrusted peer to frame it either.
    assert chat(gateway, key, via=PROXY, forwarded_for="198.51.100.0").status_code == 200
