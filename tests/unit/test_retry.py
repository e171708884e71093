"""The retry policy's decisions, its backoff, and the retry budget's window."""

from __future__ import annotations

import math
import random

import pytest

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
from interlock.routing.retry import RetryBudget, RetryPolicy
from interlock.settings import RetryConfig


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def policy(**config: float) -> RetryPolicy:
    return RetryPolicy(RetryConfig(**config), rng=random.Random(7))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "in_place"),
    [
        (UpstreamOverloaded(), True),
        (UpstreamConnectionFailed(), True),
        (UpstreamError(), True),
        (UpstreamOverloaded(retry_after=1), False),  # a cooldown, not a retry
        (UpstreamRateLimited(), False),
        (UpstreamTimeout(), False),
        (UpstreamAuthFailed(), False),
        (UpstreamProtocolError(), False),
        (UpstreamRejected(), False),
    ],
)
def test_which_failures_are_retried_in_place(error: UpstreamError, in_place: bool) -> None:
    assert RetryPolicy.retries_in_place(error) is in_place
    delay = policy(max_retries=2).retry_delay(error, 0, math.inf)
    assert (delay is not None) is in_place


def test_backoff_is_full_jitter_under_an_exponential_capped_ceiling() -> None:
    retry = policy(backoff_base=0.5, backoff_max=3.0)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (8, 3.0)]:
        waits = [retry.backoff(attempt) for _ in range(200)]
        assert all(0 <= wait <= ceiling for wait in waits)
        assert max(waits) > ceiling * 0.8  # spread over the whole range, not a fixed step
        assert min(waits) < ceiling * 0.2


def test_retries_are_bounded_per_deployment() -> None:
    retry = policy(max_retries=2, budget_min=100)
    error = UpstreamOverloaded()
    assert retry.retry_delay(error, 0, math.inf) is not None
    assert retry.retry_delay(error, 1, math.inf) is not None
    assert retry.retry_delay(error, 2, math.inf) is None
    assert policy(max_retries=0).retry_delay(error, 0, math.inf) is None


def test_no_retry_whose_wait_would_pass_the_deadline() -> None:
    retry = policy(max_retries=5, backoff_base=1.0, backoff_max=1.0, budget_min=100)
    assert retry.retry_delay(UpstreamOverloaded(), 0, 0.0) is None
    assert retry.retry_delay(UpstreamOverloaded(), 0, 2.0) is not None


def test_budget_allows_a_share_of_requests_with_a_floor() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, minimum=3, window=10.0, clock=clock)
    assert [budget.allow_retry() for _ in range(4)] == [True, True, True, False]  # the floor
    for _ in range(30):
        budget.note_request()
    # 30 requests: 6 retries in all may go, 3 already went.
    assert [budget.allow_retry() for _ in range(4)] == [True, True, True, False]


def test_budget_window_slides() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.5, minimum=0, window=10.0, clock=clock)
    for _ in range(4):
        budget.note_request()
    assert [budget.allow_retry() for _ in range(3)] == [True, True, False]
    clock.now += 5
    assert not budget.allow_retry()  # still inside the window
    clock.now += 5.5
    assert not budget.allow_retry()  # everything has left the window: no requests either
    for _ in range(2):
        budget.note_request()
    assert budget.allow_retry()
    assert not budget.allow_retry()
    clock.now += 1000  # a long pause empties every bucket
    budget.note_request()
    budget.note_request()
    assert budget.allow_retry()


def test_policy_spends_the_budget_only_on_retries_it_allows() -> None:
    retry = policy(max_retries=1, budget_ratio=0.0, budget_min=1)
    assert retry.retry_delay(UpstreamOverloaded(), 0, math.inf) is not None
    assert retry.retry_delay(UpstreamTimeout(), 0, math.inf) is None  # not a retry: no spend
    assert retry.retry_delay(UpstreamOverloaded(), 0, math.inf) is None  # budget spent
