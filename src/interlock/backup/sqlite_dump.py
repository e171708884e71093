"""SQLite: a consistent copy of a live database, and an all-or-nothing restore into one.

The copy uses SQLite's online backup API in a single step: one read transaction, so the copy
is one consistent snapshot even while the gateway keeps writing (in WAL mode readers never
block the writer). The restore goes the same way in reverse: the checked, migrated copy is
written into the live file by the backup API in one write transaction — other connections
see the old database or the new one, never a mix, and a failure leaves the old one. This is
also safe with the WAL files present, which replacing the file on disk would not be.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from interlock.backup.errors import ArchiveCorrupt, BackupError
from interlock.store.database import Database

TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BUSY_TIMEOUT_MS = 30_000


@dataclass(frozen=True, slots=True)
class Contents:
    row_counts: dict[str, int]
    revision: str | None


def database_path(database: Database) -> Path:
    """The file of an SQLite database; in-memory databases cannot be backed up."""
    name = database.url.database or ""
    if name in ("", ":memory:") or name.startswith("file::memory:"):
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(name)


@contextlib.contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        yield connection
    finally:
        connection.close()


def contents(connection: sqlite3.Connection) -> Contents:
    """Row counts of every table, and the Alembic revision."""
    names = [
        row[0]
        for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
    ]
    counts = {}
    for name in names:
        if not TABLE_NAME.fullmatch(name):
            raise BackupError(f"unexpected table name {name[:40]!r} in the database")
        counts[name] = connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]  # noqa: S608
    revision = None
    if "alembic_version" in counts:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    return Contents(counts, revision)


def snapshot(source: Path, out: Path) -> Contents:
    """Copy the live database ``source`` into the new file ``out``; what the copy holds."""
    if not source.is_file():
        raise BackupError(f"no SQLite database at {source}")
    try:
        with _connect(source) as live, _connect(out) as copy:
            live.backup(copy)  # pages=-1: the whole database in one step, one snapshot
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            return contents(copy)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy the SQLite database {source}: {exc}") from None


def check_restorable(path: Path, expected: dict[str, int]) -> Contents:
    """Check a decrypted dump before it goes anywhere: an intact database holding the rows
    the manifest counted."""
    try:
        with _connect(path) as copy:
            result = copy.execute("PRAGMA integrity_check").fetchone()
            if not result or result[0] != "ok":
                raise ArchiveCorrupt("the archive's database fails SQLite's integrity check")
            found = contents(copy)
    except sqlite3.DatabaseError as exc:
        raise ArchiveCorrupt(f"the archive does not hold an SQLite database ({exc})") from None
    if found.row_counts != expected:
        raise ArchiveCorrupt("the archive's row counts differ from its manifest")
    return found


def replace_contents(source: Path, target: Path) -> None:
    """Make ``target`` hold exactly what ``source`` holds, in one write transaction."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _connect(source) as restored, _connect(target) as live:
            restored.backup(live)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"cannot write the SQLite database {target}: {exc}") from None
