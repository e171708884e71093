"""The ``housekeeping`` job: give back what expired but is still held.

- the shared state: expired entries (rate-limit and budget buckets that drained, slot
  holders whose lease ended, outcome windows, cache entries, locks) are dropped when next
  met and a few at a time; this drops them all now (``SharedState.sweep``). With Redis,
  which expires keys on its own, it prunes dead holders from slot pools still in use;
- the usage outbox: segments left by a gateway process that died on this data directory are
  adopted by the running ledger and written to the database now, not at the next start.
"""

from __future__ import annotations

from interlock.config_lifecycle import HousekeepingJobConfig
from interlock.jobs.registry import JobContext, Summary


async def housekeeping(context: JobContext, config: HousekeepingJobConfig) -> Summary:
    summary: Summary = {"state": context.state.backend}
    summary["swept"] = await context.state.sweep()
    if context.ledger is not None:
        summary["outbox_records_adopted"] = await context.ledger.adopt_orphans()
    return summary
