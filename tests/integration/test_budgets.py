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


ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def new_user(gateway: RunningGateway, tier: str, **fields: Any) -> str:
    user = httpx.post(
        f"{gateway.url}/admin/users", json={"name": "member", "tier": tier, **fields}, headers=ADMIN
    )
    assert user.status_code == 201, user.text
    user_id: str = user.json()["id"]
    return user_id


def add_key(gateway: RunningGateway, user_id: str, **scope: Any) -> httpx.Response:
    return httpx.post(f"{gateway.url}/admin/users/{user_id}/keys", json=scope, headers=ADMIN)


def new_key(gateway: RunningGateway, tier: str, **scope: Any) -> str:
    """A new member of ``tier`` with one key of ``scope``."""
    key = add_key(gateway, new_user(gateway, tier), **scope)
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


def test_budgets_can_be_configured_to_fail_open(upstream: FakeUpstream, tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        {**config(upstream), "budgets": {"on_state_failure": "open"}},
        {"REDIS_URL": "redis://127.0.0.1:9/0"},
    )
    with serve(settings) as down:
        key = new_key(down, "open", daily_budget=1)
        assert chat(down, key).status_code == 200
        assert len(upstream.ledger) == 1


# ---- a user's own budget -----------------------------------------------------------------


def test_a_users_own_budget_replaces_the_tiers(gateway: RunningGateway) -> None:
    # The tier allows 0.2 a day; this user may spend far more, and their key may too.
    generous = new_user(gateway, "small", daily_budget=1000)
    wide_key = add_key(gateway, generous, daily_budget=500)
    assert wide_key.status_code == 201, wide_key.text  # wider than the tier, within the user
    too_wide = add_key(gateway, generous, daily_budget=2000)
    assert too_wide.status_code == 400
    assert (too_wide.json()["error"]["code"], too_wide.json()["error"]["param"]) == (
        "scope_too_wide",
        "daily_budget",
    )
    key = wide_key.json()["key"]
    for _ in range(30):  # the tier's 0.2 would refuse the 26th (see the first test)
        assert chat(gateway, key).status_code == 200

    # A user held tighter than their tier is refused by their own budget.
    tight = new_user(gateway, "open", daily_budget=0.05)
    tight_key = add_key(gateway, tight).json()["key"]
    refused = chat(gateway, tight_key)
    assert refused.status_code == 429
    assert "daily budget of this user" in refused.json()["error"]["message"]


def test_clearing_a_users_budget_gives_them_the_tiers_again(gateway: RunningGateway) -> None:
    user_id = new_user(gateway, "open", daily_budget=0.05)
    key = add_key(gateway, user_id).json()["key"]
    assert chat(gateway, key).status_code == 429
    shown = httpx.get(f"{gateway.url}/admin/users/{user_id}", headers=ADMIN).json()
    assert shown["daily_budget"] == 0.05 and shown["monthly_budget"] is None
    cleared = httpx.patch(
        f"{gateway.url}/admin/users/{user_id}", json={"daily_budget": None}, headers=ADMIN
    )
    assert cleared.status_code == 200 and cleared.json()["daily_budget"] is None
    assert chat(gateway, key).status_code == 200  # the "open" tier has no budget


@pytest.mark.parametrize(
    "amount", [-1, "NaN", 1e12, 0.0000001, "ten"], ids=["negative", "nan", "absurd", "dp", "text"]
)
def test_a_bad_user_budget_is_a_400_naming_it(gateway: RunningGateway, amount: Any) -> None:
    user_id = new_user(gateway, "open")
    for answer in (
        httpx.post(
            f"{gateway.url}/admin/users",
            json={"name": "x", "monthly_budget": amount},
            headers=ADMIN,
        ),
        httpx.patch(
            f"{gateway.url}/admin/users/{user_id}", json={"monthly_budget": amount}, headers=ADMIN
        ),
    ):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "monthly_budget"


def test_a_member_cannot_set_their_own_budget(gateway: RunningGateway) -> None:
    key = new_key(gateway, "small")
    me = httpx.patch(
        f"{gateway.url}/admin/users/whoever",
        json={"daily_budget": 1000},
        headers={"authorization": f"Bearer {key}"},
    )
    assert me.status_code == 403


# ---- 402 instead of 429 ------------------------------------------------------------------


def test_over_budget_can_answer_402_when_configured(upstream: FakeUpstream, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, {**config(upstream), "budgets": {"over_budget_status": 402}})
    with serve(settings) as paying:
        key = new_key(paying, "open", daily_budget=0.05)
        refused = chat(paying, key)
        assert refused.status_code == 402
        error = refused.json()["error"]
        assert (error["code"], error["type"]) == ("budget_exceeded", "insufficient_quota")
        assert "daily budget of this API key" in error["message"]
        client = openai.OpenAI(base_url=paying.openai_base_url, api_key=key, max_retries=0)
        with client, pytest.raises(openai.APIStatusError) as raised:
            client.chat.completions.create(model="gpt-fake", messages=HELLO, max_tokens=100)  # type: ignore[arg-type]
        assert raised.value.status_code == 402
        assert upstream.ledger == []
