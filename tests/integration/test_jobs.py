"""Scheduled jobs against real databases (SQLite and PostgreSQL): each due time runs on one
instance, a dead holder's lease expires, failures are recorded, and the built-in cleanup
deletes exactly what has outlived its retention."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from interlock.config_lifecycle import CleanupJobConfig, JobConfig
from interlock.jobs.cleanup import cleanup
from interlock.jobs.registry import Job, JobContext, JobFailed, Summary, configured_jobs
from interlock.jobs.runner import JobRunner
from interlock.jobs.scheduler import Scheduler
from interlock.settings import Settings, load_settings
from interlock.state import MemoryState
from interlock.store import retention
from interlock.store.database import Database
from interlock.store.jobs import JobStore, RunRecord
from interlock.store.keys import KeyStore
from interlock.store.migrate import prepare
from interlock.store.models import ApiKey, Conversation, JobLease, UsageRow
from interlock.store.usage import UsageStore
from interlock.store.users import UserStore
from tests.fixtures.databases import backend_fixture, database_url_fixture  # noqa: F401
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401

pytestmark = pytest.mark.anyio

SECRET = b"test-server-secret-0123456789abcdef"
T0 = datetime(2030, 1, 1, 2, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


class FastTime:
    """A clock starting just before ``start`` that runs ``speed`` times faster than real
    time, and the matching sleep."""

    def __init__(self, start: datetime, speed: float = 1.0) -> None:
        self.start = start
        self.speed = speed
        self.origin = time.monotonic()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self.origin) * self.speed)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.speed)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        await prepare(database)
        yield database
    finally:
        await database.aclose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings({"INTERLOCK_DATA_DIR": str(tmp_path / "data")})


def config(**values: Any) -> JobConfig:
    """A job's config; values below the config file's bounds (short leases) are allowed."""
    return JobConfig.model_construct(**{**JobConfig().model_dump(), **values})


def make_job(name: str, work: Callable[[], Awaitable[Summary]], **values: Any) -> Job:
    async def run(_context: JobContext) -> Summary:
        return await work()

    return Job(name, "a test job", config(**values), run)


def runner_of(
    db: Database,
    settings: Settings,
    jobs: list[Job],
    instance: str,
    clock: Callable[[], datetime],
) -> JobRunner:
    context = JobContext(settings, db, MemoryState(), None, clock)
    return JobRunner(
        {job.name: job for job in jobs}, JobStore(db), context, instance=instance, clock=clock
    )


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> Summary:
        self.calls += 1
        await asyncio.sleep(0.05)  # long enough for the others to try meanwhile
        return {"calls": self.calls}


async def runs(db: Database, job: str | None = None) -> list[RunRecord]:
    return await JobStore(db).history(job, limit=1000)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# --- one instance per due time ---------------------------------------------------------------


async def test_each_due_time_runs_on_exactly_one_instance(db: Database, settings: Settings) -> None:
    counter = Counter()
    job = make_job("count", counter)
    runners = [runner_of(db, settings, [job], f"i{n}", Clock(T0)) for n in range(5)]
    results = await asyncio.gather(*(runner.run("count", T0) for runner in runners))
    assert sorted(result.outcome for result in results) == ["not_ours"] * 4 + ["ok"]
    assert counter.calls == 1
    [record] = await runs(db)
    assert (record.job, record.scheduled_at, record.outcome) == ("count", T0, "ok")
    assert record.summary == {"calls": 1}
    assert record.instance in {f"i{n}" for n in range(5)}
    # The same due time asked again, later: already done.
    again = await runners[0].run("count", T0)
    assert again.outcome == "not_ours"
    assert counter.calls == 1


async def test_two_schedulers_sharing_the_database_run_a_due_job_once(
    db: Database, settings: Settings
) -> None:
    counter = Counter()
    job = make_job("count", counter, schedule="0 2 * * *")
    clock = FastTime(T0 - timedelta(seconds=0.3))
    schedulers = [
        Scheduler(runner_of(db, settings, [job], name, clock), clock=clock, sleep=clock.sleep)
        for name in ("instance-a", "instance-b")
    ]
    for scheduler in schedulers:
        scheduler.start()
        assert scheduler.next_due == {"count": T0}
    try:

        async def finished() -> bool:
            return [r.outcome for r in await runs(db)] == ["ok"]

        await eventually(finished)
        await asyncio.sleep(0.3)  # the slower instance has had its try
    finally:
        for scheduler in schedulers:
            await scheduler.aclose()
    assert counter.calls == 1
    assert [(r.scheduled_at, r.outcome) for r in await runs(db)] == [(T0, "ok")]
    assert all(s.next_due == {"count": T0 + timedelta(days=1)} for s in schedulers)


async def test_a_busy_job_is_skipped_and_a_dead_holders_lease_expires(
    db: Database, settings: Settings
) -> None:
    store = JobStore(db)
    # Instance A takes the 02:00 run and dies: it never renews its lease nor finishes.
    claim = await store.claim("count", T0, instance="instance-a", now=T0, lease=300)
    assert claim.status == "claimed"
    counter = Counter()
    clock = Clock(T0 + timedelta(minutes=1))
    runner = runner_of(db, settings, [make_job("count", counter, lease=300)], "instance-b", clock)

    busy = await runner.run("count", T0 + timedelta(minutes=1))
    assert busy.outcome == "skipped"
    assert counter.calls == 0
    assert await store.lease_holder("count", clock()) == "instance-a"

    clock.advance(minutes=10)  # A's lease (5 minutes) has run out
    assert await store.lease_holder("count", clock()) is None
    taken = await runner.run("count", T0 + timedelta(minutes=11))
    assert taken.outcome == "ok"
    assert counter.calls == 1
    history = await runs(db, "count")
    assert [(r.instance, r.outcome) for r in history] == [
        ("instance-b", "ok"),
        ("instance-b", "skipped"),
        ("instance-a", "failed"),
    ]
    assert history[1].error == "the previous run is still going on instance-a"
    assert history[2].error is not None and history[2].error.startswith("abandoned")
    assert await store.lease_holder("count", clock()) is None  # released after the run
    # A comes back from the dead: its run is no longer its to record.
    assert not await store.finish(
        "count",
        claim.run_id or "",
        instance="instance-a",
        now=clock(),
        outcome="ok",
        summary=None,
        error=None,
    )
    assert (await runs(db, "count"))[2].outcome == "failed"


async def test_racing_for_an_expired_lease_gives_it_to_one(db: Database) -> None:
    store = JobStore(db)
    await store.claim("count", T0, instance="dead", now=T0, lease=60)
    later = T0 + timedelta(hours=1)
    claims = await asyncio.gather(
        *(
            store.claim(
                "count", later + timedelta(seconds=n), instance=f"i{n}", now=later, lease=60
            )
            for n in range(4)
        )
    )
    assert sorted(claim.status for claim in claims) == ["busy"] * 3 + ["claimed"]
    assert sum(claim.abandoned for claim in claims) == 1


async def test_a_running_instance_renews_its_lease(db: Database, settings: Settings) -> None:
    release = asyncio.Event()

    async def slow() -> Summary:
        await release.wait()
        return {}

    clock = FastTime(T0)
    runner = runner_of(db, settings, [make_job("slow", slow, lease=0.3)], "a", clock)
    running = asyncio.create_task(runner.run("slow", T0))
    await asyncio.sleep(0.6)  # twice the lease: alive only if renewed
    assert await JobStore(db).lease_holder("slow", clock()) == "a"
    other = runner_of(db, settings, [make_job("slow", slow, lease=0.3)], "b", clock)
    assert (await other.run("slow", T0 + timedelta(minutes=1))).outcome == "skipped"
    release.set()
    assert (await running).outcome == "ok"


# --- failures --------------------------------------------------------------------------------


async def test_a_failing_job_is_recorded_and_the_scheduler_goes_on(
    db: Database, settings: Settings
) -> None:
    async def broken() -> Summary:
        raise RuntimeError("the disk is on fire")

    counter = Counter()
    jobs = [
        make_job("broken", broken, schedule="* * * * *"),
        make_job("count", counter, schedule="* * * * *"),
    ]
    clock = FastTime(T0 - timedelta(seconds=1), speed=30.0)  # a minute in two seconds
    scheduler = Scheduler(runner_of(db, settings, jobs, "a", clock), clock=clock, sleep=clock.sleep)
    scheduler.start()
    try:

        async def twice_each() -> bool:
            history = await runs(db)
            failed = [r for r in history if r.job == "broken" and r.outcome == "failed"]
            return len(failed) >= 2 and counter.calls >= 2

        await eventually(twice_each)
    finally:
        await scheduler.aclose()
    history = await runs(db)
    broken = [r for r in history if r.job == "broken" and r.outcome != "running"]
    # On a slow machine a run may still be finishing when the next minute comes: skipped.
    assert {(r.outcome, r.error) for r in broken if r.outcome != "skipped"} == {
        ("failed", "RuntimeError: the disk is on fire")
    }
    assert {r.scheduled_at.second for r in history} == {0}  # due times are whole minutes
    assert any(r.job == "count" and r.outcome == "ok" for r in history)


async def test_a_job_past_its_timeout_is_cancelled_and_failed(
    db: Database, settings: Settings
) -> None:
    cancelled = asyncio.Event()

    async def stuck() -> Summary:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return {}

    runner = runner_of(db, settings, [make_job("stuck", stuck, timeout=0.2)], "a", FastTime(T0))
    result = await runner.run("stuck", T0)
    assert (result.outcome, result.error) == ("failed", "timed out after 0.2 s")
    assert cancelled.is_set()
    [record] = await runs(db)
    assert (record.outcome, record.error) == ("failed", "timed out after 0.2 s")
    assert await JobStore(db).lease_holder("stuck", datetime.now(UTC)) is None


async def test_a_run_that_loses_its_lease_is_stopped(db: Database, settings: Settings) -> None:
    async def forever() -> Summary:
        await asyncio.sleep(3600)
        return {}

    clock = FastTime(T0)
    runner = runner_of(db, settings, [make_job("long", forever, lease=0.3)], "a", clock)
    running = asyncio.create_task(runner.run("long", T0))

    async def leased() -> bool:
        return await JobStore(db).lease_holder("long", clock()) == "a"

    await eventually(leased)
    async with db.engine.begin() as conn:  # as if another instance took it over
        await conn.execute(update(JobLease).values(holder="thief", run_id="other"))
    result = await asyncio.wait_for(running, 5)
    assert result.outcome == "failed"
    assert result.error is not None and result.error.startswith("lease lost")


async def test_a_job_failing_half_way_keeps_what_it_did(db: Database, settings: Settings) -> None:
    async def half() -> Summary:
        raise JobFailed("step two: broke", {"one": {"deleted": 3}, "two": {"error": "broke"}})

    runner = runner_of(db, settings, [make_job("half", half)], "a", FastTime(T0))
    assert (await runner.run("half", T0)).outcome == "failed"
    [record] = await runs(db)
    assert record.summary == {"one": {"deleted": 3}, "two": {"error": "broke"}}
    assert record.error == "step two: broke"


async def test_shutting_down_cancels_a_running_job_and_records_it(
    db: Database, settings: Settings
) -> None:
    started = asyncio.Event()

    async def forever() -> Summary:
        started.set()
        await asyncio.sleep(3600)
        return {}

    clock = FastTime(T0 - timedelta(seconds=0.1))
    job = make_job("long", forever, schedule="0 2 * * *")
    scheduler = Scheduler(
        runner_of(db, settings, [job], "a", clock), clock=clock, sleep=clock.sleep
    )
    scheduler.start()
    await asyncio.wait_for(started.wait(), 10)
    await scheduler.aclose()
    [record] = await runs(db)
    assert (record.outcome, record.error) == ("failed", "cancelled: the gateway was shutting down")
    assert await JobStore(db).lease_holder("long", clock()) is None


async def test_a_disabled_job_is_not_scheduled(settings: Settings, db: Database) -> None:
    jobs = [make_job("off", Counter(), enabled=False), make_job("on", Counter())]
    scheduler = Scheduler(runner_of(db, settings, jobs, "a", Clock(T0)), clock=Clock(T0))
    scheduler.start()
    try:
        assert list(scheduler.next_due) == ["on"]
    finally:
        await scheduler.aclose()


# --- cleanup ---------------------------------------------------------------------------------

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def usage_row(request_id: str, created_at: datetime) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "created_at": created_at,
        "user_id": "u",
        "key_id": "k",
        "tier": "free",
        "model": "smart",
        "provider": "openai",
        "deployment": "d",
        "input_tokens": 1,
        "output_tokens": 1,
        "cached_tokens": 0,
        "cost": Decimal("0.001"),
        "latency_ms": 10,
        "ttft_ms": None,
        "status": 200,
        "error": None,
        "cache_hit": False,
        "attempts": 1,
        "streaming": False,
        "usage_source": "provider",
        "partial": False,
    }


async def make_keys(db: Database) -> dict[str, str]:
    """Keys in every state, by what they are; ids as values."""
    store = KeyStore(db, SECRET)
    user = await store.create_user("someone")
    ids = {}
    for name in (
        "active",
        "expires_later",
        "expired_recently",
        "expired_long_ago",
        "revoked_recently",
        "revoked_long_ago",
    ):
        row, _ = await store.create_key(user.id, name=name)
        ids[name] = row.id
    day = timedelta(days=1)
    changes = {
        "expires_later": {"expires_at": NOW + day},
        "expired_recently": {"expires_at": NOW - 10 * day},
        "expired_long_ago": {"expires_at": NOW - 40 * day},
        "revoked_recently": {"revoked_at": NOW - 10 * day},
        "revoked_long_ago": {"revoked_at": NOW - 40 * day, "expires_at": NOW + day},
    }
    async with db.engine.begin() as conn:
        for name, values in changes.items():
            await conn.execute(update(ApiKey).where(ApiKey.id == ids[name]).values(**values))
    # INTERLOCK_ADMIN_KEY's row, long revoked: the record of that revocation must stay.
    await store.ensure_admin_key("operator-admin-key-0123456789abcdef")
    async with db.engine.begin() as conn:
        await conn.execute(
            update(ApiKey)
            .where(ApiKey.short_id.startswith("env_"))
            .values(revoked_at=NOW - 400 * day)
        )
        ids["env_admin"] = (
            await conn.execute(select(ApiKey.id).where(ApiKey.short_id.startswith("env_")))
        ).scalar_one()
    return ids


async def key_names(db: Database, ids: dict[str, str]) -> set[str]:
    async with db.engine.connect() as conn:
        left = set((await conn.execute(select(ApiKey.id))).scalars())
    return {name for name, key_id in ids.items() if key_id in left}


async def usage_ids(db: Database) -> list[str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(select(UsageRow.request_id).order_by(UsageRow.request_id))
        return list(rows.scalars())


def context_of(db: Database, settings: Settings) -> JobContext:
    return JobContext(settings, db, MemoryState(), None, lambda: NOW)


async def test_cleanup_deletes_exactly_what_outlived_its_retention(
    db: Database, settings: Settings
) -> None:
    ids = await make_keys(db)
    await UsageStore(db).insert(
        [usage_row(f"r{days:03d}", NOW - timedelta(days=days)) for days in (1, 80, 89, 91, 400)]
    )
    store = JobStore(db)
    for days in (10, 100):
        claim = await store.claim(
            "other",
            NOW - timedelta(days=days),
            instance="a",
            now=NOW - timedelta(days=days),
            lease=60,
        )
        assert claim.run_id is not None
        await store.finish(
            "other",
            claim.run_id,
            instance="a",
            now=NOW - timedelta(days=days),
            outcome="ok",
            summary={},
            error=None,
        )

    config = CleanupJobConfig(key_retention_days=30, usage_retention_days=90, run_retention_days=30)
    summary = await cleanup(context_of(db, settings), config)

    assert await key_names(db, ids) == {
        "active",
        "expires_later",
        "expired_recently",
        "revoked_recently",
        "env_admin",
    }
    assert await usage_ids(db) == ["r001", "r080", "r089"]
    assert [r.scheduled_at for r in await runs(db, "other")] == [NOW - timedelta(days=10)]
    assert summary == {
        "keys": {"deleted": 2, "before": (NOW - timedelta(days=30)).isoformat()},
        "usage": {"deleted": 2, "before": (NOW - timedelta(days=90)).isoformat()},
        "conversations": {"deleted": 0, "kept": "forever (conversation_retention_days = 0)"},
        "job_runs": {"deleted": 1, "before": (NOW - timedelta(days=30)).isoformat()},
    }


async def test_cleanup_keeps_usage_by_default_and_keys_go_at_once_with_0_days(
    db: Database, settings: Settings
) -> None:
    ids = await make_keys(db)
    await UsageStore(db).insert([usage_row("old", NOW - timedelta(days=3000))])
    summary = await cleanup(context_of(db, settings), CleanupJobConfig(key_retention_days=0))
    assert await usage_ids(db) == ["old"]
    assert summary["usage"] == {"deleted": 0, "kept": "forever (usage_retention_days = 0)"}
    assert await key_names(db, ids) == {"active", "expires_later", "env_admin"}


async def test_cleanup_deletes_conversations_untouched_past_their_retention(
    db: Database, settings: Settings
) -> None:
    users = UserStore(db)
    ada, bob = await users.create("Ada"), await users.create("Bob")
    rows = [
        (ada.id, "recent", 5),
        (ada.id, "stale", 40),
        (bob.id, "stale", 41),  # the same chat id, another user's
        (bob.id, "fresh", 0),
    ]
    async with db.session() as session:
        for user_id, chat_id, days in rows:
            when = NOW - timedelta(days=days)
            session.add(
                Conversation(
                    user_id=user_id,
                    id=chat_id,
                    title=chat_id,
                    messages=[],
                    message_count=0,
                    size_bytes=2,
                    created_at=when,
                    updated_at=when,
                )
            )
        await session.commit()
    config = CleanupJobConfig(conversation_retention_days=30)
    summary = await cleanup(context_of(db, settings), config)
    assert summary["conversations"]["deleted"] == 2
    async with db.session() as session:
        left = (await session.execute(select(Conversation.user_id, Conversation.id))).all()
    assert sorted(left) == sorted([(ada.id, "recent"), (bob.id, "fresh")])
    later = NOW + timedelta(days=1)
    assert await retention.delete_conversations_before(db, later, batch=1) == 2


async def test_deleting_runs_in_batches(db: Database) -> None:
    await UsageStore(db).insert([usage_row(f"r{n}", NOW - timedelta(days=10)) for n in range(7)])
    deleted = await retention.delete_usage_before(db, NOW, batch=3)
    assert deleted == 7
    assert await usage_ids(db) == []


async def test_a_failing_cleanup_step_fails_the_run_but_not_the_other_steps(
    db: Database, settings: Settings
) -> None:
    ids = await make_keys(db)
    async with db.engine.begin() as conn:
        await conn.execute(text("DROP TABLE usage_records"))
    jobs = configured_jobs(
        settings.config.jobs.model_copy(
            update={"cleanup": CleanupJobConfig(usage_retention_days=1)}
        )
    )
    runner = JobRunner(
        jobs, JobStore(db), context_of(db, settings), instance="a", clock=lambda: NOW
    )
    result = await runner.run("cleanup", NOW, trigger="manual")
    assert result.outcome == "failed"
    assert result.error is not None and result.error.startswith("usage: ")
    [record] = await runs(db, "cleanup")
    assert record.outcome == "failed"
    assert record.summary is not None
    assert record.summary["keys"]["deleted"] == 2  # done before the usage step failed
    assert "error" in record.summary["usage"]
    assert record.summary["job_runs"]["deleted"] == 0  # and the step after it still ran
    assert "expired_long_ago" not in await key_names(db, ids)
