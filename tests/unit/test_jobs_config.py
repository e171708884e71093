"""Job schedules and the ``[jobs]`` tables: validated with one line per problem."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from interlock.config_file import FileConfig, load_file_config
from interlock.jobs.cron import CronError, check_schedule, last_time, next_time
from interlock.jobs.registry import configured_jobs
from interlock.settings import ConfigError


@pytest.mark.parametrize(
    ("expression", "normalised"),
    [
        ("0 2 * * *", "0 2 * * *"),
        ("  */15   * * * MON-FRI ", "*/15 * * * MON-FRI"),
        ("@Daily", "@daily"),
        ("0 0 29 2 *", "0 0 29 2 *"),  # leap days do come
    ],
)
def test_good_schedules_are_normalised(expression: str, normalised: str) -> None:
    assert check_schedule(expression) == normalised


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty schedule: expected five fields"),
        ("* * *", "'* * *' has 3 fields: expected five (minute hour day-of-month month"),
        ("0 2 * * * 5", "'0 2 * * * 5' has 6 fields"),
        ("61 2 * * *", "'61 2 * * *' is not a valid cron expression: a field is out of range"),
        ("0 2 * * NOPE", "'0 2 * * NOPE' is not a valid cron expression"),
        ("*/0 * * * *", "'*/0 * * * *' is not a valid cron expression: step '0'"),
        ("0 0 30 2 *", "'0 0 30 2 *' never comes (no such date)"),
        ("@often", "unknown schedule '@often': expected one of @yearly"),
    ],
)
def test_bad_schedules_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(CronError) as caught:
        check_schedule(expression)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_next_and_last_times_are_in_utc() -> None:
    two = datetime(2030, 1, 1, 2, 0, tzinfo=UTC)
    assert next_time("0 2 * * *", two) == datetime(2030, 1, 2, 2, 0, tzinfo=UTC)
    assert last_time("0 2 * * *", two) == two  # a time on the schedule is its own last time
    before = datetime(2030, 1, 1, 1, 59, 59, 999_999, tzinfo=UTC)
    assert last_time("0 2 * * *", before) == datetime(2029, 12, 31, 2, 0, tzinfo=UTC)
    assert next_time("0 2 * * *", before) == two


def test_the_jobs_exist_without_configuration() -> None:
    jobs = FileConfig().jobs
    assert jobs.scheduler is True
    assert (jobs.cleanup.schedule, jobs.cleanup.enabled) == ("0 2 * * *", True)
    assert (jobs.cleanup.key_retention_days, jobs.cleanup.usage_retention_days) == (30, 0)
    assert jobs.housekeeping.schedule == "*/10 * * * *"
    assert (jobs.backup.schedule, jobs.backup.enabled, jobs.backup.prune) == (
        "30 3 * * *",
        True,
        True,
    )
    assert list(configured_jobs(jobs)) == ["cleanup", "housekeeping", "backup"]


def test_jobs_are_configured_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "interlock.toml"
    path.write_text(
        "[jobs]\nscheduler = false\n"
        '[jobs.cleanup]\nschedule = "30 3 * * 0"\nusage_retention_days = 400\n'
        "[jobs.housekeeping]\nenabled = false\n"
    )
    jobs = load_file_config(path).jobs
    assert jobs.scheduler is False
    assert (jobs.cleanup.schedule, jobs.cleanup.usage_retention_days) == ("30 3 * * 0", 400)
    assert jobs.housekeeping.enabled is False


def test_every_problem_of_the_jobs_tables_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "interlock.toml"
    path.write_text(
        '[jobs.cleanup]\nschedule = "61 2 * * *"\nkey_retention_days = -1\n'
        'usage_retention_days = 1.5\nlease = 1\n[jobs.housekeeping]\nschedule = "* *"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_file_config(path)
    assert caught.value.problems == [
        "interlock.toml: jobs.cleanup.schedule: '61 2 * * *' is not a valid cron expression: "
        "a field is out of range",
        "interlock.toml: jobs.cleanup.lease: Input should be greater than or equal to 10",
        "interlock.toml: jobs.cleanup.key_retention_days: Input should be greater than or "
        "equal to 0",
        "interlock.toml: jobs.cleanup.usage_retention_days: Input should be a valid integer",
        "interlock.toml: jobs.housekeeping.schedule: '* *' has 2 fields: expected five "
        "(minute hour day-of-month month day-of-week), for example '0 2 * * *' for 02:00 UTC "
        "every day",
    ]


def test_an_unknown_job_is_named(tmp_path: Path) -> None:
    path = tmp_path / "interlock.toml"
    path.write_text('[jobs.backups]\nschedule = "0 3 * * *"\n')  # the job is `backup`
    with pytest.raises(ConfigError) as caught:
        load_file_config(path)
    assert caught.value.problems == [
        "interlock.toml: jobs: unknown job 'backups' (the jobs are: cleanup, housekeeping, backup)"
    ]
