"""``Scheduler``: the gateway's background task that runs each enabled job when it is due.

It sleeps until the earliest due time (at most ``max_sleep`` at once, so a clock that jumps
is noticed), then starts each due job in a task of its own and computes that job's next
time: the event loop is never blocked, a slow job does not delay the others, and a job that
fails is recorded as failed (by the runner) without stopping anything. Every instance runs a
scheduler; the runner's claim in the database makes each due time run on one of them.

Due times missed while no instance was running are not caught up: the job runs at its next
time. ``aclose`` cancels the loop and the runs in progress (each recorded as failed,
"cancelled") and waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from interlock.jobs.cron import next_time
from interlock.jobs.registry import JobContext, configured_jobs
from interlock.jobs.runner import JobRunner, instance_id, utc_now
from interlock.store.jobs import JobStore

if TYPE_CHECKING:
    from interlock.settings import Settings
    from interlock.state import SharedState
    from interlock.store.database import Database
    from interlock.telemetry.ledger import UsageLedger

log = structlog.get_logger("interlock.jobs.scheduler")

MAX_SLEEP = 60.0


class Scheduler:
    """Runs ``runner``'s enabled jobs at their times. ``start``, then ``aclose``."""

    def __init__(
        self,
        runner: JobRunner,
        *,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_sleep: float = MAX_SLEEP,
    ) -> None:
        """``clock`` and ``sleep`` are injected for tests, which run the time faster."""
        self.runner = runner
        self._clock = clock
        self._sleep = sleep
        self._max_sleep = max_sleep
        self._loop_task: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[None]] = set()
        self.schedule = {
            name: job.config.schedule for name, job in runner.jobs.items() if job.config.enabled
        }
        self.next_due: dict[str, datetime] = {}

    def start(self) -> None:
        if self._loop_task is None and self.schedule:
            now = self._clock()
            self.next_due = {name: next_time(cron, now) for name, cron in self.schedule.items()}
            self._loop_task = asyncio.create_task(self._loop(), name="job-scheduler")
            self._loop_task.add_done_callback(_report_stop)
            log.info(
                "scheduler_started",
                instance=self.runner.instance,
                jobs={name: due.isoformat() for name, due in self.next_due.items()},
            )

    async def aclose(self) -> None:
        """Stop: cancel the loop and every run in progress, and wait for them."""
        tasks = [*self._runs, *([self._loop_task] if self._loop_task is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loop_task = None

    async def _loop(self) -> None:
        while True:
            now = self._clock()
            for name, due in list(self.next_due.items()):
                if due <= now:
                    self._start_run(name, due)
                    # Past times missed by a long sleep (a suspended machine) are dropped.
                    self.next_due[name] = next_time(self.schedule[name], max(due, now))
            wait = (min(self.next_due.values()) - self._clock()).total_seconds()
            await self._sleep(min(max(wait, 0.0), self._max_sleep))

    def _start_run(self, name: str, due: datetime) -> None:
        task = asyncio.create_task(self._run(name, due), name=f"job-{name}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _run(self, name: str, due: datetime) -> None:
        try:
            await self.runner.run(name, due)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database could not claim or record it: next time
            log.error(
                "job_not_run",
                job=name,
                scheduled_at=due.isoformat(),
                error=f"{type(exc).__name__}: {str(exc)[:200]}",
            )


def _report_stop(task: asyncio.Task[None]) -> None:
    """The loop only ends by ``aclose``; anything else is a bug, and jobs stop running."""
    if not task.cancelled() and task.exception() is not None:
        log.error("scheduler_crashed", error=repr(task.exception()))


def start_scheduler(
    settings: Settings, database: Database, state: SharedState, ledger: UsageLedger | None
) -> Scheduler:
    """The gateway's scheduler over the configured jobs, started unless ``[jobs] scheduler``
    is false (then ``aclose`` is all there is to call)."""
    jobs = configured_jobs(settings.config.jobs)
    context = JobContext(settings, database, state, ledger, utc_now)
    scheduler = Scheduler(JobRunner(jobs, JobStore(database), context, instance=instance_id()))
    if settings.config.jobs.scheduler:
        scheduler.start()
    else:
        log.info("scheduler_disabled", reason="[jobs] scheduler = false")
    return scheduler
