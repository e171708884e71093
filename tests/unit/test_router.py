"""Routing order: priorities, fallbacks, model access, capacity keys, and the balancer."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from interlock.providers.base import Timeouts
from interlock.routing.balancer import Balancer
from interlock.routing.capacity import Capacity
from interlock.routing.failsafe import FailSafeState
from interlock.routing.router import UNLIMITED, Router, slot_lease
from interlock.settings import DeploymentConfig, ModelConfig, TimeoutConfig
from interlock.state import MemoryState

pytestmark = pytest.mark.anyio


def deployment(name: str, priority: int = 1, weight: int = 1, **extra: object) -> DeploymentConfig:
    return DeploymentConfig(
        provider="local",
        name=name,
        priority=priority,
        weight=weight,
        **extra,  # type: ignore[arg-type]
    )


MODELS = {
    "chat": ModelConfig(
        deployments=[deployment("c-low", 2), deployment("c-high", 1)], fallbacks=["mini", "big"]
    ),
    "mini": ModelConfig(deployments=[deployment("m1")], fallbacks=["big", "chat"]),
    "big": ModelConfig(deployments=[deployment("b1")]),
    "pool": ModelConfig(
        deployments=[
            deployment("p1", 1, weight=3),
            deployment("p2", 1, weight=1, max_concurrent=4),
            deployment("p3", 2, rpm=60, tpm=1000),
        ]
    ),
}


def names(router: Router, model: str, allowed: frozenset[str] | None = None) -> list[str]:
    return [candidate.name for candidate in router.candidates(model, allowed)]


def test_priority_then_fallbacks_depth_first_each_model_once() -> None:
    router = Router(MODELS, Timeouts())
    assert names(router, "chat") == ["c-high", "c-low", "m1", "b1"]
    assert names(router, "mini") == ["m1", "b1", "c-high", "c-low"]
    assert [c.model for c in router.candidates("chat")] == ["chat", "chat", "mini", "big"]
    assert names(router, "nope") == []


def test_only_allowed_models_are_routed_to() -> None:
    router = Router(MODELS, Timeouts())
    assert names(router, "chat", frozenset({"chat", "big"})) == ["c-high", "c-low", "b1"]
    assert names(router, "chat", frozenset({"mini", "big"})) == []  # the model itself
    assert router.plan("chat", frozenset()) is None
    assert names(router, "chat", None) == ["c-high", "c-low", "m1", "b1"]


def test_plans_are_built_once_and_unknown_names_not_kept() -> None:
    router = Router(MODELS, Timeouts())
    allowed = frozenset({"chat"})
    assert router.plan("chat", allowed) is router.plan("chat", frozenset({"chat"}))
    for index in range(100):
        router.plan(f"made-up-{index}")
    assert len(router._plans) == 1


def test_shared_priorities_form_groups_tracked_for_load() -> None:
    router = Router(MODELS, Timeouts())
    plan = router.plan("pool")
    assert plan is not None
    assert [c.name for c in plan.candidates] == ["p1", "p2", "p3"]  # weight orders the ties
    assert plan.groups == ((0, 2),)
    assert plan.tracked == ("deployment:p1", "deployment:p2")
    p1, p2, p3 = plan.candidates
    assert (p1.slot_limit, p2.slot_limit, p3.slot_limit) == (UNLIMITED, 4, None)
    assert p3.rpm is not None and (p3.rpm.limit, p3.rpm.window) == (60, 60)
    assert p3.tpm == 1000 and p3.tpm_key == "deployment:p3:tpm"
    assert plan.counts_tokens
    chat = router.plan("chat")
    assert chat is not None and chat.groups == () and not chat.counts_tokens


def test_group_offsets_follow_fallbacks() -> None:
    models = {
        "a": ModelConfig(deployments=[deployment("a1")], fallbacks=["b"]),
        "b": ModelConfig(deployments=[deployment("b1"), deployment("b2")]),
    }
    plan = Router(models, Timeouts()).plan("a")
    assert plan is not None and plan.groups == ((1, 3),)


def test_deployment_timeouts_win_over_the_routes() -> None:
    models = {
        "m": ModelConfig(
            deployments=[deployment("d", timeouts=TimeoutConfig(first_token=3, total=30))]
        )
    }
    router = Router(models, Timeouts(connect=2, first_token=9, idle=8, total=100))
    [candidate] = router.candidates("m")
    assert candidate.timeouts == Timeouts(connect=2, first_token=3, idle=8, total=30)


def test_slot_lease_outlasts_any_gap_between_renewals() -> None:
    assert slot_lease(Timeouts(first_token=60, idle=30, total=600), 60) == pytest.approx(132)
    assert slot_lease(Timeouts(first_token=5, idle=5, total=600), 60) == 60
    assert slot_lease(Timeouts(first_token=60, idle=60, total=20), 60) == 21  # total bounds it
    assert slot_lease(Timeouts(first_token=None, idle=None, total=None), 45) == 45


class CountingCapacity(Capacity):
    def __init__(self, loads: dict[str, int]) -> None:
        super().__init__(FailSafeState(MemoryState()))
        self.fixed = loads
        self.asked: list[Sequence[str]] = []

    async def loads(self, slot_names: Sequence[str]) -> list[int]:
        self.asked.append(slot_names)
        return [self.fixed.get(name, 0) for name in slot_names]


async def test_balancer_puts_the_least_busy_first_within_a_priority() -> None:
    router = Router(MODELS, Timeouts())
    plan = router.plan("pool")
    assert plan is not None
    capacity = CountingCapacity({"deployment:p1": 5, "deployment:p2": 1})
    ordered = await Balancer(capacity, rng=random.Random(1)).arrange(plan)
    assert [c.name for c in ordered] == ["p2", "p1", "p3"]  # p3 stays behind: priority 2
    assert capacity.asked == [("deployment:p1", "deployment:p2")]  # one read for all


async def test_balancer_breaks_ties_by_weight() -> None:
    plan = Router(MODELS, Timeouts()).plan("pool")
    assert plan is not None
    balancer = Balancer(CountingCapacity({}), rng=random.Random(3))
    firsts = Counter([(await balancer.arrange(plan))[0].name for _ in range(4000)])
    assert firsts["p1"] / 4000 == pytest.approx(0.75, abs=0.03)  # weight 3 against 1


async def test_balancer_costs_nothing_without_groups() -> None:
    plan = Router(MODELS, Timeouts()).plan("chat")
    assert plan is not None
    capacity = CountingCapacity({})
    assert await Balancer(capacity).arrange(plan) is plan.candidates
    assert capacity.asked == []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_slot_held_past_its_lease_frees_itself_unless_renewed() -> None:
    clock = Clock()
    state = MemoryState(clock=clock)
    capacity = Capacity(FailSafeState(state))
    models = {
        "m": ModelConfig(deployments=[deployment("d", max_concurrent=1)]),
        "n": ModelConfig(deployments=[deployment("e", max_concurrent=1)]),
    }
    router = Router(models, Timeouts(first_token=10, idle=10, total=100), lease=30)
    [renewing], [forgetting] = router.candidates("m"), router.candidates("n")
    assert renewing.lease == 30
    renewed = await capacity.reserve(renewing, "r1", 0)
    assert not isinstance(renewed, float)
    assert not isinstance(await capacity.reserve(forgetting, "r2", 0), float)  # never released
    clock.now += 20
    await capacity.renew(renewing, renewed)  # a chunk arrived past half the lease
    clock.now += 20  # 40 s after both were taken: the forgotten one freed itself
    assert await state.slots.counts(["deployment:d", "deployment:e"]) == [1, 0]
    assert isinstance(await capacity.reserve(renewing, "r3", 0), float)  # still full
    await capacity.release(renewing, renewed, 0)
    assert await state.slots.counts(["deployment:d"]) == [0]
