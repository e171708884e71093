"""Rate limits across instances, end to end: two gateways sharing one Redis (and one
database), hammered concurrently over HTTP, admit no more than the limit between them."""

from __future__ import annotations

import concurrent.futures
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.fixtures.redis import redis_server_fixture, redis_url_fixture  # noqa: F401 - fixtures
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve

RPM = 30


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        fake.default = Behavior(text="ok")
        yield fake


def member_key(gateway: RunningGateway) -> str:
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    user = httpx.post(
        f"{gateway.url}/admin/users", json={"name": "busy", "tier": "metered"}, headers=admin
    )
    assert user.status_code == 201, user.text
    key = httpx.post(f"{gateway.url}/admin/users/{user.json()['id']}/keys", json={}, headers=admin)
    assert key.status_code == 201, key.text
    secret: str = key.json()["key"]
    return secret


def test_two_gateways_sharing_redis_admit_no_more_than_the_limit(
    upstream: FakeUpstream, redis_url: str, tmp_path: Path
) -> None:
    config = {
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
        "tiers.metered": {"models": ["gpt-fake"], "rpm": RPM},
    }
    env = {"REDIS_URL": redis_url}
    # The same data directory: one SQLite database for both, as one PostgreSQL would be.
    with (
        serve(make_settings(tmp_path, config, env)) as first,
        serve(make_settings(tmp_path, config, env)) as second,
    ):
        key = member_key(first)
        body = {"model": "gpt-fake", "messages": [{"role": "user", "content": "hi"}]}

        def call(index: int) -> int:
            gateway = first if index % 2 else second
            response = httpx.post(
                f"{gateway.openai_base_url}/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {key}"},
                timeout=30,
            )
            return response.status_code

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(call, range(4 * RPM)))
        elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 429}, statuses
    admitted = statuses.count(200)
    # GCRA: the whole limit at once, then one more every 60 / RPM seconds; one of tolerance.
    refilled = math.ceil(elapsed * RPM / 60)
    assert RPM <= admitted <= RPM + refilled + 1, (admitted, elapsed)
