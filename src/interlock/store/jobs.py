"""``JobStore``: the leases and the run records of scheduled jobs.

Two guarantees, from the database alone (SQLite or PostgreSQL, no Redis needed):

- **each due time runs once**: a run starts by inserting its row, and (job, scheduled_at) is
  unique: ``INSERT … ON CONFLICT DO NOTHING`` lets exactly one instance have it;
- **a job runs on one instance at a time**: the run must then take the job's lease, a row
  changed only by a conditional ``UPDATE`` (free, or expired, and still as we read it). A
  holder renews it while running; one that dies stops renewing, its lease expires, and the
  next due time goes to another instance, which marks the dead run as failed.

Times come from the caller (each instance's clock): instances must agree on the time to
well within a lease (NTP does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from interlock.store.database import Database, begin_exclusive
from interlock.store.models import JobLease, JobOutcome, JobRun, JobTrigger, new_id

MAX_ERROR = 1000
_CLAIM_ATTEMPTS = 3
# Any fixed 64-bit number, the same in every instance: "iljobles".
LEASE_LOCK_ID = 0x696C6A6F626C6573


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One row of ``job_runs``, as plain values."""

    id: str
    job: str
    scheduled_at: datetime
    trigger: JobTrigger
    instance: str
    started_at: datetime
    finished_at: datetime | None
    outcome: JobOutcome
    summary: dict[str, Any] | None
    error: str | None

    @property
    def seconds(self) -> float | None:
        """How long the run took; None while it runs."""
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(frozen=True, slots=True)
class Claim:
    """What ``JobStore.claim`` decided.

    ``claimed``: the run is ours to do (``run_id``). ``duplicate``: another instance has this
    due time already; nothing was recorded. ``busy``: the job's lease is held by a live run
    (``holder``), so this one was recorded as skipped (``run_id``).
    """

    status: Literal["claimed", "duplicate", "busy"]
    run_id: str | None = None
    holder: str | None = None
    abandoned: int = 0  # earlier runs found dead (lease expired) and marked failed


_COLUMNS = (
    JobRun.id,
    JobRun.job,
    JobRun.scheduled_at,
    JobRun.trigger,
    JobRun.instance,
    JobRun.started_at,
    JobRun.finished_at,
    JobRun.outcome,
    JobRun.summary,
    JobRun.error,
)


def _insert(conn: AsyncConnection, table: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql_insert(table)
    return sqlite_insert(table)


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return result.rowcount


def _short(error: str | None) -> str | None:
    if error is None:
        return None
    return error if len(error) <= MAX_ERROR else error[: MAX_ERROR - 1] + "…"


class JobStore:
    """The job tables of one database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def claim(
        self,
        job: str,
        scheduled_at: datetime,
        *,
        instance: str,
        now: datetime,
        lease: float,
        trigger: JobTrigger = "schedule",
    ) -> Claim:
        """Record the run of ``job`` due at ``scheduled_at`` and take the job's lease for it.

        See ``Claim`` for the outcomes. Taking over an expired lease marks as failed every
        run of the job still recorded as running since more than ``lease`` seconds (its
        instance died before finishing).
        """
        run_id = new_id()
        async with self._db.engine.begin() as conn:
            statement = (
                _insert(conn, JobRun)
                .values(
                    id=run_id,
                    job=job,
                    scheduled_at=scheduled_at,
                    trigger=trigger,
                    instance=instance,
                    started_at=now,
                    outcome="running",
                )
                .on_conflict_do_nothing(index_elements=["job", "scheduled_at"])
                .returning(JobRun.id)
            )
            if (await conn.execute(statement)).first() is None:
                return Claim("duplicate")
        holder = await self._take_lease(job, run_id, instance, now, lease)
        async with self._db.engine.begin() as conn:
            if holder is not None:
                await conn.execute(
                    update(JobRun)
                    .where(JobRun.id == run_id, JobRun.outcome == "running")
                    .values(
                        outcome="skipped",
                        finished_at=now,
                        error=_short(f"the previous run is still going on {holder}"),
                    )
                )
                return Claim("busy", run_id, holder)
            abandoned = await conn.execute(
                update(JobRun)
                .where(
                    JobRun.job == job,
                    JobRun.outcome == "running",
                    JobRun.id != run_id,
                    JobRun.started_at <= now - timedelta(seconds=lease),
                )
                .values(
                    outcome="failed",
                    finished_at=now,
                    error="abandoned: its instance stopped renewing the lease before the run "
                    "finished (it died, or lost the database)",
                )
            )
        return Claim("claimed", run_id, abandoned=_rowcount(abandoned))

    async def _take_lease(
        self, job: str, run_id: str, instance: str, now: datetime, lease: float
    ) -> str | None:
        """Take the job's lease for ``run_id``; None if taken, else the live holder."""
        expires = now + timedelta(seconds=lease)
        for _ in range(_CLAIM_ATTEMPTS):
            async with self._db.engine.begin() as conn:
                # Read, then write: on SQLite a plain transaction could not upgrade its read
                # to a write once another instance has written ("database is locked").
                await begin_exclusive(conn, LEASE_LOCK_ID)
                row = (
                    await conn.execute(
                        select(JobLease.holder, JobLease.run_id, JobLease.expires_at).where(
                            JobLease.job == job
                        )
                    )
                ).first()
                if row is None:
                    inserted = await conn.execute(
                        _insert(conn, JobLease)
                        .values(job=job, holder=instance, run_id=run_id, expires_at=expires)
                        .on_conflict_do_nothing(index_elements=["job"])
                        .returning(JobLease.job)
                    )
                    if inserted.first() is not None:
                        return None
                    continue  # another instance created it meanwhile: read it again
                holder, previous_run, expires_at = row
                if holder is not None and expires_at is not None and expires_at > now:
                    return str(holder)
                # Free or expired, and still as read (same last run): ours. A concurrent
                # taker changes run_id, so only one of two racing updates matches.
                taken = await conn.execute(
                    update(JobLease)
                    .where(JobLease.job == job, JobLease.run_id == previous_run)
                    .values(holder=instance, run_id=run_id, expires_at=expires)
                )
                if _rowcount(taken) == 1:
                    return None
        return "another instance"  # lost every race: someone else is taking it right now

    async def renew(
        self, job: str, run_id: str, *, instance: str, now: datetime, lease: float
    ) -> bool:
        """Extend the lease of our running ``run_id``; False if it is no longer ours."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(JobLease)
                .where(JobLease.job == job, JobLease.run_id == run_id, JobLease.holder == instance)
                .values(expires_at=now + timedelta(seconds=lease))
            )
        return _rowcount(result) == 1

    async def finish(
        self,
        job: str,
        run_id: str,
        *,
        instance: str,
        now: datetime,
        outcome: JobOutcome,
        summary: dict[str, Any] | None,
        error: str | None,
    ) -> bool:
        """Record how ``run_id`` ended and free the lease, in one transaction.

        False if the run was no longer ours to record (another instance took the lease over
        and marked it abandoned).
        """
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(JobRun)
                .where(JobRun.id == run_id, JobRun.outcome == "running")
                .values(outcome=outcome, finished_at=now, summary=summary, error=_short(error))
            )
            await conn.execute(
                update(JobLease)
                .where(JobLease.job == job, JobLease.run_id == run_id, JobLease.holder == instance)
                .values(holder=None, expires_at=None)
            )
        return _rowcount(result) == 1

    async def history(self, job: str | None = None, *, limit: int = 50) -> list[RunRecord]:
        """The latest runs (of ``job``, or of every job), newest first."""
        query = select(*_COLUMNS).order_by(JobRun.started_at.desc(), JobRun.id).limit(limit)
        if job is not None:
            query = query.where(JobRun.job == job)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [RunRecord(*row) for row in rows]

    async def last_runs(self, jobs: Sequence[str]) -> dict[str, RunRecord]:
        """The latest run of each of ``jobs`` that has one."""
        found: dict[str, RunRecord] = {}
        async with self._db.engine.connect() as conn:
            for job in jobs:
                row = (
                    await conn.execute(
                        select(*_COLUMNS)
                        .where(JobRun.job == job)
                        .order_by(JobRun.started_at.desc(), JobRun.id)
                        .limit(1)
                    )
                ).first()
                if row is not None:
                    found[job] = RunRecord(*row)
        return found

    async def lease_holder(self, job: str, now: datetime) -> str | None:
        """The instance holding ``job``'s live lease, if any."""
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(JobLease.holder, JobLease.expires_at).where(JobLease.job == job)
                )
            ).first()
        if row is None or row[0] is None or row[1] is None or row[1] <= now:
            return None
        return str(row[0])

    async def delete_finished_before(self, before: datetime) -> int:
        """Delete the records of runs that finished before ``before``; how many."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                delete(JobRun).where(JobRun.outcome != "running", JobRun.finished_at < before)
            )
        return _rowcount(result)
