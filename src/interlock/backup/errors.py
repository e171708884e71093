"""What can go wrong with a backup, each with a message that is safe to print as one line.

BackupError                 the operation failed (database, tools, destination)
├── BackupNotFound          no backup of that name at the destination
├── RestoreRefused          the restore cannot go ahead (wrong database kind, newer schema)
└── ArchiveRejected         the archive itself is bad: nothing was or will be changed
    ├── ArchiveCorrupt      a frame fails authentication, a checksum or the manifest differ
    ├── ArchiveTruncated    the archive ends before its final frame
    └── UnknownBackupKey    encrypted with a key that is not configured
"""

from __future__ import annotations


class BackupError(Exception):
    """A backup operation failed; ``str(error)`` is one line without secrets."""


class BackupNotFound(BackupError):
    """No backup of that name."""


class RestoreRefused(BackupError):
    """The archive is sound but cannot be restored here."""


class ArchiveRejected(BackupError):
    """The archive is unreadable, damaged, or not ours to read."""


class ArchiveCorrupt(ArchiveRejected):
    """Authentication, checksum or manifest check failed."""


class ArchiveTruncated(ArchiveRejected):
    """The archive stops before its authenticated end."""


class UnknownBackupKey(ArchiveRejected):
    """The archive's key id matches none of the configured keys."""
