"""Which models a principal may use, as the HTTP surface asks it.

A model outside the caller's scope answers exactly like a model that does not exist (404
``model_not_found``, same message), so a scope never reveals what else is configured. A user
whose tier is not configured gets a 403 saying so, rather than an empty world.
"""

from __future__ import annotations

from collections.abc import Iterable

from interlock.auth.principal import Principal
from interlock.errors import ModelNotFound, PermissionDenied


def model_not_found(model: str) -> ModelNotFound:
    """The error for a model that does not exist, or that the caller may not use."""
    return ModelNotFound(f"The model {model!r} does not exist.", param="model")


def check_tier(principal: Principal) -> None:
    """Refuse a principal whose tier is not configured (403), with a clear message."""
    if not principal.tier_known:
        raise PermissionDenied(
            f"Your account's tier {principal.tier!r} is not configured on this gateway: "
            "ask an administrator to set a valid tier.",
            code="unknown_tier",
        )


def allowed_models(principal: Principal) -> frozenset[str] | None:
    """The public models ``principal`` may use (None: every model); 403 for an unknown tier."""
    check_tier(principal)
    return principal.scope.models


def check_model(principal: Principal, model: str) -> None:
    """Raise unless ``principal`` may use ``model``: 404 exactly as for an unknown model."""
    check_tier(principal)
    if not principal.scope.allows(model):
        raise model_not_found(model)


def visible_models(principal: Principal, models: Iterable[str]) -> list[str]:
    """The subset of ``models`` that ``principal`` may use, in order."""
    allowed = allowed_models(principal)
    return [model for model in models if allowed is None or model in allowed]
