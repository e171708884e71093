"""The x-ratelimit-* values: the tightest scope per unit, resets as OpenAI writes them."""

from __future__ import annotations

import pytest

from interlock.limits.quota import NO_QUOTAS, Quota, Quotas, duration, tightest
from interlock.state import ScopeStatus


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (float("inf"), "0s"),
        (1e-9, "1ms"),
        (0.02, "20ms"),
        (0.3, "300ms"),
        (0.9994, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (8.64, "8.64s"),
        (59.9991, "1m0s"),
        (360, "6m0s"),
        (90.25, "1m30.25s"),
        (3600, "1h0m0s"),
        (3723.004, "1h2m3.004s"),
    ],
)
def test_durations_are_written_like_openai(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def status(key: str, limit: int, remaining: int, reset: float) -> ScopeStatus:
    return ScopeStatus(key=key, limit=limit, remaining=remaining, reset=reset, retry_after=0)


def test_the_tightest_scope_has_the_fewest_remaining_then_the_longest_reset() -> None:
    found = tightest(
        [
            status("rl:user:u:requests", 100, 40, 36.0),
            status("rl:key:k:requests", 10, 3, 42.0),
            status("rl:tier:t:requests", 1000, 3, 0.5),
        ]
    )
    assert found == Quota(limit=10, remaining=3, reset=42.0)
    assert tightest([]) is None


def test_headers_for_each_unit_that_has_a_limit() -> None:
    quotas = Quotas(requests=Quota(60, 59, 1.0), tokens=Quota(150_000, 149_984, 0.0064))
    assert quotas.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-limit-tokens": "150000",
        "x-ratelimit-remaining-tokens": "149984",
        "x-ratelimit-reset-tokens": "7ms",
    }
    assert Quotas(tokens=Quota(10, 0, 6.0)).headers() == {
        "x-ratelimit-limit-tokens": "10",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6s",
    }
    assert NO_QUOTAS.headers() == {}


def test_merging_keeps_the_tighter_of_each_unit() -> None:
    ip = Quotas(requests=Quota(600, 5, 59.0))
    user = Quotas(requests=Quota(20, 19, 3.0), tokens=Quota(1000, 900, 6.0))
    assert ip.merged(user) == Quotas(requests=Quota(600, 5, 59.0), tokens=Quota(1000, 900, 6.0))
    assert NO_QUOTAS.merged(user) == user
    assert user.merged(NO_QUOTAS) == user
