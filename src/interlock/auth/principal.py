"""Who is calling, and what they may do: the result of authentication, carried through the
pipeline.

A ``Scope`` is a set of permissions: the public models allowed, rate limits and budgets
(``None`` everywhere means "no limit of this kind"). A principal carries two, computed once
when it is built (and cached with it by the authenticator):

- ``owner_scope``: the user's, from their tier; it bounds everything the user does, with every
  key and session together (the per-user limits and budget);
- ``scope``: this credential's, the owner's narrowed by the key's own scope (the per-key limits
  and budget). For a session it is the owner's.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

Role = Literal["admin", "member"]
Via = Literal["key", "session", "development"]


def _tighter(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _tighter_budget(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


@dataclass(frozen=True, slots=True)
class Scope:
    """Permissions: models allowed (None: every model), limits and budgets (None: no limit)."""

    models: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    daily_budget: Decimal | None = None
    monthly_budget: Decimal | None = None

    def allows(self, model: str) -> bool:
        """Whether the public model ``model`` may be used."""
        return self.models is None or model in self.models

    def narrowed_by(self, other: Scope) -> Scope:
        """What both allow: the intersection of the models, the smaller of each limit."""
        if self.models is None:
            models = other.models
        elif other.models is None:
            models = self.models
        else:
            models = self.models & other.models
        return Scope(
            models=models,
            rpm=_tighter(self.rpm, other.rpm),
            tpm=_tighter(self.tpm, other.tpm),
            max_concurrent=_tighter(self.max_concurrent, other.max_concurrent),
            daily_budget=_tighter_budget(self.daily_budget, other.daily_budget),
            monthly_budget=_tighter_budget(self.monthly_budget, other.monthly_budget),
        )


UNLIMITED = Scope()
NO_ACCESS = Scope(models=frozenset())


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. Immutable and shared between requests: never modify it."""

    user_id: str
    user_name: str
    role: Role
    tier: str
    key_id: str | None  # None when authenticated another way (development flag, session)
    scope: Scope = UNLIMITED  # what this credential may do
    owner_scope: Scope = UNLIMITED  # what the user may do, all credentials together
    tier_known: bool = True  # False: the user's tier is not configured, so no model access
    via: Via = "key"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def allowed_models(self) -> frozenset[str] | None:
        """The public models this credential may use; None for every model."""
        return self.scope.models
