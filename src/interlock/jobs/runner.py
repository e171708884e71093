"""``JobRunner``: run one job once, on one instance, and record how it went.

A run: claim it in the database (``JobStore.claim``: its due time once, its job's lease),
run the job under its ``timeout`` while renewing the lease every third of ``lease``, then
record the outcome, the job's summary and the error, and free the lease. A job that raises
is recorded as failed; so is one that times out, loses its lease (another instance took it
over: this one was silent too long) or is cancelled by a shutdown. The runner itself raises
only when the database cannot be used to claim or record the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog

from interlock.jobs.registry import Job, JobContext, JobFailed, Summary, describe_failure
from interlock.store.jobs import JobStore
from interlock.store.models import JobOutcome, JobTrigger

log = structlog.get_logger("interlock.jobs")


def instance_id() -> str:
    """This process, as run records name it: host, process id and a random tag."""
    return f"{socket.gethostname()[:120]}/{os.getpid()}/{secrets.token_hex(3)}"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RunResult:
    """How one attempt to run a job ended.

    ``outcome`` is the recorded one; ``not_ours`` when another instance had this due time
    already (nothing recorded here). ``run_id`` is None only then.
    """

    job: str
    scheduled_at: datetime
    outcome: JobOutcome | Literal["not_ours"]
    run_id: str | None
    summary: Summary | None = None
    error: str | None = None


class _LeaseLost(Exception):
    pass


class JobRunner:
    """Runs the configured jobs for one instance."""

    def __init__(
        self,
        jobs: Mapping[str, Job],
        store: JobStore,
        context: JobContext,
        *,
        instance: str,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.jobs = jobs
        self.instance = instance
        self._store = store
        self._context = context
        self._clock = clock

    async def run(
        self, name: str, scheduled_at: datetime, *, trigger: JobTrigger = "schedule"
    ) -> RunResult:
        """Run job ``name`` for its due time ``scheduled_at`` if no instance has it yet."""
        job = self.jobs[name]
        lease = job.config.lease
        claim = await self._store.claim(
            name,
            scheduled_at,
            instance=self.instance,
            now=self._clock(),
            lease=lease,
            trigger=trigger,
        )
        if claim.status == "duplicate":
            log.debug("job_taken_elsewhere", job=name, scheduled_at=scheduled_at.isoformat())
            return RunResult(name, scheduled_at, "not_ours", None)
        assert claim.run_id is not None
        if claim.status == "busy":
            log.warning("job_skipped", job=name, reason="still running", holder=claim.holder)
            return RunResult(
                name, scheduled_at, "skipped", claim.run_id, error=f"running on {claim.holder}"
            )
        if claim.abandoned:
            log.warning("job_runs_abandoned", job=name, runs=claim.abandoned)
        log.info("job_started", job=name, run_id=claim.run_id, trigger=trigger)
        outcome: JobOutcome = "failed"
        summary: Summary | None = None
        error: str | None = None
        try:
            summary = await self._execute(job, claim.run_id)
            outcome = "ok"
        except JobFailed as exc:
            summary, error = exc.summary, str(exc)
        except TimeoutError:
            error = f"timed out after {job.config.timeout:g} s"
        except _LeaseLost:
            error = "lease lost: another instance took the job over, this one was cancelled"
        except asyncio.CancelledError:
            error = "cancelled: the gateway was shutting down"
            await self._finish(job, claim.run_id, outcome, summary, error)
            raise
        except Exception as exc:
            log.exception("job_crashed", job=name, run_id=claim.run_id)
            error = describe_failure(exc, self._context.database)
        await self._finish(job, claim.run_id, outcome, summary, error)
        return RunResult(name, scheduled_at, outcome, claim.run_id, summary, error)

    async def _execute(self, job: Job, run_id: str) -> Summary:
        """The job's work under its timeout, with the lease renewed meanwhile."""
        work = asyncio.ensure_future(job.run(self._context))
        lost = False

        async def keep_lease() -> None:
            nonlocal lost
            while True:
                await asyncio.sleep(job.config.lease / 3)
                try:
                    held = await self._store.renew(
                        job.name,
                        run_id,
                        instance=self.instance,
                        now=self._clock(),
                        lease=job.config.lease,
                    )
                except Exception as exc:  # the database hiccuped: try again next time
                    log.warning("job_lease_not_renewed", job=job.name, error=str(exc)[:200])
                    continue
                if not held:
                    lost = True
                    work.cancel()
                    return

        keeper = asyncio.create_task(keep_lease())
        try:
            async with asyncio.timeout(job.config.timeout):
                try:
                    return await work
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if lost and current is not None and not current.cancelling():
                        raise _LeaseLost from None
                    raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work

    async def _finish(
        self,
        job: Job,
        run_id: str,
        outcome: JobOutcome,
        summary: Summary | None,
        error: str | None,
    ) -> None:
        try:
            recorded = await self._store.finish(
                job.name,
                run_id,
                instance=self.instance,
                now=self._clock(),
                outcome=outcome,
                summary=summary,
                error=error,
            )
        except Exception as exc:
            # The lease expires on its own; the run stays "running" until another instance
            # takes the job over and marks it abandoned.
            log.error("job_not_recorded", job=job.name, run_id=run_id, error=str(exc)[:200])
            return
        if not recorded:
            log.warning("job_taken_over", job=job.name, run_id=run_id, outcome=outcome)
        log_method = log.info if outcome == "ok" else log.error
        log_method("job_finished", job=job.name, run_id=run_id, outcome=outcome, error=error)
