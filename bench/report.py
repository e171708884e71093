"""Showing a run: the terminal table, the Markdown table, and the target lines."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from bench.results import Point, Target

# What each column means is in bench/README.md.
COLUMNS = (
    "upstream",
    "mode",
    "conc",
    "direct req/s",
    "gw req/s",
    "direct p50/p99",
    "gw p50/p99",
    "added p50",
    "gw/direct",
    "TTFT p50 direct/gw",
    "TTFT added",
    "gw CPU",
    "check",
)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _row(point: Point) -> list[str]:
    ttft_pair = ttft_added = "-"
    if point.direct_ttft is not None and point.gateway_ttft is not None:
        ttft_pair = f"{_ms(point.direct_ttft.ttft_p50_ms)} / {_ms(point.gateway_ttft.ttft_p50_ms)}"
        added = point.ttft_added_p50_ms
        ttft_added = f"{added:+.2f}" if added is not None and not math.isnan(added) else "-"
    problems = point.problems()
    check = "; ".join(problems) if problems else "ok"
    if point.warnings():
        check += f" ({'; '.join(point.warnings())})"
    return [
        f"{point.delay_ms:g} ms",
        point.mode,
        str(point.concurrency),
        f"{point.direct.requests_per_s:,.0f}",
        f"{point.gateway.requests_per_s:,.0f}",
        f"{_ms(point.direct.p50_ms)} / {_ms(point.direct.p99_ms)}",
        f"{_ms(point.gateway.p50_ms)} / {_ms(point.gateway.p99_ms)}",
        f"{point.added_p50_ms:+.2f}",
        f"{point.p50_ratio:.2f}x",
        ttft_pair,
        ttft_added,
        f"{point.gateway_cpu_percent:.0f} %",
        check,
    ]


def terminal_table(points: Sequence[Point], title: str) -> Table:
    table = Table(title=title, show_lines=False, header_style="bold")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("mode", "check") else "right")
    for point in points:
        row = _row(point)
        style = "red" if point.problems() else "yellow" if point.warnings() else None
        table.add_row(*row, style=style)
    return table


def markdown_table(points: Sequence[Point]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    lines = [
        line(COLUMNS),
        line(["---" if name in ("mode", "check") else "---:" for name in COLUMNS]),
    ]
    lines.extend(line(_row(point)) for point in points)
    return "\n".join(lines)


def target_lines(targets: Sequence[Target]) -> list[str]:
    return [target.line() for target in targets]


def print_report(
    console: Console,
    points: Sequence[Point],
    targets: Sequence[Target],
    header: Sequence[str],
    *,
    markdown: bool,
) -> None:
    """The table and the target lines on ``console``; with ``markdown`` the same again as
    Markdown on stdout (the caller then points ``console`` at stderr)."""
    console.print(terminal_table(points, "Interlock overhead vs direct"))
    for text in header:
        console.print(text, highlight=False)
    for target in targets:
        colour = {"PASS": "green", "MISS": "red", "SKIP": "yellow"}[target.verdict]
        console.print(f"[{colour}]{target.line()}[/]", highlight=False)
    if markdown:
        print()
        print("\n".join(f"{text}  " for text in header))
        print()
        print(markdown_table(points))
        print()
        for target in targets:
            print(f"- {target.line()}")
