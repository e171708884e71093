"""Prometheus metrics: the app's registry, and the few calls the request path makes.

``Metrics`` owns every metric and is built once per app (``build_metrics``). The request path
calls it at a handful of points, each a dictionary look-up and a few pre-bound
``inc``/``observe`` calls (label children are bound once per label tuple and kept; in one
process, those of ``request_done`` are plain numbers, see ``local_metrics``):

- ``request_done``: once per chat request, from ``ChatCall._account`` (the usage record
  carries most labels): the request count, its latency, time to first token and the
  gateway's own overhead, tokens and cost, the cache's answer and the error, if any;
- ``request_refused``: a chat request that ended before a caller was known (401, or a
  429 of the per-IP limits);
- ``rate_limited``: a rate-limit refusal, by its code (its scope);
- ``upstream_failed``: an attempt on a deployment that failed, by error class (the guard
  calls it, however the attempt was made);
- ``stream_opened`` / ``stream_closed``: streams in flight.

The circuits' states are read from the shared state when ``/metrics`` is scraped
(``refresh_circuits``), not tracked as they change.

Label values are bounded: models, deployments and tiers come from the configuration (a
model name from a request body that is not configured is ``unknown``), routes from a fixed
list, error codes from the error classes; never user or key ids.

Several processes: with ``PROMETHEUS_MULTIPROC_DIR`` set in the environment before start,
prometheus-client writes every process's values to files there, and a scrape of any of the
processes sums them (``multiprocess.MultiProcessCollector``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from interlock.errors import UpstreamError
from interlock.routing.breaker import CircuitBreakers, CircuitState
from interlock.settings import ConfigError, FileConfig, Settings
from interlock.telemetry.local_metrics import LocalCounterFamily, LocalHistogramFamily
from interlock.telemetry.usage_record import UsageRecord

__all__ = ["CONTENT_TYPE", "ROUTES", "Metrics", "build_metrics"]

# Every name here is a classic one, so the output is the 0.0.4 text format every
# Prometheus version reads.
CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
ROUTES: Final = frozenset({"openai", "anthropic", "aisdk"})
OTHER: Final = "other"  # a route or tier outside the known ones
UNKNOWN: Final = "unknown"  # a model name that is not configured
NONE: Final = "none"  # no deployment was reached

# Seconds. Whole requests: from a cache hit to a long generation.
LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
# Seconds. The gateway's own time: its target is well under a millisecond.
OVERHEAD_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
_Child = TypeVar("_Child", covariant=True)

CIRCUIT_VALUES: Final = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


def _upstream_codes() -> frozenset[str]:
    codes: set[str] = set()
    pending: list[type[UpstreamError]] = [UpstreamError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return frozenset(codes)


class _Incremented(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class _Observed(Protocol):
    def observe(self, amount: float) -> None: ...


class _Labelled(Protocol[_Child]):
    def labels(self, *values: str) -> _Child: ...


class _LocalFamilies:
    """The per-request metrics of a single process, registered in its own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def counter(
        self, name: str, documentation: str, labels: tuple[str, ...]
    ) -> _Labelled[_Incremented]:
        family = LocalCounterFamily(name, documentation, labels)
        self._registry.register(family)
        return family

    def histogram(
        self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> _Labelled[_Observed]:
        family = LocalHistogramFamily(name, documentation, labels, buckets)
        self._registry.register(family)
        return family


class _SharedFamilies:
    """The per-request metrics in multi-process mode: prometheus-client's, registered
    nowhere (a scrape reads every process's files)."""

    def counter(
        self, name: str, documentation: str, labels: tuple[str, ...]
    ) -> _Labelled[_Incremented]:
        return Counter(name, documentation, labels, registry=None)

    def histogram(
        self, name: str, documentation: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> _Labelled[_Observed]:
        return Histogram(name, documentation, labels, buckets=buckets, registry=None)


class _Bound:
    """One label tuple's children, bound once."""

    __slots__ = (
        "cache",
        "cost",
        "duration",
        "input_tokens",
        "output_tokens",
        "overhead",
        "requests",
        "ttft",
    )

    def __init__(
        self,
        metrics: Metrics,
        route: str,
        model: str,
        deployment: str,
        tier: str,
        status: int,
        cache: str | None,
    ) -> None:
        self.requests = metrics.requests.labels(route, model, deployment, str(status))
        self.duration = metrics.duration.labels(route, model)
        self.ttft = metrics.ttft.labels(route, model)
        self.overhead = metrics.overhead.labels(route)
        self.input_tokens = metrics.tokens.labels(model, tier, "input")
        self.output_tokens = metrics.tokens.labels(model, tier, "output")
        self.cost = metrics.cost.labels(model, tier)
        self.cache = None if cache is None else metrics.cache.labels(model, cache)


class _CircuitCollector:
    """Yields the circuit states read at the last ``refresh_circuits``."""

    def __init__(self) -> None:
        self.states: dict[str, int] = {}

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "interlock_circuit_state",
            "Circuit breaker state per deployment: 0 closed, 1 half-open, 2 open.",
            labels=["deployment"],
        )
        for deployment, value in sorted(self.states.items()):
            family.add_metric([deployment], value)
        yield family


class Metrics:
    """Every metric of one app; see the module docstring for who calls what."""

    def __init__(self, config: FileConfig, *, multiprocess_dir: Path | None = None) -> None:
        self._models = frozenset(config.models)
        self._tiers = frozenset(config.tiers)
        self.deployments = tuple(
            deployment.name for model in config.models.values() for deployment in model.deployments
        )
        self._known_deployments = frozenset(self.deployments)
        self._upstream_codes = _upstream_codes()
        self._multiprocess_dir = multiprocess_dir
        # In multi-process mode the values live in files, and a scrape reads all of them:
        # the metrics are registered nowhere, or this process's would be counted twice.
        own = None if multiprocess_dir is not None else CollectorRegistry(auto_describe=True)
        # The per-request metrics: plain numbers in one process (see ``local_metrics``),
        # prometheus-client's classes when the values must reach the shared files.
        per_request = _LocalFamilies(own) if own is not None else _SharedFamilies()
        self.requests = per_request.counter(
            "interlock_requests",
            "Chat requests, by inbound route, public model, deployment and HTTP status.",
            ("route", "model", "deployment", "status"),
        )
        self.duration = per_request.histogram(
            "interlock_request_duration_seconds",
            "Chat request time, from arrival to the end of the answer.",
            ("route", "model"),
            LATENCY_BUCKETS,
        )
        self.ttft = per_request.histogram(
            "interlock_time_to_first_token_seconds",
            "Streaming chat requests: time until the first content was sent.",
            ("route", "model"),
            LATENCY_BUCKETS,
        )
        self.overhead = per_request.histogram(
            "interlock_gateway_overhead_seconds",
            "Time the gateway itself added to a request answered upstream (total minus the "
            "time spent waiting on providers).",
            ("route",),
            OVERHEAD_BUCKETS,
        )
        self.tokens = per_request.counter(
            "interlock_tokens",
            "Tokens billed by providers, by public model, tier and type (input or output).",
            ("model", "tier", "type"),
        )
        self.cost = per_request.counter(
            "interlock_cost_usd",
            "What the requests cost, in the price table's currency (USD).",
            ("model", "tier"),
        )
        self.cache = per_request.counter(
            "interlock_cache_requests",
            "Chat requests that asked the response cache, by its answer (hit, miss, bypass).",
            ("model", "result"),
        )
        self.errors = Counter(
            "interlock_request_errors",
            "Chat requests that failed (also mid-stream, after a 200), by error code.",
            ("route", "code"),
            registry=own,
        )
        self.rate_limits = Counter(
            "interlock_rate_limit_rejections",
            "Requests refused by a rate limit, by its code (which scope refused).",
            ("code",),
            registry=own,
        )
        self.upstream_errors = Counter(
            "interlock_upstream_errors",
            "Failed attempts on a deployment, by error class.",
            ("deployment", "code"),
            registry=own,
        )
        self.streams = Gauge(
            "interlock_streams_in_flight",
            "Streaming answers being sent now.",
            ("route",),
            registry=own,
            multiprocess_mode="livesum",
        )
        self._circuits = _CircuitCollector()
        if multiprocess_dir is None:
            assert own is not None
            own.register(self._circuits)
            self._exposition = own
        else:
            self._exposition = CollectorRegistry(auto_describe=True)
            multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                self._exposition, path=str(multiprocess_dir)
            )
            self._exposition.register(self._circuits)
        self._bound: dict[tuple[str, str, str, str, int, str | None], _Bound] = {}
        self._streams = {route: self.streams.labels(route) for route in (*ROUTES, OTHER)}
        self._rate_limits: dict[str, Counter] = {}
        self._errors: dict[tuple[str, str], Counter] = {}
        self._upstream: dict[tuple[str, str], Counter] = {}

    # ---- labels ---------------------------------------------------------------------------

    @staticmethod
    def route(name: str) -> str:
        """The route label: one of ``ROUTES``, else ``other``."""
        return name if name in ROUTES else OTHER

    def _model(self, name: str) -> str:
        return name if name in self._models else UNKNOWN

    # ---- the request path -----------------------------------------------------------------

    def request_done(
        self,
        record: UsageRecord,
        route: str,
        *,
        cache: str | None = None,
        duration_s: float | None = None,
        overhead_s: float | None = None,
    ) -> None:
        """One chat request ended (``route`` as from ``Metrics.route``). ``cache``: the
        cache's answer, if it was asked; ``duration_s``: its duration, when measured more
        finely than the record's milliseconds; ``overhead_s``: the gateway's own time (part
        of ``duration_s``), for a request answered upstream."""
        model = record.model if record.model in self._models else UNKNOWN
        deployment = record.deployment if record.deployment in self._known_deployments else NONE
        tier = record.tier if record.tier in self._tiers else OTHER
        key = (route, model, deployment, tier, record.status, cache)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = _Bound(self, *key)
        bound.requests.inc()
        bound.duration.observe(record.latency_ms / 1000 if duration_s is None else duration_s)
        if record.ttft_ms is not None:
            bound.ttft.observe(record.ttft_ms / 1000)
        if overhead_s is not None:
            bound.overhead.observe(overhead_s)
        if bound.cache is not None:
            bound.cache.inc()
        if not record.cache_hit:  # a hit's tokens were billed when the answer was made
            if record.input_tokens:
                bound.input_tokens.inc(record.input_tokens)
            if record.output_tokens:
                bound.output_tokens.inc(record.output_tokens)
            if record.cost:
                bound.cost.inc(float(record.cost))
        if record.error is not None:
            self._error(route, record.error)

    def request_refused(self, route: str, status: int, error: str | None) -> None:
        """A chat request that ended before its caller was known (no usage record)."""
        key = (route, UNKNOWN, NONE, OTHER, status, None)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = _Bound(self, *key)
        bound.requests.inc()
        if error is not None:
            self._error(route, error)

    def _error(self, route: str, code: str) -> None:
        key = (route, code)
        child = self._errors.get(key)
        if child is None:
            child = self._errors[key] = self.errors.labels(route, code[:64])
        child.inc()

    def rate_limited(self, code: str) -> None:
        child = self._rate_limits.get(code)
        if child is None:
            child = self._rate_limits[code] = self.rate_limits.labels(code[:64])
        child.inc()

    def upstream_failed(self, deployment: str, error: UpstreamError) -> None:
        """An attempt on ``deployment`` failed; counted by the error's class (a provider's
        own error code never becomes a label)."""
        code = error.code if error.code in self._upstream_codes else type(error).code
        key = (deployment, code)
        child = self._upstream.get(key)
        if child is None:
            name = deployment if deployment in self._known_deployments else UNKNOWN
            child = self._upstream[key] = self.upstream_errors.labels(name, code)
        child.inc()

    def stream_opened(self, route: str) -> None:
        self._streams[route].inc()

    def stream_closed(self, route: str) -> None:
        self._streams[route].dec()

    # ---- scrapes --------------------------------------------------------------------------

    async def refresh_circuits(self, breakers: CircuitBreakers) -> None:
        """Read every configured deployment's circuit (from the cached shared state)."""
        states: dict[str, int] = {}
        for deployment in self.deployments:
            state, _ = await breakers.state_of(deployment)
            states[deployment] = CIRCUIT_VALUES[state]
        self._circuits.states = states

    def render(self) -> bytes:
        """The Prometheus text format of everything (every process's, in multi-process
        mode)."""
        return generate_latest(self._exposition)

    def close(self) -> None:
        """At shutdown: in multi-process mode, this process's live gauges stop counting."""
        if self._multiprocess_dir is not None:
            multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
                os.getpid(), str(self._multiprocess_dir)
            )


def in_multiprocess_mode() -> bool:
    """True when prometheus-client keeps values in files (it decides once, at import, from
    ``PROMETHEUS_MULTIPROC_DIR`` in the process environment)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def build_metrics(settings: Settings) -> Metrics | None:
    """The app's metrics, or None when ``[metrics] enabled = false``."""
    if not settings.config.metrics.enabled:
        return None
    directory = settings.metrics_multiproc_dir
    if directory is not None and not in_multiprocess_mode():
        raise ConfigError(
            ["PROMETHEUS_MULTIPROC_DIR: must be set in the environment before Interlock starts"]
        )
    return Metrics(settings.config, multiprocess_dir=directory)
