"""``UsageStore``: the usage ledger's table — batched inserts and the reports over it.

Inserts are one multi-row ``INSERT … ON CONFLICT (request_id) DO NOTHING``: writing the same
record twice (a replayed outbox, a retried batch) is a no-op. Reports group by UTC day, model,
user or tier over a range of UTC days, in the database, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import ColumnElement, Integer, String, case, func, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
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

    async def insert(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert ``rows`` (``UsageRow`` columns), skipping request ids already there; how
        many were new. One statement per ``MAX_ROWS_PER_INSERT`` rows, in one transaction."""
        if not rows:
            return 0
        inserted = 0
        async with self._db.engine.begin() as conn:
            for start in range(0, len(rows), MAX_ROWS_PER_INSERT):
                inserted += await insert_rows(conn, rows[start : start + MAX_ROWS_PER_INSERT])
        return inserted

    async def report(self, where: UsageFilter, group_by: GroupBy) -> list[UsageTotals]:
        """One ``UsageTotals`` per group, ordered by group (days ascending)."""
        async with self._db.engine.connect() as conn:
            key = _group_key(group_by, conn.dialect.name).label("grp")
            query = select(key, *_totals()).where(*_conditions(where)).group_by(key).order_by(key)
            rows = (await conn.execute(query)).all()
        return [_totals_of("" if row[0] is None else row[0], row[1:]) for row in rows]

    async def total(self, where: UsageFilter) -> UsageTotals:
        """The usage of every row ``where`` covers, as one total."""
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(*_totals()).where(*_conditions(where)))).one()
        return _totals_of(None, tuple(row))


async def insert_rows(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> int:
    """Insert ``rows`` on ``conn``, ignoring request ids already present; how many were new.

    With ``RETURNING``, SQLAlchemy sends the rows as multi-row ``INSERT … VALUES (…), (…)``
    statements ("insertmanyvalues", up to 1000 rows each) from one cached compiled statement:
    as fast as the driver's executemany, and it counts what was really inserted.
    """
    if conn.dialect.name == "postgresql":
        statement: Any = postgresql_insert(UsageRow).on_conflict_do_nothing(
            index_elements=["request_id"]
        )
    else:
        statement = sqlite_insert(UsageRow).on_conflict_do_nothing(index_elements=["request_id"])
    result = await conn.execute(statement.returning(UsageRow.request_id), list(rows))
    return len(result.all())


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


def _totals_of(group: Any, values: Sequence[Any]) -> UsageTotals:
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
    )


def tidy_amount(amount: Decimal) -> Decimal:
    """``amount`` at the column's scale, without trailing zeros or an exponent."""
    text = format(amount.quantize(_SCALE), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return Decimal(text)
