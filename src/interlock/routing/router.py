"""Which deployments may serve a public model, in the order to try them.

A public model has deployments (tried by priority, then weight) and an optional list of
fallback models whose deployments follow. The candidate lists are computed once from the
configuration: the hot path is one dictionary look-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from interlock.providers.base import Timeouts
from interlock.settings import DeploymentConfig, ModelConfig


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment that may serve the request, with the timeouts that apply to it."""

    model: str  # the public model this deployment belongs to (may be a fallback model)
    deployment: DeploymentConfig
    timeouts: Timeouts


class Router:
    def __init__(self, models: Mapping[str, ModelConfig], route_timeouts: Timeouts) -> None:
        self._candidates = {
            name: tuple(self._expand(name, models, route_timeouts)) for name in models
        }

    @staticmethod
    def _expand(
        name: str, models: Mapping[str, ModelConfig], route_timeouts: Timeouts
    ) -> list[Candidate]:
        """The model's own deployments, then each fallback's, depth first, each model once."""
        seen: set[str] = set()
        ordered: list[Candidate] = []
        pending = [name]
        while pending:
            current = pending.pop(0)
            if current in seen:
                continue
            seen.add(current)
            model = models[current]
            deployments = sorted(model.deployments, key=lambda d: (d.priority, -d.weight))
            ordered.extend(
                Candidate(current, d, d.timeouts.over(route_timeouts)) for d in deployments
            )
            pending = [*model.fallbacks, *pending]
        return ordered

    @property
    def public_models(self) -> list[str]:
        return list(self._candidates)

    def has_model(self, name: str) -> bool:
        return name in self._candidates

    def candidates(self, model: str) -> tuple[Candidate, ...]:
        """Deployments to try for ``model``, best first; empty for an unknown model."""
        return self._candidates.get(model, ())
