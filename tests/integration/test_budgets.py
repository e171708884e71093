"""Budgets end to end: chat requests through a real gateway on loopback, in front of the fake
upstream, held to the spend budgets of their key and user.

Prices are set so that one token costs 0.001 (1000 micro-units): a request of "Say hello"
(9 characters, estimated 3 tokens) with ``max_tokens=100`` reserves 0.103; the fake answers
"hi" with 3 prompt and 1 completion token, a real cost of 0.004.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve

HELLO = [{"role": "user", "content": "Say hello"}]


def config(upstream: FakeUpstream) -> dict[str, dict[str, Any]]:
    return {
        "models.gpt-fake": {
            "deployments": [
                {
                    "provider": "openai",
                    "model": "fake-model",
                    "base_url": upstream.openai_base_url,
                    "api_key_env": "FAKE_PROVIDER_KEY",
                    "name": "metered",
                    "input_price": 1000.0,
                    "output_price": 1000.0,
                }
            ]
        },
        "tiers.open": {"models": ["gpt-fake"]},
        "tiers.small": {"models": ["gpt-fake"], "daily_budget": 0.2},
        "tiers.pair": {"models": ["gpt-fake"], "monthly_budget": 0.25},
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    with serve(make_settings(tmp_path_factory.mktemp("budgets"), config(upstream))) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.default = Behavior(text="hi")


def new_key(gateway: RunningGateway, tier: str, **scope: Any) -> str:
    """A new member of ``tier`` with one key of ``scope``."""
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    user = httpx.post(
        f"{gateway.url}/admin/users", json={"name": "member", "tier": tier}, headers=admin
    )
    assert user.status_code == 201, user.text
    key = httpx.post(
        f"{gateway.url}/admin/users/{user.json()['id']}/keys", json=scope, headers=admin
    )
    assert key.status_code == 201, key.text
    secret: str = key.json()["key"]
    return secret


def chat(gateway: RunningGateway, key: str, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-fake", "messages": HELLO, "max_tokens": 100, **extra}
    return httpx.post(
        f"{gateway.openai_base_url}/chat/completions",
        json=body,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_requests_are_charged_their_real_cost_until_the_budget_is_spent(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    key = new_key(gateway, "small")  # 0.2 a day: 200 tokens at 0.001
    # Each answer really costs 4 tokens: after 24 of them 104 remain, enough for the 25th
    # request's reservation of 103; after it, 100 remain, which is not.
    for _ in range(25):
        assert chat(gateway, key).status_code == 200
    refused = chat(gateway, key)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert error["type"] == "rate_limit_error"
    assert "daily budget of this user" in error["message"]
    assert int(refused.headers["retry-after"]) > 0
    assert len(upstream.ledger) == 25  # the refused request never reached the upstream


def test_over_budget_is_refused_before_any_upstream_call(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    key = new_key(gateway, "open", daily_budget=0.05)  # less than one reservation
    refused = chat(gateway, key)
    assert refused.status_code == 429
    assert "daily budget of this API key" in refused.json()["error"]["message"]
    assert "max_tokens" in refused.json()["error"]["message"]
    # The official client reads it as a rate limit.
    client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
    with client, pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(
            model="gpt-fake", messages=[{"role": "user", "content": "Say hello"}], max_tokens=100
        )
    assert raised.value.code == "budget_exceeded"
    assert upstream.ledger == []
    # A smaller allowance fits.
    assert chat(gateway, key, max_tokens=10).status_code == 200


def test_the_refund_after_a_small_answer_lets_the_next_request_in(
    gateway: RunningGateway,
) -> None:
    key = new_key(gateway, "open", daily_budget=0.2)  # room for one reservation, not two
    assert chat(gateway, key).status_code == 200
    assert chat(gateway, key).status_code == 200  # only because the first was refunded
    streamed = chat(gateway, key, stream=True)
    assert streamed.status_code == 200 and "[DONE]" in streamed.text
    assert chat(gateway, key).status_code == 200  # the stream's end refunded too


def test_a_failed_call_costs_nothing(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    key = new_key(gateway, "open", daily_budget=0.2)
    upstream.default = Behavior(status=400)
    for _ in range(3):
        assert chat(gateway, key).status_code == 400
    upstream.default = Behavior(text="hi")
    assert chat(gateway, key).status_code == 200


def test_concurrent_requests_cannot_overspend(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    key = new_key(gateway, "pair")  # 0.25 a month: two reservations of 0.103 fit, not three
    upstream.default = Behavior(text="hi", first_byte_delay=0.5)  # all in flight together
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        statuses = sorted(pool.map(lambda _: chat(gateway, key).status_code, range(6)))
    assert statuses == [200, 200, 429, 429, 429, 429]
    assert len(upstream.ledger) == 2


def test_budgets_fail_closed_when_the_shared_state_is_down(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    # Nothing listens on port 9: every shared-state call fails.
    settings = make_settings(tmp_path, config(upstream), {"REDIS_URL": "redis://127.0.0.1:9/0"})
    with serve(settings) as down:
        key = new_key(down, "open", daily_budget=1)
        refused = chat(down, key)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "service_unavailable"
        assert "Budgets" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) > 0
        assert upstream.ledger == []
