"""``interlock jobs``: the scheduled jobs, their runs, and running one now.

``list`` and ``history`` read the database (they never migrate it). ``run`` takes the same
lease as the gateway's scheduler, so it never runs a job while an instance runs it, and can
be driven by an external scheduler (cron, a Kubernetes CronJob) with ``[jobs] scheduler =
false`` in the gateways.

Exit status of ``run``: 0 the job ran and succeeded, 1 it failed (or the database could not
be used), 2 a configuration problem or an unknown job, 3 it did not run here: another
instance is running it, or (with ``--scheduled``) already ran this due time.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from interlock.cli.runtime import EXIT_CONFIG, EXIT_FAILED, ConfigOption, fail, run_async
from interlock.cli.runtime import settings_or_exit as _settings

if TYPE_CHECKING:
    from interlock.jobs.registry import Job
    from interlock.jobs.runner import RunResult
    from interlock.settings import Settings
    from interlock.store.database import Database
    from interlock.store.jobs import RunRecord

app = typer.Typer(help="Scheduled jobs: list them, show their runs, run one now.")

EXIT_NOT_RUN = 3
T = TypeVar("T")


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


FormatOption = Annotated[OutputFormat, typer.Option("--format", help="Output format.")]


def _jobs(settings: Settings) -> dict[str, Job]:
    from interlock.jobs.registry import configured_jobs

    return configured_jobs(settings.config.jobs)


def _read(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    """Run ``work`` on the database if its schema is this version's; it is never migrated."""

    async def run() -> T:
        from interlock.store.database import database_for
        from interlock.store.migrate import current_revision, head_revision

        database = database_for(settings)
        try:
            revision = await current_revision(database)
            if revision is None:
                fail(["the database is empty: start the gateway or run `interlock db upgrade`"])
            if revision != head_revision():
                fail(
                    [
                        f"the database is at revision {revision}, not {head_revision()}: "
                        "run `interlock db upgrade` (or start the gateway)"
                    ]
                )
            return await work(database)
        finally:
            await database.aclose()

    return run_async(run)


def _time(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _took(record: RunRecord) -> str:
    seconds = record.seconds
    return "" if seconds is None else f"{seconds:.2f} s"


def _console() -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200, highlight=False)


def _record_json(record: RunRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "job": record.job,
        "scheduled_at": record.scheduled_at.isoformat(),
        "trigger": record.trigger,
        "instance": record.instance,
        "started_at": record.started_at.isoformat(),
        "finished_at": None if record.finished_at is None else record.finished_at.isoformat(),
        "outcome": record.outcome,
        "summary": record.summary,
        "error": record.error,
    }


def _brief(summary: dict[str, Any], prefix: str = "") -> list[str]:
    """A summary as ``step.key=value`` items, for a table cell."""
    items = []
    for key, value in summary.items():
        if isinstance(value, dict):
            items += _brief(value, f"{prefix}{key}.")
        elif key != "before":  # the cut-off time repeats the run's time: noise in a table
            items.append(f"{prefix}{key}={value}")
    return items


def _print_json(value: object) -> None:
    import msgspec

    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


@app.command("list")
def list_jobs(output: FormatOption = OutputFormat.table, config: ConfigOption = None) -> None:
    """Each job: its schedule, next run, last run and its outcome."""
    from interlock.jobs.cron import next_time
    from interlock.store.jobs import JobStore

    settings = _settings(config_path=config)
    jobs = _jobs(settings)
    now = datetime.now(UTC)

    async def read(database: Database) -> tuple[dict[str, RunRecord], dict[str, str | None]]:
        store = JobStore(database)
        holders = {name: await store.lease_holder(name, now) for name in jobs}
        return await store.last_runs(list(jobs)), holders

    last, holders = _read(settings, read)
    scheduler = settings.config.jobs.scheduler
    rows = []
    for name, job in jobs.items():
        due = next_time(job.config.schedule, now) if job.config.enabled else None
        rows.append((name, job, due, last.get(name), holders[name]))
    if output is OutputFormat.json:
        _print_json(
            [
                {
                    "job": name,
                    "description": job.description,
                    "enabled": job.config.enabled,
                    "schedule": job.config.schedule,
                    "next_run": None if due is None or not scheduler else due.isoformat(),
                    "running_on": holder,
                    "last_run": None if record is None else _record_json(record),
                }
                for name, job, due, record, holder in rows
            ]
        )
        return
    from rich.table import Table

    title = "Scheduled jobs (times in UTC)"
    if not scheduler:
        title += ": the gateway's scheduler is off ([jobs] scheduler = false)"
    table = Table(
        "job", "schedule", "next run", "last run", "outcome", "took", "running on", title=title
    )
    for name, job, due, record, holder in rows:
        if not job.config.enabled:
            next_run = "disabled"
        elif not scheduler:
            next_run = f"({_time(due)})"
        else:
            next_run = _time(due)
        table.add_row(
            name,
            job.config.schedule,
            next_run,
            "" if record is None else _time(record.started_at),
            "" if record is None else record.outcome,
            "" if record is None else _took(record),
            holder or "",
        )
    _console().print(table)


@app.command("history")
def history(
    name: Annotated[str | None, typer.Argument(help="Only this job.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Runs to show.")] = 20,
    output: FormatOption = OutputFormat.table,
    config: ConfigOption = None,
) -> None:
    """The latest runs, newest first: when, where, how long, outcome, summary or error."""
    from interlock.store.jobs import JobStore

    settings = _settings(config_path=config)
    if name is not None and name not in _jobs(settings):
        fail([f"unknown job {name!r} (the jobs are: {', '.join(_jobs(settings))})"])

    async def read(database: Database) -> list[RunRecord]:
        return await JobStore(database).history(name, limit=limit)

    records = _read(settings, read)
    if output is OutputFormat.json:
        _print_json([_record_json(record) for record in records])
        return
    if not records:
        _console().print(f"No runs of {name} yet." if name else "No job runs yet.")
        return
    from rich.table import Table

    table = Table("job", "due", "trigger", "started", "took", "outcome", "instance", "details")
    for record in records:
        details = record.error or ", ".join(_brief(record.summary or {}))
        table.add_row(
            record.job,
            _time(record.scheduled_at),
            record.trigger,
            _time(record.started_at),
            _took(record),
            record.outcome,
            record.instance,
            details,
        )
    _console().print(table)


@app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="The job to run.")],
    scheduled: Annotated[
        bool,
        typer.Option(
            "--scheduled",
            help="Run it as its latest due time (by its schedule), at most once per due time "
            "whichever instance or scheduler asks: for an external scheduler.",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run one job now, taking the same lease as the gateway's scheduler."""
    from interlock.telemetry.logging import configure_logging

    settings = _settings(config_path=config)
    jobs = _jobs(settings)
    if name not in jobs:
        fail([f"unknown job {name!r} (the jobs are: {', '.join(jobs)})"], EXIT_CONFIG)
    configure_logging(settings.log_level, settings.log_format)  # on stderr: stdout is JSON

    async def work() -> RunResult:
        from interlock.jobs.cron import last_time
        from interlock.jobs.registry import JobContext
        from interlock.jobs.runner import JobRunner, instance_id, utc_now
        from interlock.state import build_state
        from interlock.store.database import database_for
        from interlock.store.jobs import JobStore
        from interlock.store.migrate import prepare

        database = database_for(settings)
        state = build_state(settings.redis_url)
        try:
            await prepare(database)
            context = JobContext(settings, database, state, None, utc_now)
            runner = JobRunner(jobs, JobStore(database), context, instance=instance_id())
            now = utc_now()
            if scheduled:
                return await runner.run(name, last_time(jobs[name].config.schedule, now))
            return await runner.run(name, now, trigger="manual")
        finally:
            await state.aclose()
            await database.aclose()

    result = run_async(work)
    if result.summary is not None:
        _print_json(result.summary)
    if result.outcome == "ok":
        sys.stderr.write(f"{name}: ok\n")
        return
    if result.outcome == "failed":
        fail([f"{name} failed: {result.error}"], EXIT_FAILED)
    if result.outcome == "not_ours":
        fail(
            [f"{name}: the run due at {_time(result.scheduled_at)} UTC was already taken"],
            EXIT_NOT_RUN,
        )
    fail([f"{name} skipped: {result.error}"], EXIT_NOT_RUN)
