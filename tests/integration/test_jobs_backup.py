"""The ``backup`` job on SQLite and a real PostgreSQL: run by ``interlock jobs run backup`` and
by the scheduler, it writes a backup that verifies, prunes by ``[backup]``'s retention, and
is recorded like every job."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from interlock.backup.service import list_backups, verify_backup
from interlock.jobs.registry import JobContext, configured_jobs
from interlock.jobs.runner import JobRunner
from interlock.jobs.scheduler import Scheduler
from interlock.settings import load_settings
from interlock.state import MemoryState
from interlock.store.database import database_for
from interlock.store.jobs import JobStore
from interlock.store.migrate import prepare
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401
from tests.support.cli import cli, command_env, ok


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return command_env(
        request,
        tmp_path,
        f'[backup]\ndirectory = "{tmp_path / "backups"}"\nkeep_last = 1\n'
        '[jobs.backup]\nschedule = "15 4 * * *"\n',
    )


@pytest.fixture(autouse=True)
def default_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def test_jobs_run_backup_backs_up_prunes_and_is_recorded(env: dict[str, str]) -> None:
    ok(env, "users", "create", "Ada", "--email", "ada@example.com")
    first = json.loads(ok(env, "jobs", "run", "backup"))
    assert first["backup"].startswith("interlock-")
    assert first["database"] == ("postgresql" if env["DATABASE_URL"] else "sqlite")
    assert first["archive_bytes"] > 0 and first["rows"] >= 1
    assert (first["pruned"], first["kept"]) == ([], 1)
    time.sleep(1.1)  # backup names sort by the second
    second = json.loads(ok(env, "jobs", "run", "backup"))
    assert second["pruned"] == [first["backup"]]  # keep_last = 1
    assert second["kept"] == 1

    settings = load_settings(env)
    [entry] = asyncio.run(list_backups(settings))
    assert entry.name == second["backup"]
    verified = asyncio.run(verify_backup(settings, "latest"))
    assert verified.manifest.name == second["backup"]
    assert verified.manifest.row_counts["users"] >= 1

    runs = json.loads(ok(env, "jobs", "history", "backup", "--format", "json"))
    assert [(run["outcome"], run["summary"]) for run in runs] == [("ok", second), ("ok", first)]
    listed = {job["job"]: job for job in json.loads(ok(env, "jobs", "list", "--format", "json"))}
    assert listed["backup"]["schedule"] == "15 4 * * *"


def test_a_backup_that_cannot_be_written_is_a_failed_run(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "backups").write_text("a file where the directory should be")
    result = cli(env, "jobs", "run", "backup")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [run] = json.loads(ok(env, "jobs", "history", "backup", "--format", "json"))
    assert run["outcome"] == "failed"
    assert run["error"].startswith("the backup failed: cannot create ")


def test_the_scheduler_runs_the_backup_at_its_time(env: dict[str, str]) -> None:
    settings = load_settings(env)
    due = datetime(2031, 5, 1, 4, 15, tzinfo=UTC)
    start = due - timedelta(seconds=0.5)
    origin = 0.0

    def clock() -> datetime:
        return start + timedelta(seconds=time.monotonic() - origin)

    async def run() -> None:
        nonlocal origin
        database = database_for(settings)
        await prepare(database)
        origin = time.monotonic()  # the clock starts half a second before the due time
        try:
            jobs = configured_jobs(settings.config.jobs)
            context = JobContext(settings, database, MemoryState(), None, clock)
            runner = JobRunner(jobs, JobStore(database), context, instance="a", clock=clock)
            scheduler = Scheduler(runner, clock=clock)
            scheduler.start()
            assert scheduler.next_due["backup"] == due
            try:
                deadline = time.monotonic() + 60
                while True:
                    runs = await JobStore(database).history("backup", limit=10)
                    if runs and runs[0].outcome != "running":
                        break
                    assert time.monotonic() < deadline, "the backup did not run"
                    await asyncio.sleep(0.05)
            finally:
                await scheduler.aclose()
            [record] = runs
            assert (record.outcome, record.trigger, record.scheduled_at) == ("ok", "schedule", due)
            assert record.summary is not None
            [entry] = await list_backups(settings)
            assert entry.name == record.summary["backup"]
            assert entry.created_at >= due
        finally:
            await database.aclose()

    asyncio.run(run())
