"""The ``backup`` job: ``interlock backup create`` then ``interlock backup prune``, nightly.

The archive goes to ``[backup]``'s destination, encrypted with ``INTERLOCK_BACKUP_KEY`` or,
without it, the key derived from the server secret (see ``interlock.backup.keys``). A failed
backup fails the run and nothing is pruned; a backup that worked followed by a prune that
failed is a failed run whose summary still names the new backup.
"""

from __future__ import annotations

from interlock.backup.errors import BackupError
from interlock.backup.service import create_backup, prune_backups
from interlock.config_lifecycle import BackupJobConfig
from interlock.jobs.registry import JobContext, JobFailed, Summary


async def backup(context: JobContext, config: BackupJobConfig) -> Summary:
    try:
        listing = await create_backup(context.settings, now=context.now())
    except BackupError as exc:  # one printable line already: no traceback in the log
        raise JobFailed(f"the backup failed: {exc}", {}) from exc
    manifest = listing.manifest
    summary: Summary = {
        "backup": manifest.name,
        "database": manifest.database,
        "archive_bytes": listing.archive_bytes,
        "key_id": manifest.key_id,
        "rows": sum(manifest.row_counts.values()),
    }
    if not config.prune:
        return summary
    try:
        pruned = await prune_backups(context.settings, now=context.now())
    except BackupError as exc:
        raise JobFailed(f"the backup worked, pruning failed: {exc}", summary) from exc
    summary["pruned"] = pruned.deleted
    summary["kept"] = len(pruned.kept)
    return summary
