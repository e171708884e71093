"""Tiers as scopes, and the rule that a key's scope can only narrow its owner's.

A user's scope is their tier's, except for budgets an administrator set on the user: those
replace the tier's (larger or smaller) for that user alone (``owner_scope``).

``Tiers`` is built once from the configuration. The authenticator asks it for a user's scope
when it builds a principal; the admin API and the CLI ask it to check a requested key scope
(``check_key_scope``) and a tier name (``check_tier``) before anything is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from decimal import Decimal

from interlock.auth.principal import Scope
from interlock.errors import InvalidRequest
from interlock.settings import (
    BUDGET_DECIMAL_PLACES,
    MAX_BUDGET,
    MAX_CONCURRENT,
    MAX_RPM,
    MAX_TPM,
    TierConfig,
)

_INT_BOUNDS = {"rpm": MAX_RPM, "tpm": MAX_TPM, "max_concurrent": MAX_CONCURRENT}
MAX_KEY_MODELS = 1000


def scope_of(tier: TierConfig) -> Scope:
    """The permissions a tier grants."""
    return Scope(
        models=tier.allowed_models,
        rpm=tier.rpm,
        tpm=tier.tpm,
        max_concurrent=tier.max_concurrent,
        daily_budget=tier.daily_budget,
        monthly_budget=tier.monthly_budget,
    )


class UnknownTier(InvalidRequest):
    code = "unknown_tier"


class Tiers:
    """The configured tiers, as scopes, and the public models that exist."""

    def __init__(
        self, tiers: Mapping[str, TierConfig], models: Iterable[str], default_tier: str
    ) -> None:
        self._scopes = {name: scope_of(tier) for name, tier in tiers.items()}
        self._models = frozenset(models)
        self.default = default_tier

    @property
    def names(self) -> list[str]:
        return list(self._scopes)

    def scope(self, tier: str) -> Scope | None:
        """The scope of ``tier``; None if no such tier is configured."""
        return self._scopes.get(tier)

    def owner_scope(
        self,
        tier: str,
        daily_budget: Decimal | None = None,
        monthly_budget: Decimal | None = None,
    ) -> Scope | None:
        """A user's scope: their tier's, with the user's own budgets where set; None if the
        tier is not configured."""
        scope = self._scopes.get(tier)
        if scope is None or (daily_budget is None and monthly_budget is None):
            return scope
        return replace(
            scope,
            daily_budget=scope.daily_budget if daily_budget is None else daily_budget,
            monthly_budget=scope.monthly_budget if monthly_budget is None else monthly_budget,
        )

    def check_tier(self, tier: str, *, param: str = "tier") -> str:
        """``tier`` if it is configured; else ``InvalidRequest`` (400) naming ``param``."""
        if tier not in self._scopes:
            shown = tier[:64] if tier.isprintable() else "?"
            raise UnknownTier(
                f"No tier {shown!r} is configured (known: {', '.join(self._scopes)}).",
                param=param,
            )
        return tier

    def check_key_scope(
        self,
        tier: str,
        requested: Scope,
        *,
        daily_budget: Decimal | None = None,
        monthly_budget: Decimal | None = None,
    ) -> Scope:
        """``requested`` if it is a valid key scope within its owner's; raises otherwise.

        The owner's scope is ``tier``'s with the owner's own ``daily_budget`` and
        ``monthly_budget`` where set. Every limit must be positive and below its absurdity
        bound, every budget a finite, non-negative amount; and nothing may be wider than the
        owner's (a key without a limit of some kind inherits the owner's). The
        ``InvalidRequest`` names the field.
        """
        owner = self.owner_scope(tier, daily_budget, monthly_budget)
        if owner is None:
            raise UnknownTier(
                f"The owner's tier {tier[:64]!r} is not configured: set the user's tier first.",
                param="tier",
            )
        if requested.models is not None:
            if len(requested.models) > MAX_KEY_MODELS:
                raise InvalidRequest(f"At most {MAX_KEY_MODELS} models.", param="models")
            for model in sorted(requested.models):
                if model not in self._models or not owner.allows(model):
                    shown = model[:200] if model.isprintable() else "?"
                    raise InvalidRequest(
                        f"The model {shown!r} is not one the owner's tier may use, so a key "
                        "cannot allow it.",
                        code="scope_too_wide",
                        param="models",
                    )
        for field, bound in _INT_BOUNDS.items():
            value: int | None = getattr(requested, field)
            if value is None:
                continue
            if not 1 <= value <= bound:
                raise InvalidRequest(f"Must be between 1 and {bound}.", param=field)
            ceiling: int | None = getattr(owner, field)
            if ceiling is not None and value > ceiling:
                raise InvalidRequest(
                    f"At most {ceiling}: a key cannot allow more than its owner's tier.",
                    code="scope_too_wide",
                    param=field,
                )
        for field in ("daily_budget", "monthly_budget"):
            amount: Decimal | None = getattr(requested, field)
            if amount is None:
                continue
            check_budget(amount, field)
            limit: Decimal | None = getattr(owner, field)
            if limit is not None and amount > limit:
                raise InvalidRequest(
                    f"At most {limit}: a key cannot allow more than its owner's budget.",
                    code="scope_too_wide",
                    param=field,
                )
        return requested


def check_budget(amount: Decimal, field: str) -> Decimal:
    """``amount`` if it is a plausible budget: finite, 0 to ``MAX_BUDGET``, at most six
    decimal places. Raises ``InvalidRequest`` naming ``field``."""
    if not amount.is_finite() or not 0 <= amount <= MAX_BUDGET:
        raise InvalidRequest(f"Must be an amount between 0 and {MAX_BUDGET}.", param=field)
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -BUDGET_DECIMAL_PLACES:
        raise InvalidRequest(f"At most {BUDGET_DECIMAL_PLACES} decimal places.", param=field)
    return amount
