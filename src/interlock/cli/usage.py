"""``interlock usage``: requests, tokens, cost, cache-hit and error rates and p50 / p95
latency per day, model, user or tier, as a table, JSON or CSV."""

from __future__ import annotations

import csv
import enum
import sys
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from interlock.cli.runtime import ConfigOption, fail, run_async, settings_or_exit

if TYPE_CHECKING:
    from interlock.store.usage import UsageFilter, UsageTotals

DEFAULT_DAYS = 30


class Grouping(enum.StrEnum):
    day = "day"
    model = "model"
    user = "user"
    tier = "tier"


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


COLUMNS = (
    "requests",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost",
    "cache_hit_rate",
    "error_rate",
    "latency_p50_ms",
    "latency_p95_ms",
)


def usage(
    by: Annotated[Grouping, typer.Option("--by", help="One row per day, model, user or tier.")] = (
        Grouping.day
    ),
    since: Annotated[
        str | None, typer.Option(help="First UTC day, YYYY-MM-DD [30 days before --until].")
    ] = None,
    until: Annotated[str | None, typer.Option(help="Last UTC day, YYYY-MM-DD [today].")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user id.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this public model.")] = None,
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = (
        OutputFormat.table
    ),
    config: ConfigOption = None,
) -> None:
    """Show usage and cost from the database: requests, tokens and cost per group."""
    from interlock.store.usage import UsageFilter

    settings = settings_or_exit(config_path=config)
    last = _day(until, "--until") or datetime.now(UTC).date()
    first = _day(since, "--since") or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        fail(["--since: must not be after --until"])
    where = UsageFilter(start=first, end=last, user_id=user or None, model=model or None)

    async def read() -> tuple[list[UsageTotals], UsageTotals]:
        from interlock.store.database import database_for
        from interlock.store.migrate import current_revision
        from interlock.store.usage import UsageStore

        database = database_for(settings)
        try:
            if await current_revision(database) is None:
                fail(["the database is empty: start the gateway or run `interlock db upgrade`"])
            store = UsageStore(database)
            return await store.report(where, by.value), await store.total(where)
        finally:
            await database.aclose()

    groups, total = run_async(read)
    if output is OutputFormat.json:
        _print_json(groups, total, where, by.value)
    elif output is OutputFormat.csv:
        _print_csv(groups, total, by.value)
    else:
        _print_table(groups, total, where, by.value)


def _day(value: str | None, option: str) -> date | None:
    if not value:
        return None
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        fail([f"{option}: expected a date, YYYY-MM-DD, got {value!r}"])


def _values(totals: UsageTotals) -> dict[str, object]:
    return {
        "requests": totals.requests,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cached_tokens": totals.cached_tokens,
        "cost": totals.cost,
        "cache_hit_rate": round(totals.cache_hit_rate, 4),
        "error_rate": round(totals.error_rate, 4),
        "latency_p50_ms": totals.latency_p50_ms,
        "latency_p95_ms": totals.latency_p95_ms,
    }


def _currency() -> str:
    from interlock.telemetry.prices import packaged_price_table

    return packaged_price_table().currency


def _print_json(groups: list[UsageTotals], total: UsageTotals, where: UsageFilter, by: str) -> None:
    import msgspec

    body = {
        "start": where.start.isoformat(),
        "end": where.end.isoformat(),
        "group_by": by,
        "currency": _currency(),
        "data": [{"group": group.group, **_values(group)} for group in groups],
        "total": _values(total),
    }
    encoder = msgspec.json.Encoder(decimal_format="number")
    sys.stdout.write(encoder.encode(body).decode() + "\n")


def _print_csv(groups: list[UsageTotals], total: UsageTotals, by: str) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([by, *COLUMNS])
    for row in [*groups, total]:
        values = _values(row)
        writer.writerow(["total" if row is total else row.group, *(values[c] for c in COLUMNS)])


def _print_table(
    groups: list[UsageTotals], total: UsageTotals, where: UsageFilter, by: str
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # into a file or a pipe: never cut a column
    if not groups:
        console.print(f"No usage from {where.start} to {where.end}.")
        return
    table = Table(title=f"Usage by {by}, {where.start} to {where.end} (UTC)", show_footer=True)
    table.add_column(by, footer="total", no_wrap=True)
    headers = (
        *("requests", "input tokens", "output tokens", "cached", f"cost ({_currency()})"),
        *("cache hits", "errors", "p50 ms", "p95 ms"),
    )
    for header, footer in zip(headers, _cells(total), strict=True):
        table.add_column(header, footer=footer, justify="right", no_wrap=True)
    for group in groups:
        table.add_row(group.group or "-", *_cells(group))
    console.print(table)


def _cells(totals: UsageTotals) -> list[str]:
    return [
        f"{totals.requests:,}",
        f"{totals.input_tokens:,}",
        f"{totals.output_tokens:,}",
        f"{totals.cached_tokens:,}",
        f"{totals.cost:,.6f}",
        f"{totals.cache_hit_rate:.1%}",
        f"{totals.error_rate:.1%}",
        _latency(totals.latency_p50_ms),
        _latency(totals.latency_p95_ms),
    ]


def _latency(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:,.0f}"
