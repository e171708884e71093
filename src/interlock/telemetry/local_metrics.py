"""Counters and histograms for the request path of a single process: plain numbers.

prometheus-client's ``Counter`` and ``Histogram`` take a lock, check their labels and walk
their buckets in Python on every ``inc`` and ``observe``: about 600 bytecodes for the
handful a chat request makes, several per cent of the gateway's own time. The request path
runs on the event loop thread, as do scrapes, so no lock is needed: these families keep
their children's values as plain numbers (a histogram finds its bucket with ``bisect``) and
turn them into the same samples prometheus-client would when the registry collects them.

In multi-process mode (``PROMETHEUS_MULTIPROC_DIR``) values must reach prometheus-client's
shared files, so ``Metrics`` uses prometheus-client's own classes there.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence

import prometheus_client.metrics
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


def _created_series() -> bool:
    # ``prometheus_client.disable_created_metrics()`` (or PROMETHEUS_DISABLE_CREATED_SERIES)
    # turns these off for prometheus-client's own metrics: follow it.
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class LocalCounter:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LocalHistogram:
    __slots__ = ("_bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # The first bound not below ``amount``: Prometheus buckets are "less or equal".
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class LocalCounterFamily:
    """A labelled counter; register it with a ``CollectorRegistry``."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], LocalCounter] = {}

    def labels(self, *values: object) -> LocalCounter:
        key = tuple(str(value) for value in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = LocalCounter()
        return child

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)
        created = _created_series()
        for values, child in self._children.items():
            family.add_metric(values, child.value, child.created if created else None)
        yield family


class LocalHistogramFamily:
    """A labelled histogram; register it with a ``CollectorRegistry``."""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._bounds = tuple(float(bound) for bound in buckets)
        self._les = [
            floatToGoString(bound)  # type: ignore[no-untyped-call]
            for bound in (*self._bounds, float("inf"))
        ]
        self._children: dict[tuple[str, ...], LocalHistogram] = {}

    def labels(self, *values: object) -> LocalHistogram:
        key = tuple(str(value) for value in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = LocalHistogram(self._bounds)
        return child

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        created = _created_series()
        for values, child in self._children.items():
            cumulative = 0.0
            buckets: list[tuple[str, float]] = []
            for le, count in zip(self._les, child.counts, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(list(values), buckets, child.sum)
            if created:
                labels = dict(zip(self._labelnames, values, strict=True))
                family.samples.append(Sample(self._name + "_created", labels, child.created))
        yield family
