"""Spend budgets per key and per user: reserve the worst case before the call, settle after.

A principal carries up to four budgets: daily and monthly, for the key (``scope``, the tier
narrowed by the key) and for the user (``owner_scope``, the tier, every credential together).
Each is a GCRA bucket of the shared state counted in micro-units of the price table's
currency, so the windows are **rolling**, not calendar: a daily budget of 5 refills
continuously at 5 per 24 hours, and the monthly one at its amount per 30 days.

Before the upstream call ``reserve`` takes the request's maximum cost from every budget in
one atomic ``admit`` (all or nothing, across instances with Redis): the input estimated from
its text (about four characters a token) plus ``max_tokens`` (or a default) of output, at the
highest price among the model's deployments. Concurrent requests therefore cannot overspend
by more than one reservation. After the call ``settle`` gives back the difference to the real
cost of what was delivered (0 if nothing was).

Budgets fail closed by default: if the shared state cannot answer, the request is refused
with 503 (``[budgets] on_state_failure = "open"`` lets it through unbudgeted instead).
A principal without budgets costs nothing here: no state call at all.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

import structlog

from interlock.auth.principal import Principal, Scope
from interlock.chat.stream import estimate_tokens, request_length
from interlock.chat.types import ChatRequest
from interlock.errors import BudgetExceeded, ServiceUnavailable
from interlock.settings import ModelConfig
from interlock.state import Limit, RateLimits, StateUnavailable
from interlock.state.memory import MemoryRateLimits
from interlock.telemetry.prices import FREE, DeploymentPrices, Price

log = structlog.get_logger("interlock.limits.budgets")

DAY = 86_400.0
MONTH = 30 * DAY  # a rolling 30 days, not a calendar month
MICRO = Decimal(1_000_000)
# Output reserved for a request that does not set max_tokens: a typical long answer. The real
# cost is charged afterwards in any case (``adjust`` may take a bucket past its limit).
DEFAULT_OUTPUT_TOKENS = 4096
# How long to wait before retrying when the shared state cannot answer.
UNAVAILABLE_RETRY_AFTER = 5.0


def micro_units(amount: Decimal) -> int:
    """``amount`` in millionths of the currency, rounded up (a cost is never under-counted)."""
    return int((amount * MICRO).to_integral_value(rounding=ROUND_CEILING))


def _highest_price(model: ModelConfig, prices: DeploymentPrices) -> Price:
    """The most a token can cost among the model's deployments, kind by kind."""
    found = [prices.of(deployment.name).price for deployment in model.deployments]
    if not found:
        return FREE
    return Price(
        input=max(price.input for price in found),
        output=max(price.output for price in found),
        cached_input=max(price.cached_input for price in found),
    )


@dataclass(frozen=True, slots=True)
class Reservation:
    """What ``reserve`` took from each budget bucket: ``cost`` micro-units from every one."""

    buckets: tuple[Limit, ...]
    cost: int


_BUDGET_NAMES = {
    ("key", "day"): "daily budget of this API key",
    ("key", "month"): "monthly budget of this API key",
    ("user", "day"): "daily budget of this user",
    ("user", "month"): "monthly budget of this user",
}


def _buckets(principal: Principal, cost: int) -> list[Limit]:
    """The budget buckets that apply to ``principal``, each asked for ``cost``."""
    buckets: list[Limit] = []
    user = principal.owner_scope

    def add(kind: str, owner: str, scope: Scope, implied: Scope | None) -> None:
        for period, amount, window, user_amount in (
            ("day", scope.daily_budget, DAY, None if implied is None else implied.daily_budget),
            (
                "month",
                scope.monthly_budget,
                MONTH,
                None if implied is None else implied.monthly_budget,
            ),
        ):
            # A key's budget no smaller than its user's (the tier's, inherited) is implied by
            # the user's bucket, which counts this key's spending too: one bucket less.
            if amount is not None and (user_amount is None or amount < user_amount):
                # A bucket's limit must be positive: a budget of 0 becomes one micro-unit,
                # which admits nothing but (nearly) free requests.
                limit = max(micro_units(amount), 1)
                buckets.append(Limit(f"budget:{kind}:{owner}:{period}", limit, window, cost))

    if principal.key_id is not None:
        add("key", principal.key_id, principal.scope, user)
    add("user", principal.user_id, user, None)
    return buckets


def _changes(reservation: Reservation, cost: Decimal) -> list[Limit]:
    """What replaces the reservation by the real ``cost`` in every bucket (none if equal)."""
    change = micro_units(cost) - reservation.cost
    if change == 0:
        return []
    return [Limit(b.key, b.limit, b.window, change) for b in reservation.buckets]


def _describe(key: str) -> str:
    kind, _, rest = key.removeprefix("budget:").partition(":")
    period = rest.rpartition(":")[2]
    return _BUDGET_NAMES.get((kind, period), key)


class Budgets:
    """Reserves a request's maximum cost against its budgets and settles the real cost.

    Built once per app from the configured models and their prices; ``reserve`` and
    ``settle`` are per request.
    """

    def __init__(
        self,
        limits: RateLimits,
        models: Mapping[str, ModelConfig],
        prices: DeploymentPrices,
        *,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
        over_budget_status: int = 429,
        fail_open: bool = False,
    ) -> None:
        self._limits = limits
        self._over_budget_status = over_budget_status
        self._fail_open = fail_open
        self._default_output = default_output_tokens
        self._prices = {name: _highest_price(model, prices) for name, model in models.items()}
        self.currency = prices.currency
        # Settlements started from synchronous code (a stream's end), awaited by ``aclose``.
        self._pending: set[asyncio.Task[None]] = set()

    def max_cost(self, request: ChatRequest) -> int:
        """The most ``request`` can cost, in micro-units: its estimated input and its whole
        output allowance at the model's most expensive deployment."""
        price = self._prices.get(request.model, FREE)
        output = request.max_tokens if request.max_tokens is not None else self._default_output
        input_tokens = estimate_tokens(request_length(request))
        return micro_units(price.cost(input_tokens, output, 0))

    async def reserve(self, principal: Principal, request: ChatRequest) -> Reservation | None:
        """Take the request's maximum cost from every budget of ``principal`` at once.

        None when the principal has no budget. Raises ``BudgetExceeded`` (naming the budget,
        with ``retry_after`` unless waiting cannot help) when a budget cannot cover it, and
        ``ServiceUnavailable`` when the shared state cannot answer (budgets fail closed).
        """
        scope, owner = principal.scope, principal.owner_scope
        if (
            scope.daily_budget is None
            and scope.monthly_budget is None
            and owner.daily_budget is None
            and owner.monthly_budget is None
        ):
            return None
        cost = self.max_cost(request)
        buckets = _buckets(principal, cost)
        if not buckets:  # budgets only on a key scope, but no key (a session)
            return None
        try:
            decision = await self._limits.admit(buckets)
        except StateUnavailable as exc:
            log.warning("budget_state_unavailable", error=str(exc), fail_open=self._fail_open)
            if self._fail_open:
                return None  # configured: an unchecked request rather than a refused one
            raise ServiceUnavailable(
                "Budgets cannot be checked right now; try again shortly.",
                retry_after=UNAVAILABLE_RETRY_AFTER,
            ) from exc
        refused = decision.refused
        if refused is not None:
            name = _describe(refused.key)
            if math.isinf(refused.retry_after):
                raise BudgetExceeded(
                    f"This request could cost more than the whole {name}; "
                    "lower max_tokens or shorten the messages.",
                    status=self._over_budget_status,
                )
            raise BudgetExceeded(
                f"The {name} is spent; retry in {math.ceil(refused.retry_after)} seconds.",
                status=self._over_budget_status,
                retry_after=refused.retry_after,
            )
        return Reservation(tuple(buckets), cost)

    async def settle(self, reservation: Reservation, cost: Decimal) -> None:
        """Replace the reservation by the real ``cost`` in every bucket (refund or charge).

        Never raises: when the shared state cannot answer, the reservation stays charged
        (the caller pays at most the maximum cost, never less than the real one).
        """
        changes = _changes(reservation, cost)
        if not changes:
            return
        try:
            await self._limits.adjust(changes)
        except StateUnavailable as exc:
            log.warning("budget_not_settled", error=str(exc), change=changes[0].cost)

    def settle_soon(self, reservation: Reservation, cost: Decimal) -> None:
        """``settle`` from synchronous code (where a stream's end is reported): at once
        when there is nothing to change or the buckets are in process memory (which never
        awaits), else in a task."""
        changes = _changes(reservation, cost)
        if not changes:
            return
        if isinstance(self._limits, MemoryRateLimits):
            self._limits.adjust_now(changes)
            return
        task = asyncio.get_running_loop().create_task(self.settle(reservation, cost))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def aclose(self) -> None:
        """Wait for the settlements still running."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
