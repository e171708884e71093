"""Ordering deployments that share a priority: least busy first, weights breaking ties.

Within each group of a plan (deployments of one model with one priority), the request goes
to the deployment with the fewest requests in flight across every instance (its slot pool,
read for all groups in one round trip). Among equally busy ones, the order is a weighted
random draw: a deployment with weight 3 comes first three times as often as one with
weight 1 (Efraimidis-Spirakis: sort by ``random() ** (1 / weight)``, largest first). A plan
without groups costs nothing: no round trip, no copy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from interlock.routing.capacity import Capacity
from interlock.routing.router import Candidate, Plan


class Balancer:
    def __init__(self, capacity: Capacity, *, rng: random.Random | None = None) -> None:
        self._capacity = capacity
        self._rng = rng or random.Random()

    async def arrange(self, plan: Plan) -> Sequence[Candidate]:
        """The plan's candidates in the order to try them now."""
        if not plan.groups:
            return plan.candidates
        loads = await self._capacity.loads(plan.tracked)
        load_of = dict(zip(plan.tracked, loads, strict=True))
        draw = self._rng.random
        ordered = list(plan.candidates)
        for start, end in plan.groups:
            ordered[start:end] = sorted(
                ordered[start:end],
                key=lambda c: (load_of[c.slot_name], -(draw() ** (1.0 / c.deployment.weight))),
            )
        return ordered
