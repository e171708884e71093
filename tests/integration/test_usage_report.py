"""Usage reports with latency percentiles, on SQLite and on a real PostgreSQL server: the
store's numbers against a reference computation, and ``interlock usage`` in each format."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from interlock.store.database import Database
from interlock.store.migrate import prepare
from interlock.store.usage import UsageFilter, UsageStore
from interlock.telemetry.ledger import UsageLedger
from interlock.telemetry.usage_record import UsageRecord
from tests.fixtures.databases import backend_fixture, database_url_fixture  # noqa: F401
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401
from tests.support.gateway import SECRET

pytestmark = pytest.mark.anyio

DAY_ONE = datetime(2025, 6, 1, 9, 30, tzinfo=UTC)
DAY_TWO = DAY_ONE + timedelta(days=1)
WHOLE = UsageFilter(start=date(2025, 6, 1), end=date(2025, 6, 2))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def percentile_cont(values: list[int], percentile: int) -> float:
    """The reference: linear interpolation between the closest ranks (PostgreSQL's)."""
    ordered = sorted(values)
    position = percentile / 100 * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def record(number: int, **changes: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req_report_{number:05d}",
        "created_at": DAY_ONE,
        "user_id": "ada",
        "key_id": "il_live_AbCd1234",
        "tier": "free",
        "model": "smart",
        "provider": "openai",
        "deployment": "openai-smart",
        "input_tokens": 100,
        "output_tokens": 20,
        "cached_tokens": 0,
        "cost": Decimal("0.001"),
        "latency_ms": 100,
        "ttft_ms": 30,
        "status": 200,
        "error": None,
        "attempts": 1,
        "streaming": False,
        "usage_source": "provider",
        "partial": False,
    }
    values.update(changes)
    return UsageRecord(**values)


def seeded_records() -> tuple[list[UsageRecord], dict[str, list[int]]]:
    """Records with known latencies, and the answered latencies per model."""
    rng = random.Random(7)
    records: list[UsageRecord] = []
    answered: dict[str, list[int]] = {"smart": [], "fast": []}
    number = 0
    for model, count in (("smart", 37), ("fast", 5)):
        for index in range(count):
            number += 1
            latency = rng.randint(20, 4000)
            answered[model].append(latency)
            records.append(
                record(
                    number,
                    model=model,
                    latency_ms=latency,
                    user_id="ada" if index % 2 else "bob",
                    tier="free" if index % 3 else "pro",
                    created_at=DAY_ONE if index % 4 else DAY_TWO,
                    cache_hit=index % 5 == 0,
                )
            )
    # Failed requests: counted, but their latency is not an answer's.
    for latency in (60_000, 90_000):
        number += 1
        records.append(
            record(number, model="fast", latency_ms=latency, status=502, error="upstream_error")
        )
    return records, answered


@pytest.fixture
async def seeded(database_url: str) -> dict[str, list[int]]:
    database = Database(database_url)
    try:
        await prepare(database)
        ledger = UsageLedger(database, outbox_dir=None)
        await ledger.start()
        records, answered = seeded_records()
        for item in records:
            ledger.record(item)
        await ledger.aclose()
    finally:
        await database.aclose()
    return answered


async def test_percentiles_match_the_reference_per_group_and_in_total(
    database_url: str, seeded: dict[str, list[int]]
) -> None:
    database = Database(database_url)
    try:
        store = UsageStore(database)
        by_model = {g.group: g for g in await store.report(WHOLE, "model")}
        total = await store.total(WHOLE)
        by_day = await store.report(WHOLE, "day")
        by_user = await store.report(WHOLE, "user")
        empty = await store.total(UsageFilter(start=date(2020, 1, 1), end=date(2020, 1, 1)))
    finally:
        await database.aclose()
    for model, latencies in seeded.items():
        group = by_model[model]
        assert group.latency_p50_ms == pytest.approx(percentile_cont(latencies, 50), abs=0.05)
        assert group.latency_p95_ms == pytest.approx(percentile_cont(latencies, 95), abs=0.05)
    assert by_model["fast"].requests == 7 and by_model["fast"].errors == 2
    everything = seeded["smart"] + seeded["fast"]
    assert total.latency_p50_ms == pytest.approx(percentile_cont(everything, 50), abs=0.05)
    assert total.latency_p95_ms == pytest.approx(percentile_cont(everything, 95), abs=0.05)
    assert total.latency_p95_ms < 60_000  # the failed requests' latencies are left out
    assert [g.group for g in by_day] == ["2025-06-01", "2025-06-02"]
    assert all(g.latency_p50_ms is not None for g in by_day + by_user)
    assert sum(g.requests for g in by_day) == total.requests == 44
    assert (empty.latency_p50_ms, empty.latency_p95_ms) == (None, None)


async def test_a_single_answer_is_its_own_percentile(database_url: str) -> None:
    database = Database(database_url)
    try:
        await prepare(database)
        ledger = UsageLedger(database, outbox_dir=None)
        await ledger.start()
        ledger.record(record(1, latency_ms=250))
        ledger.record(record(2, latency_ms=9, status=401, model="other"))  # no answer at all
        await ledger.aclose()
        groups = {g.group: g for g in await UsageStore(database).report(WHOLE, "model")}
    finally:
        await database.aclose()
    assert (groups["smart"].latency_p50_ms, groups["smart"].latency_p95_ms) == (250.0, 250.0)
    assert (groups["other"].latency_p50_ms, groups["other"].latency_p95_ms) == (None, None)


# --- the command, on both databases -----------------------------------------------------------


async def run_usage(
    database_url: str, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTERLOCK_", "DATABASE_"))}
    env.update(
        INTERLOCK_DATA_DIR=str(tmp_path / "cli-data"),
        DATABASE_URL=database_url,
        INTERLOCK_SECRET=SECRET,
        COLUMNS="200",
    )
    command = [sys.executable, "-m", "interlock", "usage", "--since", "2025-06-01"]
    with anyio.fail_after(60):
        return await anyio.run_process(
            [*command, "--until", "2025-06-02", *args], env=env, check=False
        )


async def test_the_command_reports_percentiles_in_every_format(
    database_url: str, seeded: dict[str, list[int]], tmp_path: Path
) -> None:
    smart_p50 = round(percentile_cont(seeded["smart"], 50), 1)
    smart_p95 = round(percentile_cont(seeded["smart"], 95), 1)

    as_json = await run_usage(database_url, tmp_path, "--by", "model", "--format", "json")
    assert as_json.returncode == 0, as_json.stderr.decode()
    body = json.loads(as_json.stdout)
    smart = next(d for d in body["data"] if d["group"] == "smart")
    assert smart["latency_p50_ms"] == pytest.approx(smart_p50, abs=0.05)
    assert smart["latency_p95_ms"] == pytest.approx(smart_p95, abs=0.05)
    assert smart["requests"] == 37
    assert body["total"]["error_rate"] == pytest.approx(round(2 / 44, 4))
    assert body["total"]["cache_hit_rate"] == pytest.approx(round(9 / 44, 4))

    as_csv = await run_usage(database_url, tmp_path, "--by", "tier", "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr.decode()
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout.decode())))
    assert [row["tier"] for row in rows] == ["free", "pro", "total"]
    assert sum(int(row["requests"]) for row in rows[:-1]) == int(rows[-1]["requests"]) == 44
    everything = seeded["smart"] + seeded["fast"]
    assert float(rows[-1]["latency_p95_ms"]) == pytest.approx(
        percentile_cont(everything, 95), abs=0.05
    )

    table = await run_usage(database_url, tmp_path, "--by", "model")
    assert table.returncode == 0, table.stderr.decode()
    text = table.stdout.decode()
    assert "p50 ms" in text and "p95 ms" in text
    [line] = [line for line in text.splitlines() if "│ smart " in line]
    cells = [cell.strip() for cell in line.split("│")]
    assert cells[-3:-1] == [f"{smart_p50:,.0f}", f"{smart_p95:,.0f}"]
