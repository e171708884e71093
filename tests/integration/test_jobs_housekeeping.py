"""The ``housekeeping`` job and the gateway's scheduler: expired shared-state entries (in
process and in a real Redis), orphaned usage outboxes, and the scheduler's start and stop
with the app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import func, select

from interlock.app import running
from interlock.config_lifecycle import HousekeepingJobConfig
from interlock.jobs.housekeeping import housekeeping
from interlock.jobs.registry import JobContext
from interlock.settings import Settings, load_settings
from interlock.state import Limit, MemoryState, build_state
from interlock.store.database import Database
from interlock.store.migrate import prepare
from interlock.store.models import UsageRow
from interlock.telemetry.ledger import UsageLedger
from interlock.telemetry.usage_record import UsageRecord
from tests.fixtures.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.support.gateway import make_settings

pytestmark = pytest.mark.anyio


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"INTERLOCK_DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'interlock.db'}")
    try:
        await prepare(database)
        yield database
    finally:
        await database.aclose()


async def test_the_in_process_state_is_swept_of_everything_expired(
    settings: Settings, db: Database
) -> None:
    ticks = Ticks()
    state = MemoryState(clock=ticks)
    for n in range(20):
        await state.limits.admit([Limit(f"budget:user:u{n}:day", 100, 10.0, 5)])
        await state.slots.acquire("deployment", f"holder-{n}", limit=100, lease=5.0)
        await state.outcomes.record(f"circuit-{n}", ok=True, window=5.0)
        await state.kv.set(f"cache-{n}", b"answer", ttl=5.0)
        await state.locks.acquire(f"lock-{n}", "me", lease=5.0)
    await state.slots.acquire("deployment", "long-lived", limit=100, lease=60.0)
    await state.kv.set("kept", b"answer", ttl=60.0)
    ticks.now += 30  # everything but two entries has expired, unseen

    context = JobContext(settings, db, state, None, lambda: datetime.now(UTC))
    summary = await housekeeping(context, HousekeepingJobConfig())

    assert summary == {
        "state": "memory",
        "swept": {
            "rate_limit_buckets": 20,
            "slot_holders": 20,
            "outcome_windows": 20,
            "kv_entries": 20,
            "locks": 20,
        },
    }
    assert len(state.limits) == 0
    assert len(state.kv) == 1 and await state.kv.get("kept") == b"answer"
    assert await state.slots.counts(["deployment"]) == [1]
    assert (await state.sweep())["slot_holders"] == 0  # nothing left to do


async def test_dead_holders_are_pruned_from_redis_slot_pools(redis_url: str) -> None:
    state = build_state(redis_url)
    try:
        await state.slots.acquire("deployment", "dead", limit=10, lease=0.05)
        await state.slots.acquire("deployment", "alive", limit=10, lease=60.0)
        await state.slots.acquire("other", "dead-too", limit=10, lease=0.05)
        await asyncio.sleep(0.1)
        # "other" had only a dead holder: Redis expired the whole pool itself.
        assert await state.sweep() == {"slot_holders": 1}
        assert await state.slots.counts(["deployment", "other"]) == [1, 0]
        assert await state.sweep() == {"slot_holders": 0}
        assert await state.slots.release("deployment", "alive")
    finally:
        await state.aclose()


def record(number: int) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{number:04d}",
        created_at=datetime(2030, 1, 1, tzinfo=UTC),
        user_id="u",
        key_id="k",
        tier="free",
        model="smart",
        provider="openai",
        deployment="d",
        input_tokens=1,
        output_tokens=1,
        cached_tokens=0,
        cost=Decimal("0.001"),
        latency_ms=10,
        ttft_ms=None,
        status=200,
        error=None,
        attempts=1,
        streaming=False,
        usage_source="provider",
        partial=False,
    )


async def usage_rows(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(UsageRow))).scalar_one())


async def test_the_outbox_of_a_process_that_died_meanwhile_is_written(
    settings: Settings, db: Database, tmp_path: Path
) -> None:
    outbox = tmp_path / "data" / "usage-outbox"
    ledger = UsageLedger(db, outbox_dir=outbox, flush_interval=3600.0)
    await ledger.start()
    try:
        # Another gateway process on this data directory, still alive: its records are its
        # own to write.
        alive = UsageLedger(db, outbox_dir=outbox, flush_interval=3600.0)
        await alive.start()
        alive.record(record(99))
        # And a third, killed after recording 3 requests (since both ledgers started).
        orphan = outbox / "4242-deadbeef"
        orphan.mkdir()
        (orphan / "lock").touch()
        lines = b"".join(msgspec.json.encode(record(n)) + b"\n" for n in range(3))
        (orphan / "0000000001.jsonl").write_bytes(lines)

        context = JobContext(settings, db, MemoryState(), ledger, lambda: datetime.now(UTC))
        summary: dict[str, Any] = await housekeeping(context, HousekeepingJobConfig())
        assert summary["outbox_records_adopted"] == 3
        assert not orphan.exists()
        assert await ledger.flush()
        assert await usage_rows(db) == 3
        again = await housekeeping(context, HousekeepingJobConfig())
        assert again["outbox_records_adopted"] == 0
        await alive.aclose()
        assert await usage_rows(db) == 4
    finally:
        await ledger.aclose()
    assert await usage_rows(db) == 4


def scheduler_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "job-scheduler"]


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_gateway_runs_the_scheduler_unless_told_not_to(
    tmp_path: Path, enabled: bool
) -> None:
    config = {
        "models.smart": {
            "deployments": [
                {
                    "provider": "openai",
                    "model": "gpt-4o",
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key_env": "FAKE_PROVIDER_KEY",
                }
            ]
        },
        "jobs": {"scheduler": enabled},
    }
    settings = make_settings(tmp_path, config)
    async with running(settings, announce=None):
        assert len(scheduler_tasks()) == (1 if enabled else 0)
    assert scheduler_tasks() == []
