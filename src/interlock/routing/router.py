"""Which deployments may serve a public model, in the order to try them.

A public model has deployments, tried by priority (lower first), and an optional list of
fallback models whose deployments follow, depth first, each model once. A caller may be
limited to some public models (its tier's): the model asked for must be one of them, and
fallback models outside them are left out.

Everything that does not change per request is computed once: the candidates of each
model, their capacity keys and leases, and which of them share a priority (those are
ordered per request by the balancer, least busy first, weights breaking ties). A plan for a
(model, allowed models) pair is built on first use and kept, so the hot path is one
dictionary look-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from interlock.providers.base import Timeouts
from interlock.settings import DeploymentConfig, ModelConfig
from interlock.state import Limit

# The slot limit of a deployment that is only tracked for its load: never refuses.
UNLIMITED = 1 << 30
DEFAULT_SLOT_LEASE = 60.0
DEFAULT_OUTPUT_TOKENS = 1024
_MAX_PLANS = 4096  # distinct (model, allowed) pairs kept; callers' scopes are few in practice
REQUEST_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One deployment that may serve the request, with what applies to it."""

    model: str  # the public model this deployment belongs to (may be a fallback model)
    deployment: DeploymentConfig
    timeouts: Timeouts
    slot_limit: int | None = None  # concurrency pool size; None: no slot is taken
    lease: float = DEFAULT_SLOT_LEASE  # a slot's lease, renewed while a stream flows
    rpm: Limit | None = None  # one request against the requests-per-minute bucket
    tpm: int | None = None
    name: str = field(init=False)
    slot_name: str = field(init=False)
    tpm_key: str = field(init=False)

    def __post_init__(self) -> None:
        name = self.deployment.name
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "slot_name", "deployment:" + name)
        object.__setattr__(self, "tpm_key", f"deployment:{name}:tpm")


@dataclass(frozen=True, slots=True)
class Plan:
    """The candidates for one (model, allowed models) pair, in static order.

    ``groups`` are ``(start, end)`` index ranges of candidates that share a model and a
    priority: the balancer orders each by load. ``tracked`` are their slot pool names,
    whose loads are read in one round trip.
    """

    candidates: tuple[Candidate, ...]
    groups: tuple[tuple[int, int], ...]
    tracked: tuple[str, ...]
    counts_tokens: bool  # some candidate has a tpm limit: estimate the request's tokens


def slot_lease(timeouts: Timeouts, configured: float) -> float:
    """A slot lease long enough that a live request always renews it in time.

    The slot is renewed when a chunk arrives past half the lease, and chunks are never
    further apart than the first-token or idle timeout, so the lease is a little more than
    twice those (the 10 % covers the renewal's own round trip); ``configured`` is the
    least. A request cannot outlive its total timeout, so the lease need not be longer.
    """
    gaps = [t for t in (timeouts.first_token, timeouts.idle) if t is not None]
    lease = max(configured, 2.2 * max(gaps)) if gaps else configured
    if timeouts.total is not None:
        lease = min(lease, timeouts.total + 1)
    return lease


class Router:
    def __init__(
        self,
        models: Mapping[str, ModelConfig],
        route_timeouts: Timeouts,
        *,
        lease: float = DEFAULT_SLOT_LEASE,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
    ) -> None:
        """``route_timeouts``: the chat route's, under every deployment's own. ``lease``:
        the shortest lease of a concurrency slot. ``default_output_tokens``: the output
        tokens reserved against a ``tpm`` limit when a request sets no ``max_tokens``."""
        self.route_timeouts = route_timeouts
        self.default_output_tokens = default_output_tokens
        self._models = models
        self._own = {
            name: self._own_candidates(name, model, route_timeouts, lease)
            for name, model in models.items()
        }
        self._plans: dict[tuple[str, frozenset[str] | None], Plan | None] = {}

    @staticmethod
    def _own_candidates(
        name: str, model: ModelConfig, route_timeouts: Timeouts, lease: float
    ) -> tuple[tuple[Candidate, ...], tuple[tuple[int, int], ...]]:
        """A model's own deployments by priority (weight breaking ties in the static order),
        and the index ranges of those sharing a priority."""
        deployments = sorted(model.deployments, key=lambda d: (d.priority, -d.weight))
        priorities = [d.priority for d in deployments]
        groups: list[tuple[int, int]] = []
        start = 0
        for index in range(1, len(deployments) + 1):
            if index == len(deployments) or priorities[index] != priorities[start]:
                if index - start > 1:
                    groups.append((start, index))
                start = index
        grouped = {i for start, end in groups for i in range(start, end)}
        candidates = []
        for index, deployment in enumerate(deployments):
            timeouts = deployment.timeouts.over(route_timeouts)
            slot_limit = deployment.max_concurrent
            if slot_limit is None and index in grouped:
                slot_limit = UNLIMITED
            rpm = deployment.rpm
            candidates.append(
                Candidate(
                    name,
                    deployment,
                    timeouts,
                    slot_limit=slot_limit,
                    lease=slot_lease(timeouts, lease),
                    rpm=None
                    if rpm is None
                    else Limit(f"deployment:{deployment.name}:rpm", rpm, REQUEST_WINDOW),
                    tpm=deployment.tpm,
                )
            )
        return tuple(candidates), tuple(groups)

    def _build_plan(self, model: str, allowed: frozenset[str] | None) -> Plan | None:
        if model not in self._own or (allowed is not None and model not in allowed):
            return None
        seen: set[str] = set()
        candidates: list[Candidate] = []
        groups: list[tuple[int, int]] = []
        pending = [model]
        while pending:
            current = pending.pop(0)
            if current in seen or (allowed is not None and current not in allowed):
                continue
            seen.add(current)
            own, own_groups = self._own[current]
            offset = len(candidates)
            candidates.extend(own)
            groups.extend((start + offset, end + offset) for start, end in own_groups)
            pending = [*self._models[current].fallbacks, *pending]
        tracked = tuple(candidates[i].slot_name for start, end in groups for i in range(start, end))
        return Plan(
            candidates=tuple(candidates),
            groups=tuple(groups),
            tracked=tracked,
            counts_tokens=any(c.tpm is not None for c in candidates),
        )

    def plan(self, model: str, allowed: frozenset[str] | None = None) -> Plan | None:
        """The plan for ``model`` as a caller limited to ``allowed`` sees it (None: every
        model); None if the model does not exist or is not allowed."""
        key = (model, allowed)
        try:
            return self._plans[key]
        except KeyError:
            pass
        plan = self._build_plan(model, allowed)
        if model in self._own:  # never keep plans for made-up model names
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    @property
    def public_models(self) -> list[str]:
        return list(self._own)

    def has_model(self, name: str) -> bool:
        return name in self._own

    def candidates(
        self, model: str, allowed: frozenset[str] | None = None
    ) -> tuple[Candidate, ...]:
        """Deployments to try for ``model``, in static order; empty for an unknown or
        disallowed model."""
        plan = self.plan(model, allowed)
        return () if plan is None else plan.candidates
