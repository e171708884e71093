"""``UTCDateTime`` on SQLite: its own one-step bind writes exactly the text that SQLAlchemy's
SQLite ``DATETIME`` writes for the UTC wall time, so stored rows, range queries and day
groupings read the same whichever wrote them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import DateTime, Dialect
from sqlalchemy.dialects import postgresql, sqlite

from interlock.store.models import UTCDateTime

SQLITE = sqlite.dialect()

MOMENTS = [
    datetime(2025, 3, 14, 12, 0, tzinfo=UTC),  # no microseconds: still written, as zeros
    datetime(2025, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 1, 1, 0, 30, 0, 7, tzinfo=timezone(timedelta(hours=2))),  # the day before
    datetime(2026, 6, 1, 20, 0, tzinfo=timezone(timedelta(hours=-7))),  # the day after
    datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),  # a four-digit year, zero-padded
]


def _sqlalchemy_text(moment: datetime) -> str:
    """The text of SQLAlchemy's own two steps: to the UTC wall time, then SQLite DATETIME."""
    wall = moment.astimezone(UTC).replace(tzinfo=None)
    process = DateTime().dialect_impl(SQLITE).bind_processor(SQLITE)
    assert process is not None
    text = process(wall)
    assert isinstance(text, str)
    return text


def _bind(dialect: Dialect) -> Callable[[Any], Any] | None:
    return UTCDateTime().dialect_impl(dialect).bind_processor(dialect)


@pytest.mark.parametrize("moment", MOMENTS, ids=str)
def test_the_sqlite_text_is_sqlalchemys(moment: datetime) -> None:
    process = _bind(SQLITE)
    assert callable(process)
    assert process(moment) == _sqlalchemy_text(moment)


def test_text_order_is_time_order() -> None:
    process = _bind(SQLITE)
    assert callable(process)
    ordered = sorted(MOMENTS)
    assert sorted(ordered, key=process) == ordered


def test_a_naive_timestamp_is_refused_and_none_stays_none() -> None:
    process = _bind(SQLITE)
    assert callable(process)
    with pytest.raises(ValueError, match="timezone-aware"):
        process(datetime(2025, 1, 1))
    assert process(None) is None


def test_postgresql_keeps_the_aware_value() -> None:
    moment = datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    process = _bind(postgresql.dialect())
    converted = process(moment) if callable(process) else moment
    assert converted == moment
    assert isinstance(converted, datetime) and converted.utcoffset() == timedelta(0)
