"""``interlock jobs list / history / run`` on SQLite and a real PostgreSQL: output and exit
codes, and the same lease as the gateway's scheduler."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import text

from interlock.store.database import Database
from interlock.store.jobs import JobStore
from interlock.store.migrate import head_revision
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401
from tests.support.cli import cli, failed, ok
from tests.support.gateway import SECRET


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    values = {
        "INTERLOCK_DATA_DIR": str(tmp_path / "data"),
        "INTERLOCK_SECRET": SECRET,
        "INTERLOCK_CONFIG": str(tmp_path / "interlock.toml"),
        "DATABASE_URL": "",
    }
    (tmp_path / "interlock.toml").write_text(
        '[models.local]\ndeployments = [{ provider = "local" }]\n'
        '[jobs.cleanup]\nschedule = "30 3 * * *"\nusage_retention_days = 30\n'
    )
    if request.param == "postgresql":
        values["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return values


@pytest.fixture(autouse=True)
def default_logging() -> Iterator[None]:
    """``jobs run`` configures logging for its process: give the next tests the default."""
    yield
    structlog.reset_defaults()


def database_of(env: dict[str, str]) -> Database:
    url = env["DATABASE_URL"] or f"sqlite+aiosqlite:///{env['INTERLOCK_DATA_DIR']}/interlock.db"
    return Database(url.replace("postgresql://", "postgresql+asyncpg://", 1))


def as_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(ok(env, *args, "--format", "json"))


def test_jobs_run_records_and_lists_the_run(env: dict[str, str]) -> None:
    assert failed(env, 2, "jobs", "list") == (
        "error: the database is empty: start the gateway or run `interlock db upgrade`"
    )
    summary = json.loads(ok(env, "jobs", "run", "cleanup"))
    assert summary["keys"]["deleted"] == 0
    assert summary["usage"]["deleted"] == 0
    assert "before" in summary["usage"]  # usage_retention_days = 30 from the file

    listed = {job["job"]: job for job in as_json(env, "jobs", "list")}
    assert set(listed) == {"cleanup", "housekeeping", "backup"}
    assert listed["cleanup"]["schedule"] == "30 3 * * *"
    assert listed["cleanup"]["next_run"].endswith("T03:30:00+00:00")
    assert listed["cleanup"]["last_run"]["outcome"] == "ok"
    assert listed["cleanup"]["last_run"]["trigger"] == "manual"
    assert listed["housekeeping"]["last_run"] is None

    table = ok(env, "jobs", "list")
    assert "cleanup" in table and "30 3 * * *" in table and "ok" in table

    [run] = as_json(env, "jobs", "history", "cleanup")
    assert (run["job"], run["outcome"], run["summary"]) == ("cleanup", "ok", summary)
    assert "keys.deleted=0" in ok(env, "jobs", "history")
    assert as_json(env, "jobs", "history", "housekeeping") == []
    assert "No runs of housekeeping yet." in ok(env, "jobs", "history", "housekeeping")


def test_a_scheduled_run_happens_once_per_due_time(env: dict[str, str]) -> None:
    # A yearly schedule: two runs a second apart share their due time (the default, every ten
    # minutes, would let them straddle a boundary and both run, rightly).
    with Path(env["INTERLOCK_CONFIG"]).open("a") as config:
        config.write('[jobs.housekeeping]\nschedule = "0 0 1 1 *"\n')
    json.loads(ok(env, "jobs", "run", "housekeeping", "--scheduled"))
    line = failed(env, 3, "jobs", "run", "housekeeping", "--scheduled")
    assert line.startswith("error: housekeeping: the run due at ")
    assert line.endswith(" UTC was already taken")
    [run] = as_json(env, "jobs", "history")
    assert run["trigger"] == "schedule"
    due = datetime.fromisoformat(run["scheduled_at"])
    assert (due.month, due.day, due.hour, due.minute) == (1, 1, 0, 0)
    assert due <= datetime.now(UTC) < due.replace(year=due.year + 1)


def test_a_job_running_elsewhere_is_not_run_again(env: dict[str, str]) -> None:
    ok(env, "db", "upgrade")

    async def hold_lease() -> None:
        database = database_of(env)
        try:
            now = datetime.now(UTC)
            claim = await JobStore(database).claim(
                "cleanup", now - timedelta(hours=1), instance="other-host/1", now=now, lease=600
            )
            assert claim.status == "claimed"
        finally:
            await database.aclose()

    asyncio.run(hold_lease())
    assert failed(env, 3, "jobs", "run", "cleanup") == (
        "error: cleanup skipped: running on other-host/1"
    )
    assert "other-host/1" in ok(env, "jobs", "list")
    outcomes = [run["outcome"] for run in as_json(env, "jobs", "history", "cleanup")]
    assert outcomes == ["skipped", "running"]


def test_a_failed_run_exits_with_1_and_keeps_its_summary(env: dict[str, str]) -> None:
    ok(env, "db", "upgrade")

    async def break_usage() -> None:
        database = database_of(env)
        try:
            async with database.engine.begin() as conn:
                await conn.execute(text("DROP TABLE usage_records"))
        finally:
            await database.aclose()

    asyncio.run(break_usage())
    result = cli(env, "jobs", "run", "cleanup")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["keys"]["deleted"] == 0
    line = result.stderr.splitlines()[-1]
    assert line.startswith("error: cleanup failed: usage: cannot use the database at ")
    assert "usage_records" in line
    [run] = as_json(env, "jobs", "history")
    assert run["outcome"] == "failed"
    assert run["error"] == line.removeprefix("error: cleanup failed: ")
    assert "\n" not in run["error"]


def test_unknown_jobs_and_old_schemas_are_one_line(env: dict[str, str]) -> None:
    assert failed(env, 2, "jobs", "run", "backups") == (
        "error: unknown job 'backups' (the jobs are: cleanup, housekeeping, backup)"
    )
    assert failed(env, 2, "jobs", "history", "backups").startswith("error: unknown job 'backups'")
    ok(env, "db", "upgrade")

    async def downgrade_stamp() -> None:
        database = database_of(env)
        try:
            async with database.engine.begin() as conn:
                await conn.execute(text("UPDATE alembic_version SET version_num = '0003_identity'"))
        finally:
            await database.aclose()

    asyncio.run(downgrade_stamp())
    assert failed(env, 2, "jobs", "history") == (
        f"error: the database is at revision 0003_identity, not {head_revision()}: run "
        "`interlock db upgrade` (or start the gateway)"
    )


def test_bad_job_configuration_exits_with_2(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "interlock.toml").write_text('[jobs.cleanup]\nschedule = "0 2 * *"\n')
    line = failed(env, 2, "jobs", "list")
    assert line.startswith("error: interlock.toml: jobs.cleanup.schedule: '0 2 * *' has 4 fields")
