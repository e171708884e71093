"""What one benchmark run found: its points, the gateway's memory, and the targets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from bench.ttft import TtftResult
from bench.wrk import WrkResult

Mode = Literal["json", "stream"]

# Other processes using more than this share of one core during a point skew it visibly.
OTHER_LOAD_WARNING_PERCENT = 10.0


@dataclass(frozen=True, slots=True)
class Point:
    """One (upstream delay, mode, concurrency), measured direct and through the gateway."""

    delay_ms: float
    mode: Mode
    concurrency: int
    direct: WrkResult
    gateway: WrkResult
    direct_ttft: TtftResult | None
    gateway_ttft: TtftResult | None
    gateway_cpu_percent: float  # during the gateway's wrk run, % of one core
    gateway_rss_mb: float  # after the point
    other_cpu_percent: float  # CPU used by other processes on the machine, % of one core

    @property
    def added_p50_ms(self) -> float:
        return self.gateway.p50_ms - self.direct.p50_ms

    @property
    def p50_ratio(self) -> float:
        return self.gateway.p50_ms / self.direct.p50_ms if self.direct.p50_ms else math.nan

    @property
    def ttft_added_p50_ms(self) -> float | None:
        if self.direct_ttft is None or self.gateway_ttft is None:
            return None
        return self.gateway_ttft.ttft_p50_ms - self.direct_ttft.ttft_p50_ms

    def gateway_problems(self) -> list[str]:
        problems = []
        if self.gateway.errors:
            problems.append(f"gateway: {self.gateway.describe_errors()}")
        if self.gateway_ttft is not None and self.gateway_ttft.errors:
            problems.append(f"gateway TTFT client: {self.gateway_ttft.errors} bad streams")
        return problems

    def problems(self) -> list[str]:
        """Why this point's numbers cannot be trusted (empty when every reply was good)."""
        problems = []
        if self.direct.errors:
            problems.append(f"direct: {self.direct.describe_errors()}")
        if self.direct_ttft is not None and self.direct_ttft.errors:
            problems.append(f"direct TTFT client: {self.direct_ttft.errors} bad streams")
        return problems + self.gateway_problems()

    def warnings(self) -> list[str]:
        """Why this point's numbers may be skewed, though every reply was good."""
        if self.other_cpu_percent > OTHER_LOAD_WARNING_PERCENT:
            return [f"other load {self.other_cpu_percent:.0f} %"]
        return []

    def to_json(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc.update(
            added_p50_ms=self.added_p50_ms,
            p50_ratio=self.p50_ratio,
            ttft_added_p50_ms=self.ttft_added_p50_ms,
            problems=self.problems(),
            warnings=self.warnings(),
        )
        return doc


@dataclass(frozen=True, slots=True)
class Target:
    """One performance target: what was measured against the limit."""

    name: str
    limit: float
    unit: str
    at_most: bool  # True: the measured value must be ≤ limit; False: ≥ limit
    measured: float | None  # None: the point was not part of this run
    note: str = ""

    @property
    def verdict(self) -> Literal["PASS", "MISS", "SKIP"]:
        if self.measured is None or math.isnan(self.measured):
            return "SKIP"
        if self.note:  # the point had errors: its number proves nothing
            return "MISS"
        ok = self.measured <= self.limit if self.at_most else self.measured >= self.limit
        return "PASS" if ok else "MISS"

    def line(self) -> str:
        sign = "≤" if self.at_most else "≥"
        measured = "not measured" if self.measured is None else f"{self.measured:,.2f} {self.unit}"
        note = f" ({self.note})" if self.note else ""
        target = f"target {sign} {self.limit:,g} {self.unit}"
        return f"{self.verdict}  {self.name}: {measured} ({target}){note}"


def _find(points: Sequence[Point], delay: float, mode: Mode, concurrency: int) -> Point | None:
    return next(
        (
            p
            for p in points
            if p.delay_ms == delay and p.mode == mode and p.concurrency == concurrency
        ),
        None,
    )


def evaluate_targets(points: Sequence[Point], peak_rss_mb: float) -> list[Target]:
    """The gateway's targets on a 2-core machine, one worker, upstream at 0 ms."""
    latency = _find(points, 0, "json", 1)
    throughput = _find(points, 0, "json", 64)
    streaming = _find(points, 0, "stream", 1)

    def note(point: Point | None) -> str:
        return "; ".join(point.gateway_problems()) if point is not None else ""

    return [
        Target(
            "added latency p50 (0 ms upstream, JSON, concurrency 1)",
            1.5,
            "ms",
            at_most=True,
            measured=latency.added_p50_ms if latency else None,
            note=note(latency),
        ),
        Target(
            "gateway throughput (0 ms upstream, JSON, concurrency 64)",
            2000,
            "req/s",
            at_most=False,
            measured=throughput.gateway.requests_per_s if throughput else None,
            note=note(throughput),
        ),
        Target(
            "TTFT overhead p50 (0 ms upstream, streaming, concurrency 1)",
            1.5,
            "ms",
            at_most=True,
            measured=streaming.ttft_added_p50_ms if streaming else None,
            note=note(streaming),
        ),
        Target("gateway peak RSS", 200, "MB", at_most=True, measured=peak_rss_mb),
    ]
