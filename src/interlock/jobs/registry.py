"""The built-in jobs: a name, its ``[jobs.NAME]`` table, and what it does.

A job is a ``Job``: an async function of a ``JobContext`` (what a job may use) and of its own
config table, returning a short JSON-able summary of what it did. Adding one takes its config
class in ``interlock.config_file`` (a ``JobConfig`` field of ``JobsConfig``), its function,
and one line in ``JOBS`` below.

A job reports a failure by raising: ``JobFailed`` to keep the summary of what it did before
failing, any other exception otherwise. The runner records either as a failed run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from interlock.config_lifecycle import JobConfig, JobsConfig

if TYPE_CHECKING:
    from interlock.settings import Settings
    from interlock.state import SharedState
    from interlock.store.database import Database
    from interlock.telemetry.ledger import UsageLedger

Summary = dict[str, Any]
C = TypeVar("C", bound=JobConfig)


class JobFailed(Exception):
    """A job that did part of its work: ``summary`` says what, the message what went wrong."""

    def __init__(self, message: str, summary: Summary) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a job may use. ``ledger`` is None where no ledger runs (say, `interlock jobs
    run` with the outbox switched off)."""

    settings: Settings
    database: Database
    state: SharedState
    ledger: UsageLedger | None
    now: Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class JobKind(Generic[C]):
    """One built-in job: its name (and ``[jobs.NAME]`` table), and what it does."""

    name: str
    description: str
    config_of: Callable[[JobsConfig], C]
    work: Callable[[JobContext, C], Awaitable[Summary]]

    def bind(self, jobs: JobsConfig) -> Job:
        config = self.config_of(jobs)
        work = self.work

        async def run(context: JobContext) -> Summary:
            return await work(context, config)

        return Job(self.name, self.description, config, run)


@dataclass(frozen=True, slots=True)
class Job:
    """A job with its configuration, ready to run."""

    name: str
    description: str
    config: JobConfig
    run: Callable[[JobContext], Awaitable[Summary]]


def describe_failure(exc: BaseException, database: Database) -> str:
    """One line saying what went wrong, for a run's record: a database error without its SQL
    or password, anything else as its type and the first line of its message."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        return database.describe_failure(exc)
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _kinds() -> tuple[JobKind[Any], ...]:
    from interlock.jobs.backup import backup
    from interlock.jobs.cleanup import cleanup
    from interlock.jobs.housekeeping import housekeeping

    return (
        JobKind(
            "cleanup",
            "delete expired and revoked keys, old usage rows and old job runs",
            lambda jobs: jobs.cleanup,
            cleanup,
        ),
        JobKind(
            "housekeeping",
            "drop expired shared-state entries; write orphaned usage outboxes",
            lambda jobs: jobs.housekeeping,
            housekeeping,
        ),
        JobKind(
            "backup",
            "back up the database (encrypted) to [backup]'s destination, then prune old backups",
            lambda jobs: jobs.backup,
            backup,
        ),
    )


def configured_jobs(jobs: JobsConfig) -> dict[str, Job]:
    """Every built-in job with its configuration, enabled or not, by name."""
    return {kind.name: kind.bind(jobs) for kind in _kinds()}
