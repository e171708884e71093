"""The ``cleanup`` job: delete what has outlived its retention, one step per kind of row.

Steps run in order and independently: one that fails does not stop the others, and the run
is then recorded as failed with the summary of every step. A step is a function of the
context and the job's config returning its own summary; a new kind of data with a retention
is one more function in ``STEPS`` and one more key in ``[jobs.cleanup]``.

Usage rows are the bill: there is no table of totals to keep them in, so with
``usage_retention_days`` set, reports no longer cover what it deleted. It is 0 (keep
forever) unless set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog

from interlock.config_lifecycle import CleanupJobConfig
from interlock.jobs.registry import JobContext, JobFailed, Summary, describe_failure
from interlock.store import retention
from interlock.store.jobs import JobStore

log = structlog.get_logger("interlock.jobs.cleanup")

Step = Callable[[JobContext, CleanupJobConfig], Awaitable[Summary]]


async def expired_keys(context: JobContext, config: CleanupJobConfig) -> Summary:
    """API keys revoked or expired more than ``key_retention_days`` ago."""
    before = context.now() - timedelta(days=config.key_retention_days)
    deleted = await retention.delete_dead_keys(context.database, before)
    return {"deleted": deleted, "before": before.isoformat()}


async def old_usage(context: JobContext, config: CleanupJobConfig) -> Summary:
    """Usage rows older than ``usage_retention_days`` (none when it is 0)."""
    if config.usage_retention_days == 0:
        return {"deleted": 0, "kept": "forever (usage_retention_days = 0)"}
    before = context.now() - timedelta(days=config.usage_retention_days)
    deleted = await retention.delete_usage_before(context.database, before)
    return {"deleted": deleted, "before": before.isoformat()}


async def old_conversations(context: JobContext, config: CleanupJobConfig) -> Summary:
    """Conversations untouched for ``conversation_retention_days`` (none when it is 0)."""
    if config.conversation_retention_days == 0:
        return {"deleted": 0, "kept": "forever (conversation_retention_days = 0)"}
    before = context.now() - timedelta(days=config.conversation_retention_days)
    deleted = await retention.delete_conversations_before(context.database, before)
    return {"deleted": deleted, "before": before.isoformat()}


async def old_job_runs(context: JobContext, config: CleanupJobConfig) -> Summary:
    """Records of job runs that finished more than ``run_retention_days`` ago."""
    before = context.now() - timedelta(days=config.run_retention_days)
    deleted = await JobStore(context.database).delete_finished_before(before)
    return {"deleted": deleted, "before": before.isoformat()}


STEPS: tuple[tuple[str, Step], ...] = (
    ("keys", expired_keys),
    ("usage", old_usage),
    ("conversations", old_conversations),
    ("job_runs", old_job_runs),
)


async def cleanup(context: JobContext, config: CleanupJobConfig) -> Summary:
    """Run every step; raise ``JobFailed`` (with every step's summary) if any failed."""
    summary: Summary = {}
    failed: list[str] = []
    for name, step in STEPS:
        try:
            summary[name] = await step(context, config)
        except Exception as exc:  # mostly the database: the message says it all
            reason = describe_failure(exc, context.database)
            log.error("cleanup_step_failed", step=name, error=reason[:500])
            summary[name] = {"error": reason[:200]}
            failed.append(f"{name}: {reason}")
    if failed:
        raise JobFailed("; ".join(failed), summary)
    return summary
