"""The usage ledger and its reports against real databases: every test runs on SQLite (a temp
file) and on a real PostgreSQL server (a fresh database per test)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from sqlalchemy import event, func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from interlock.store.database import Database
from interlock.store.migrate import prepare
from interlock.store.models import UsageRow
from interlock.store.usage import UsageFilter, UsageStore
from interlock.telemetry.ledger import REJECTED_NAME, ROWS_PER_STATEMENT, UsageLedger
from interlock.telemetry.usage_record import UsageRecord
from tests.fixtures.databases import backend_fixture, database_url_fixture  # noqa: F401
from tests.fixtures.postgres import PostgresServer, postgres_server, postgres_url  # noqa: F401

pytestmark = pytest.mark.anyio

DAY = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def raw_db(database_url: str) -> AsyncIterator[Database]:
    """The database, not migrated."""
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.aclose()


@pytest.fixture
async def db(raw_db: Database) -> Database:
    await prepare(raw_db)
    return raw_db


@pytest.fixture
def outbox(tmp_path: Path) -> Path:
    return tmp_path / "data" / "usage-outbox"


def make_record(number: int, **changes: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req_{number:06d}",
        "created_at": DAY,
        "user_id": "user-a",
        "key_id": "key-a",
        "tier": "free",
        "model": "smart",
        "provider": "openai",
        "deployment": "openai-gpt",
        "input_tokens": 10,
        "output_tokens": 5,
        "cached_tokens": 0,
        "cost": Decimal("0.0000125"),
        "latency_ms": 120,
        "ttft_ms": 40,
        "status": 200,
        "error": None,
        "attempts": 1,
        "streaming": True,
        "usage_source": "provider",
        "partial": False,
    }
    values.update(changes)
    return UsageRecord(**values)


async def row_count(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(UsageRow))).scalar_one())


async def stored(db: Database) -> list[UsageRow]:
    async with db.session() as session:
        return list((await session.scalars(select(UsageRow).order_by(UsageRow.request_id))).all())


async def eventually(check: Callable[[], Any], seconds: float = 10.0) -> None:
    """Poll an async ``check`` until it returns true: the database has no event to wait on."""
    with anyio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.01)


def files_in(directory: Path, pattern: str = "*") -> list[Path]:
    return sorted(directory.rglob(pattern))


class InsertCounter:
    """Counts the INSERT statements sent to the usage table."""

    def __init__(self, db: Database) -> None:
        self.inserts = 0
        event.listen(db.engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO USAGE_RECORDS"):
            self.inserts += 1


def ledger_of(db: Database, outbox: Path | None, **options: Any) -> UsageLedger:
    settings: dict[str, Any] = {"flush_interval": 3600.0, "batch_size": 500}
    settings.update(options)
    return UsageLedger(db, outbox_dir=outbox, **settings)


# --- writing ------------------------------------------------------------------------------


async def test_records_are_written_in_multi_row_inserts_of_bounded_size(
    db: Database, outbox: Path
) -> None:
    ledger = ledger_of(db, outbox, batch_size=500)
    await ledger.start()
    counter = InsertCounter(db)
    for number in range(1200):
        ledger.record(make_record(number))
    assert await row_count(db) == 0  # recording never touches the database
    assert await ledger.flush()
    # Statements of at most ROWS_PER_STATEMENT rows, so that preparing one never holds the
    # event loop for long, sized in powers of two, so that few compiled statements serve
    # every batch: three transactions of 500 (7 x 64 + 32 + 16 + 4), 500 and 200 rows
    # (3 x 64 + 8).
    assert ROWS_PER_STATEMENT == 64
    assert counter.inserts == 10 + 10 + 4
    assert await row_count(db) == 1200
    assert ledger.pending == 0 and ledger.written == 1200
    await ledger.aclose()


async def test_every_column_round_trips(db: Database, outbox: Path) -> None:
    ledger = ledger_of(db, outbox)
    await ledger.start()
    original = make_record(
        7,
        user_id=None,
        key_id=None,
        cost=Decimal("0.0123456789"),
        ttft_ms=None,
        status=499,
        error="client_disconnected",
        cache_hit=True,
        attempts=3,
        streaming=False,
        usage_source="estimated",
        partial=True,
        cached_tokens=4,
    )
    ledger.record(original)
    await ledger.aclose()
    [row] = await stored(db)
    assert {column: getattr(row, column) for column in original.__struct_fields__} == {
        column: getattr(original, column) for column in original.__struct_fields__
    }
    assert row.created_at.tzinfo is not None


async def test_a_full_batch_is_flushed_without_waiting_for_the_interval(
    db: Database, outbox: Path
) -> None:
    ledger = ledger_of(db, outbox, batch_size=10, flush_interval=3600.0)
    await ledger.start()
    for number in range(10):
        ledger.record(make_record(number))

    async def all_written() -> bool:
        return await row_count(db) == 10

    await eventually(all_written)
    await ledger.aclose()


async def test_a_few_records_are_flushed_after_the_interval(db: Database, outbox: Path) -> None:
    ledger = ledger_of(db, outbox, batch_size=500, flush_interval=0.05)
    await ledger.start()
    ledger.record(make_record(1))

    async def written() -> bool:
        return await row_count(db) == 1

    await eventually(written)
    await ledger.aclose()


async def test_closing_writes_everything_and_clears_the_outbox(db: Database, outbox: Path) -> None:
    ledger = ledger_of(db, outbox)
    await ledger.start()
    for number in range(25):
        ledger.record(make_record(number))
    assert files_in(outbox, "*.jsonl")  # written ahead, before the database
    await ledger.aclose()
    assert await row_count(db) == 25
    assert files_in(outbox) == []


async def test_closing_in_the_middle_of_a_flush_writes_everything(db: Database) -> None:
    # A stop under load finds the background flush halfway through its batches. On SQLite,
    # a statement cut off by cancellation kept the write lock until the garbage collector
    # freed its connection, and without an outbox the closing flush then lost every row.
    ledger = ledger_of(db, None, batch_size=100)
    await ledger.start()
    writing = anyio.Event()
    event.listen(db.engine.sync_engine, "before_cursor_execute", lambda *_args: writing.set())
    for number in range(1000):
        ledger.record(make_record(number))  # the 100th wakes the background flush
    await writing.wait()
    await ledger.aclose()
    assert await row_count(db) == 1000
    assert ledger.pending == 0


async def test_the_same_request_id_is_written_once(db: Database) -> None:
    ledger = ledger_of(db, None)
    await ledger.start()
    ledger.record(make_record(1))
    assert await ledger.flush()
    ledger.record(make_record(1, output_tokens=999))  # a replay of the same request
    ledger.record(make_record(2))
    assert await ledger.flush()
    rows = await stored(db)
    assert [(r.request_id, r.output_tokens) for r in rows] == [("req_000001", 5), ("req_000002", 5)]
    assert (ledger.written, ledger.duplicates) == (2, 1)
    await ledger.aclose()


# --- crashes ------------------------------------------------------------------------------

# A gateway process that records usage, says so, and waits to be killed before any flush.
CRASHING = """
import asyncio, sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from interlock.store.database import Database
from interlock.telemetry.ledger import UsageLedger
from interlock.telemetry.usage_record import UsageRecord

async def main(url, outbox, count):
    ledger = UsageLedger(Database(url), outbox_dir=Path(outbox), flush_interval=3600)
    await ledger.start()
    for number in range(count):
        ledger.record(UsageRecord(
            request_id=f"crash_{number}", created_at=datetime.now(UTC), user_id="u",
            key_id=None, tier="free", model="smart", provider="openai", deployment="d",
            input_tokens=number, output_tokens=1, cached_tokens=0, cost=Decimal("0.5"),
            latency_ms=1, ttft_ms=None, status=200, error=None, attempts=1,
            streaming=False, usage_source="provider", partial=False))
    print("recorded", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def crash_after_recording(database_url: str, outbox: Path, count: int) -> None:
    """Run a process that records ``count`` rows, then ``kill -9`` it."""
    command = [sys.executable, "-c", CRASHING, database_url, str(outbox), str(count)]
    process = await anyio.open_process(command, stderr=subprocess.PIPE)
    try:
        with anyio.fail_after(60):
            assert process.stdout is not None
            line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 100)
            assert line == b"recorded"
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
        await process.aclose()
    assert process.returncode == -signal.SIGKILL


async def test_records_of_a_killed_process_are_replayed_once(
    db: Database, database_url: str, outbox: Path
) -> None:
    await crash_after_recording(database_url, outbox, 40)
    assert await row_count(db) == 0  # it never flushed

    survivor = ledger_of(db, outbox)
    await survivor.start()
    assert survivor.pending == 40
    assert await survivor.flush()
    rows = await stored(db)
    assert len(rows) == 40
    assert sorted(r.input_tokens for r in rows) == list(range(40))
    await survivor.aclose()

    again = ledger_of(db, outbox)  # the next start has nothing left to replay
    await again.start()
    assert again.pending == 0
    await again.aclose()
    assert await row_count(db) == 40
    assert files_in(outbox) == []


async def test_a_segment_replayed_after_it_was_written_adds_nothing(
    db: Database, outbox: Path
) -> None:
    # A crash between the INSERT and the outbox's deletion: the next start writes it again.
    ledger = ledger_of(db, outbox)
    await ledger.start()
    for number in range(5):
        ledger.record(make_record(number))
    [segment] = files_in(outbox, "*.jsonl")
    saved = segment.read_bytes()
    await ledger.aclose()
    assert await row_count(db) == 5
    orphan = outbox / "12345-deadbeef"
    orphan.mkdir()
    (orphan / "lock").touch()
    (orphan / "0000000001.jsonl").write_bytes(saved + b'{"request_id": "torn')  # a torn write

    replay = ledger_of(db, outbox)
    await replay.start()
    assert replay.pending == 5  # the torn line is skipped
    assert await replay.flush()
    assert (replay.written, replay.duplicates) == (0, 5)
    await replay.aclose()
    assert await row_count(db) == 5
    assert not orphan.exists()


async def test_a_live_ledgers_outbox_is_not_adopted(db: Database, outbox: Path) -> None:
    first = ledger_of(db, outbox)
    await first.start()
    first.record(make_record(1))
    second = ledger_of(db, outbox)  # another process on the same data dir
    await second.start()
    assert second.pending == 0
    assert await second.flush()
    assert await row_count(db) == 0
    await second.aclose()
    await first.aclose()
    assert await row_count(db) == 1


# --- outages ------------------------------------------------------------------------------


async def test_rows_wait_out_a_database_without_the_table(raw_db: Database, outbox: Path) -> None:
    ledger = ledger_of(raw_db, outbox, flush_interval=0.01, max_backoff=0.05)
    await ledger.start()
    for number in range(3):
        ledger.record(make_record(number))  # never raises, whatever the database does
    assert not await ledger.flush()
    assert ledger.pending == 3
    await prepare(raw_db)  # the database is back

    async def written() -> bool:
        return await row_count(raw_db) == 3

    await eventually(written)  # retried in the background
    assert ledger.pending == 0
    await ledger.aclose()


async def test_rows_wait_out_an_unreachable_server(
    backend: str, tmp_path: Path, outbox: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        # A file that is not a database: every connection fails.
        (tmp_path / "down.db").write_bytes(b"not a database, " * 512)
        url = f"sqlite+aiosqlite:///{tmp_path / 'down.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        name = f"later_{os.getpid()}_{tmp_path.name[-8:]}".lower().replace("-", "_")
        url = server.url(name)  # a database that does not exist yet
    database = Database(url)
    ledger = ledger_of(database, outbox, flush_interval=0.01, max_backoff=0.05)
    try:
        await ledger.start()
        for number in range(4):
            ledger.record(make_record(number))
        assert not await ledger.flush()
        if backend == "sqlite":
            (tmp_path / "down.db").unlink()
        else:
            server.psql(f'CREATE DATABASE "{name}"')
        await prepare(database)

        async def written() -> bool:
            return await row_count(database) == 4

        await eventually(written)
    finally:
        await ledger.aclose()
        await database.aclose()
        if backend == "postgresql":
            server.drop_database(name)


async def test_memory_stays_bounded_during_an_outage_and_nothing_is_lost(
    raw_db: Database, outbox: Path
) -> None:
    ledger = ledger_of(raw_db, outbox, batch_size=10, max_buffered=50)
    await ledger.start()
    for number in range(300):
        ledger.record(make_record(number))
        assert ledger._in_memory <= 50 + 10
    assert not await ledger.flush()
    assert ledger.pending == 300
    await prepare(raw_db)
    assert await ledger.flush()
    assert await row_count(raw_db) == 300
    assert ledger.lost == 0
    await ledger.aclose()


async def test_without_an_outbox_the_oldest_records_are_dropped_and_counted(
    raw_db: Database,
) -> None:
    ledger = ledger_of(raw_db, None, batch_size=10, max_buffered=50)
    await ledger.start()
    for number in range(80):
        ledger.record(make_record(number))
    assert ledger.lost == 30 and ledger.pending == 50
    await prepare(raw_db)
    await ledger.aclose()
    rows = await stored(raw_db)
    assert [r.request_id for r in rows] == [f"req_{n:06d}" for n in range(30, 80)]


async def test_closing_during_an_outage_keeps_the_records_for_the_next_start(
    raw_db: Database, outbox: Path
) -> None:
    ledger = UsageLedger(raw_db, outbox_dir=outbox, flush_interval=3600, close_timeout=5)
    await ledger.start()
    for number in range(6):
        ledger.record(make_record(number))
    await ledger.aclose()  # the table does not exist: nothing can be written
    assert await row_count_or_none(raw_db) is None
    await prepare(raw_db)
    later = ledger_of(raw_db, outbox)
    await later.start()
    await later.aclose()
    assert await row_count(raw_db) == 6


async def row_count_or_none(db: Database) -> int | None:
    try:
        return await row_count(db)
    except Exception:
        return None


async def test_a_record_the_database_refuses_is_set_aside(db: Database, outbox: Path) -> None:
    ledger = ledger_of(db, outbox)
    await ledger.start()
    ledger.record(make_record(1))
    ledger.record(make_record(2, usage_source="bogus"))  # breaks a CHECK constraint
    ledger.record(make_record(3))
    assert await ledger.flush()  # not stuck behind the bad row
    assert [r.request_id for r in await stored(db)] == ["req_000001", "req_000003"]
    assert (ledger.written, ledger.rejected, ledger.duplicates) == (2, 1, 0)
    assert b"req_000002" in (outbox / REJECTED_NAME).read_bytes()
    await ledger.aclose()


# --- reports ------------------------------------------------------------------------------


async def seed(db: Database) -> None:
    day1, day2, day3 = DAY, DAY + timedelta(days=1), DAY + timedelta(days=2)
    rows = [
        make_record(1, created_at=day1, user_id="ada", model="smart", cost=Decimal("0.25")),
        make_record(2, created_at=day1, user_id="bob", model="fast", cost=Decimal("0.125")),
        make_record(3, created_at=day2, user_id="ada", model="fast", status=502, error="x"),
        make_record(4, created_at=day2, user_id="ada", model="smart", cache_hit=True),
        make_record(5, created_at=day3, user_id="bob", model="smart", tier="premium"),
        # The last microsecond of day 1 and the first of day 2, in UTC.
        make_record(6, created_at=datetime(2025, 3, 14, 23, 59, 59, 999999, tzinfo=UTC)),
        make_record(7, created_at=datetime(2025, 3, 15, 0, 0, tzinfo=UTC), user_id="bob"),
    ]
    ledger = ledger_of(db, None)
    await ledger.start()
    for row in rows:
        ledger.record(row)
    await ledger.aclose()


WHOLE = UsageFilter(start=date(2025, 3, 14), end=date(2025, 3, 16))


async def test_reports_group_by_day_in_utc(db: Database) -> None:
    await seed(db)
    report = await UsageStore(db).report(WHOLE, "day")
    assert [(g.group, g.requests) for g in report] == [
        ("2025-03-14", 3),
        ("2025-03-15", 3),
        ("2025-03-16", 1),
    ]
    assert report[0].cost == Decimal("0.3750125")  # 0.25 + 0.125 + 0.0000125
    assert report[1].errors == 1 and report[1].cache_hits == 1
    assert report[1].error_rate == pytest.approx(1 / 3)


async def test_reports_group_by_model_user_and_tier(db: Database) -> None:
    await seed(db)
    store = UsageStore(db)
    by_model = {g.group: g.requests for g in await store.report(WHOLE, "model")}
    assert by_model == {"fast": 2, "smart": 5}
    by_user = {g.group: (g.requests, g.input_tokens) for g in await store.report(WHOLE, "user")}
    assert by_user == {"ada": (3, 30), "bob": (3, 30), "user-a": (1, 10)}
    by_tier = {g.group: g.requests for g in await store.report(WHOLE, "tier")}
    assert by_tier == {"free": 6, "premium": 1}


async def test_reports_filter_by_days_user_and_model(db: Database) -> None:
    await seed(db)
    store = UsageStore(db)
    one_day = await store.total(UsageFilter(start=date(2025, 3, 15), end=date(2025, 3, 15)))
    assert one_day.requests == 3
    ada = await store.total(UsageFilter(start=WHOLE.start, end=WHOLE.end, user_id="ada"))
    assert (ada.requests, ada.cost) == (3, Decimal("0.250025"))
    smart_bob = await store.report(
        UsageFilter(start=WHOLE.start, end=WHOLE.end, user_id="bob", model="smart"), "day"
    )
    assert [(g.group, g.requests) for g in smart_bob] == [("2025-03-15", 1), ("2025-03-16", 1)]
    nothing = await store.total(UsageFilter(start=date(2024, 1, 1), end=date(2024, 1, 31)))
    assert (nothing.requests, nothing.cost, nothing.input_tokens) == (0, 0, 0)
    assert (
        await store.report(UsageFilter(start=date(2024, 1, 1), end=date(2024, 1, 1)), "day") == []
    )


async def test_a_day_is_a_utc_day_whatever_the_session_time_zone(
    backend: str, db: Database, database_url: str
) -> None:
    await seed(db)
    elsewhere = Database(database_url)
    if backend == "postgresql":  # a session whose local midnight is not UTC's
        await elsewhere.engine.dispose()
        elsewhere.engine = create_async_engine(
            database_url, connect_args={"server_settings": {"TimeZone": "Pacific/Auckland"}}
        )
        async with elsewhere.engine.connect() as conn:
            zone = (await conn.execute(text("SHOW TIME ZONE"))).scalar_one()
        assert zone == "Pacific/Auckland"
    try:
        report = await UsageStore(elsewhere).report(WHOLE, "day")
    finally:
        await elsewhere.aclose()
    assert [(g.group, g.requests) for g in report] == [
        ("2025-03-14", 3),
        ("2025-03-15", 3),
        ("2025-03-16", 1),
    ]
