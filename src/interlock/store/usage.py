"""``UsageStore``: the usage ledger's table — batched inserts and the reports over it.

Inserts are one multi-row ``INSERT … ON CONFLICT (request_id) DO NOTHING``: writing the same
record twice (a replayed outbox, a retried batch) is a no-op. Reports group by UTC day, model,
user or tier over a range of UTC days, in the database, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, cast

from sqlalchemy import ColumnElement, Integer, String, Table, bindparam, case, func, literal, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from interlock.store.database import Database
from interlock.store.models import UsageRow

GroupBy = Literal["day", "model", "user", "tier"]
GROUPINGS: tuple[GroupBy, ...] = ("day", "model", "user", "tier")
# Under both databases' limits on bound parameters per statement (21 columns a row).
MAX_ROWS_PER_INSERT = 1000

_ZERO = Decimal(0)
_SCALE = Decimal("1e-10")  # the cost column's


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """The usage of one group (or of everything, in a report's ``total``)."""

    group: str | None  # the day (YYYY-MM-DD), model, user id or tier; None for the total
    requests: int
    input_tokens: int
    output_tokens: int
    cached_tokens: int
    cost: Decimal
    errors: int  # requests answered with a status of 400 or more (499: the client left)
    cache_hits: int
    # Latency percentiles (ms) of the answered requests (status below 400); None: none.
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cache_hits / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Which rows a report covers: UTC days ``start`` to ``end``, both included."""

    start: date
    end: date
    user_id: str | None = None
    model: str | None = None

    def bounds(self) -> tuple[datetime, datetime]:
        """[start of ``start``, start of the day after ``end``) in UTC."""
        low = datetime.combine(self.start, time.min, tzinfo=UTC)
        high = datetime.combine(self.end + timedelta(days=1), time.min, tzinfo=UTC)
        return low, high


class UsageStore:
    """The usage table of one database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(
        self, rows: Sequence[dict[str, Any]], *, rows_per_statement: int = MAX_ROWS_PER_INSERT
    ) -> int:
        """Insert ``rows`` (``UsageRow`` columns), skipping request ids already there; how
        many were new. In one transaction, in statements of at most ``rows_per_statement``
        rows (and at most ``MAX_ROWS_PER_INSERT``) whose sizes are powers of two, so that a
        handful of compiled statements serve every batch size."""
        largest = 1 << (min(rows_per_statement, MAX_ROWS_PER_INSERT).bit_length() - 1)
        inserted = start = 0
        async with self._db.engine.begin() as conn:
            while start < len(rows):
                size = min(largest, 1 << ((len(rows) - start).bit_length() - 1))
                inserted += await insert_rows(conn, rows[start : start + size])
                start += size
        return inserted

    async def report(self, where: UsageFilter, group_by: GroupBy) -> list[UsageTotals]:
        """One ``UsageTotals`` per group, ordered by group (days ascending)."""
        async with self._db.engine.connect() as conn:
            key = _group_key(group_by, conn.dialect.name).label("grp")
            query = select(key, *_totals()).where(*_conditions(where)).group_by(key).order_by(key)
            rows = (await conn.execute(query)).all()
            latencies = await latency_percentiles(conn, where, key)
        return [
            _totals_of(
                "" if row[0] is None else row[0], row[1:], latencies.get(row[0], _NO_PERCENTILES)
            )
            for row in rows
        ]

    async def total(self, where: UsageFilter) -> UsageTotals:
        """The usage of every row ``where`` covers, as one total."""
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(*_totals()).where(*_conditions(where)))).one()
            latencies = await latency_percentiles(conn, where, None)
        return _totals_of(None, tuple(row), latencies.get(None, _NO_PERCENTILES))


async def insert_rows(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> int:
    """Insert ``rows`` on ``conn``, ignoring request ids already present; how many were new.

    One multi-row ``INSERT … VALUES (…), (…) ON CONFLICT DO NOTHING RETURNING request_id``,
    compiled once per dialect and row count and sent as the driver's own SQL. SQLAlchemy's
    usual path prepares every row's parameters generically (about 1,000 bytecodes a row, on
    the event loop, while requests wait); here only the columns whose type converts the
    value (the timestamp, the cost) run a converter.
    """
    if not rows:
        return 0
    insert = _multi_row_insert(conn.dialect, len(rows))
    parameters: list[Any] = []
    for row in rows:
        values = list(insert.values_of(row))
        for index, convert in insert.converters:
            values[index] = convert(values[index])
        parameters += values
    result = await conn.exec_driver_sql(insert.sql, tuple(parameters))
    return len(result.all())


@dataclass(frozen=True, slots=True)
class _MultiRowInsert:
    sql: str
    values_of: Callable[[dict[str, Any]], tuple[Any, ...]]  # a row's values, in column order
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]  # (column index, converter)


@functools.lru_cache(maxsize=64)
def _multi_row_insert(dialect: Dialect, count: int) -> _MultiRowInsert:
    table = cast(Table, UsageRow.__table__)
    names = [column.name for column in table.columns]
    values = [
        {name: bindparam(f"r{row}_{name}", type_=table.c[name].type) for name in names}
        for row in range(count)
    ]
    make = postgresql_insert if dialect.name == "postgresql" else sqlite_insert
    statement = (
        make(table).values(values).on_conflict_do_nothing(index_elements=["request_id"])
    ).returning(table.c.request_id)
    compiled = statement.compile(dialect=dialect)
    order = [f"r{row}_{name}" for row in range(count) for name in names]
    # The parameters are sent positionally: row by row, column by column.
    if list(compiled.positiontup or ()) != order:
        raise RuntimeError(f"unexpected parameter order for {dialect.name}")
    converters = tuple(
        (index, convert)
        for index, name in enumerate(names)
        if (convert := table.c[name].type.dialect_impl(dialect).bind_processor(dialect))
    )
    return _MultiRowInsert(compiled.string, operator.itemgetter(*names), converters)


def _group_key(group_by: GroupBy, dialect: str) -> ColumnElement[Any]:
    columns: dict[str, ColumnElement[Any]] = {
        "model": UsageRow.__table__.c.model,
        "user": UsageRow.__table__.c.user_id,
        "tier": UsageRow.__table__.c.tier,
    }
    if group_by in columns:
        return columns[group_by]
    if dialect == "postgresql":
        # timestamptz → the UTC wall time → its date, whatever the session's time zone.
        return func.to_char(func.timezone("UTC", UsageRow.created_at), "YYYY-MM-DD")
    # SQLite keeps the UTC wall time as text (see UTCDateTime): its date is the first part.
    return func.substr(UsageRow.created_at, 1, 10, type_=String)


def _totals() -> list[ColumnElement[Any]]:
    return [
        func.count(),
        func.coalesce(func.sum(UsageRow.input_tokens), 0),
        func.coalesce(func.sum(UsageRow.output_tokens), 0),
        func.coalesce(func.sum(UsageRow.cached_tokens), 0),
        func.coalesce(func.sum(UsageRow.cost), 0),
        func.coalesce(func.sum(case((UsageRow.status >= 400, 1), else_=0), type_=Integer), 0),
        func.coalesce(func.sum(case((UsageRow.cache_hit, 1), else_=0), type_=Integer), 0),
    ]


def _conditions(where: UsageFilter) -> list[ColumnElement[bool]]:
    low, high = where.bounds()
    conditions = [UsageRow.created_at >= low, UsageRow.created_at < high]
    if where.user_id is not None:
        conditions.append(UsageRow.user_id == where.user_id)
    if where.model is not None:
        conditions.append(UsageRow.model == where.model)
    return conditions


def _totals_of(
    group: Any, values: Sequence[Any], latencies: tuple[float | None, float | None]
) -> UsageTotals:
    requests, input_tokens, output_tokens, cached_tokens, cost, errors, cache_hits = values
    return UsageTotals(
        group=group if group is None else str(group),
        requests=int(requests),
        input_tokens=int(input_tokens),
        output_tokens=int(output_tokens),
        cached_tokens=int(cached_tokens),
        # SQLite sums NUMERIC as a float: round it back to the column's scale.
        cost=_ZERO if cost is None else tidy_amount(Decimal(str(cost))),
        errors=int(errors),
        cache_hits=int(cache_hits),
        latency_p50_ms=latencies[0],
        latency_p95_ms=latencies[1],
    )


def tidy_amount(amount: Decimal) -> Decimal:
    """``amount`` at the column's scale, without trailing zeros or an exponent."""
    text = format(amount.quantize(_SCALE), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return Decimal(text)


# ---- latency percentiles ---------------------------------------------------------------------

PERCENTILES = (50, 95)
_NO_PERCENTILES: tuple[float | None, float | None] = (None, None)


async def latency_percentiles(
    conn: AsyncConnection, where: UsageFilter, key: ColumnElement[Any] | None
) -> dict[Any, tuple[float | None, float | None]]:
    """The p50 and p95 latency (ms) of the answered requests (status below 400) of each group
    (``key``; None: all rows as one group, under the key None), interpolated between the two
    nearest ranks as PostgreSQL's ``percentile_cont`` does.

    PostgreSQL computes them itself. SQLite has no percentile function: a window query ranks
    each group's latencies in the database and returns only the (at most four) ranks the
    percentiles need, so memory stays bounded whatever the number of rows.
    """
    conditions = [*_conditions(where), UsageRow.status < 400]
    if conn.dialect.name == "postgresql":
        percentiles = [
            func.percentile_cont(p / 100).within_group(UsageRow.latency_ms) for p in PERCENTILES
        ]
        if key is None:
            row = (await conn.execute(select(*percentiles).where(*conditions))).one()
            return {None: (_ms(row[0]), _ms(row[1]))}
        query = select(key, *percentiles).where(*conditions).group_by(key)
        return {row[0]: (_ms(row[1]), _ms(row[2])) for row in await conn.execute(query)}
    return await _ranked_percentiles(conn, conditions, key)


async def _ranked_percentiles(
    conn: AsyncConnection,
    conditions: Sequence[ColumnElement[bool]],
    key: ColumnElement[Any] | None,
) -> dict[Any, tuple[float | None, float | None]]:
    group = (key if key is not None else literal(0)).label("grp")
    partition = [key] if key is not None else []
    ranked = (
        select(
            group,
            UsageRow.latency_ms.label("latency"),
            func.row_number()
            .over(partition_by=partition, order_by=UsageRow.latency_ms)
            .label("rank"),
            func.count().over(partition_by=partition).label("size"),
        )
        .where(*conditions)
        .subquery()
    )
    # 0-based positions: floor and ceiling of p/100 * (size - 1), in integer arithmetic.
    wanted = []
    for p in PERCENTILES:
        wanted.append((ranked.c.size - 1) * p // 100)
        wanted.append(((ranked.c.size - 1) * p + 99) // 100)
    query = select(ranked.c.grp, ranked.c.latency, ranked.c.rank, ranked.c.size).where(
        (ranked.c.rank - 1).in_(wanted)
    )
    ranks: dict[Any, tuple[int, dict[int, int]]] = {}
    async for grp, latency, rank, size in await conn.stream(query):
        ranks.setdefault(None if key is None else grp, (int(size), {}))[1][int(rank) - 1] = int(
            latency
        )
    p50, p95 = PERCENTILES
    return {
        grp: (_interpolate(values, size, p50), _interpolate(values, size, p95))
        for grp, (size, values) in ranks.items()
    }


def _interpolate(values: dict[int, int], size: int, percentile: int) -> float:
    scaled = (size - 1) * percentile  # the position times 100
    low, remainder = divmod(scaled, 100)
    high = low + (1 if remainder else 0)
    return round(values[low] + (values[high] - values[low]) * remainder / 100, 1)


def _ms(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)
