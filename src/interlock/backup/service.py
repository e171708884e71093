"""Backups as plain async functions: create, list, verify, restore, prune.

Each takes the ``Settings`` and does the whole job or raises a ``BackupError`` whose message
is one printable line; the command line and the scheduled job both call these.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import msgspec

from interlock import __version__
from interlock.backup import postgres_dump, sqlite_dump
from interlock.backup.archive import open_archive, seal
from interlock.backup.destinations import Destination, destination_for, private_file
from interlock.backup.errors import ArchiveCorrupt, BackupError, BackupNotFound, RestoreRefused
from interlock.backup.keys import key_ring
from interlock.backup.manifest import (
    MANIFEST_SUFFIX,
    SUFFIX,
    Listing,
    Manifest,
    archive_name,
    listing_name,
)
from interlock.backup.progress import Progress, Silent
from interlock.backup.retention import to_delete
from interlock.settings import Settings
from interlock.store.database import Database, database_for
from interlock.store.migrate import SchemaTooNew, alembic_config, current_revision, upgrade

LATEST = "latest"


@dataclass(frozen=True, slots=True)
class BackupEntry:
    """One archive at the destination, with its listing when it has one."""

    name: str
    archive_bytes: int
    stored_at: datetime
    listing: Listing | None  # None: the listing is missing or unreadable

    @property
    def created_at(self) -> datetime:
        return self.listing.manifest.created_at if self.listing else self.stored_at


@dataclass(frozen=True, slots=True)
class Verified:
    manifest: Manifest
    source: str  # what was read: a name at the destination, or a path
    listing_checked: bool  # whether a listing was there to compare with


@dataclass(frozen=True, slots=True)
class Restored:
    manifest: Manifest
    revision: str | None  # the database's schema revision after the restore (migrated)


@dataclass(frozen=True, slots=True)
class Pruned:
    deleted: list[str]
    kept: list[str]


def new_name(now: datetime) -> str:
    """``interlock-YYYYMMDDTHHMMSSZ-xxxx``: sorts by time; the suffix keeps two instances
    backing up in the same second apart."""
    return f"interlock-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


WORKSPACE_PREFIX = ".interlock-backup-"
STALE_WORKSPACE = timedelta(days=1)


def _remove_stale_workspaces(parent: Path) -> None:
    """Scratch directories of runs that were killed hold plain dumps: remove them once they
    are surely no one's any more."""
    cutoff = datetime.now(UTC) - STALE_WORKSPACE
    for path in parent.glob(f"{WORKSPACE_PREFIX}*"):
        try:
            if datetime.fromtimestamp(path.stat().st_mtime, UTC) < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


@asynccontextmanager
async def _workspace(settings: Settings) -> AsyncIterator[Path]:
    """A private (0700) scratch directory, on the data dir's disk when there is one."""
    parent = settings.data_dir if settings.data_dir.is_dir() else Path(tempfile.gettempdir())
    await asyncio.to_thread(_remove_stale_workspaces, parent)
    path = Path(tempfile.mkdtemp(prefix=WORKSPACE_PREFIX, dir=parent))
    try:
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Database]:
    database = database_for(settings)
    try:
        yield database
    finally:
        await database.aclose()


def _kind(database: Database) -> str:
    return "sqlite" if database.is_sqlite else "postgresql"


def _describe_database_error(database: Database, exc: Exception) -> BackupError:
    return BackupError(database.describe_failure(exc))


async def create_backup(
    settings: Settings,
    *,
    progress: Progress | None = None,
    destination: Destination | None = None,
    now: datetime | None = None,
) -> Listing:
    """Back up the configured database to the configured destination; its listing.

    The database is read from one consistent snapshot while the gateway keeps running.
    """
    progress = progress or Silent()
    keys = key_ring(settings)
    target = destination or destination_for(settings)
    created = (now or datetime.now(UTC)).astimezone(UTC)
    name = new_name(created)
    async with _database(settings) as database, _workspace(settings) as work:
        dump = work / "dump"
        progress.stage(f"copying the {_kind(database)} database")
        try:
            if database.is_sqlite:
                source = sqlite_dump.database_path(database)
                found = await asyncio.to_thread(sqlite_dump.snapshot, source, dump)
                row_counts, revision, schema = found.row_counts, found.revision, None
            else:
                pg = await postgres_dump.dump(database, settings.environ, dump)
                row_counts, revision, schema = pg.row_counts, pg.revision, pg.schema
        except BackupError:
            raise
        except Exception as exc:  # the database failed: one line, without the password
            raise _describe_database_error(database, exc) from None

        def manifest_for(size: int, sha256: str) -> Manifest:
            return Manifest(
                name=name,
                created_at=created,
                interlock_version=__version__,
                database="sqlite" if database.is_sqlite else "postgresql",
                schema_revision=revision,
                dump_format="sqlite" if database.is_sqlite else "pg_dump_custom",
                dump_bytes=size,
                dump_sha256=sha256,
                row_counts=row_counts,
                pg_schema=schema,
                key_id=keys.current.id,
            )

        progress.stage("compressing and encrypting", dump.stat().st_size)
        staged = (target.staging_dir() or work) / f".{name}.partial"

        def write() -> Listing:
            with private_file(staged) as out:
                sealed = seal(dump, out, keys.current, manifest_for, on_bytes=progress.advance)
            return Listing(
                manifest=sealed.manifest,
                archive_bytes=sealed.archive_bytes,
                archive_sha256=sealed.archive_sha256,
            )

        try:
            listing = await asyncio.to_thread(write)
            progress.stage(f"storing in {target.description}")
            await target.publish(archive_name(name), staged)
        except OSError as exc:
            raise BackupError(f"cannot write the archive: {exc.strerror or exc}") from None
        finally:
            staged.unlink(missing_ok=True)
        await target.write_small(listing_name(name), listing.encode())
        return listing


async def list_backups(
    settings: Settings, *, destination: Destination | None = None
) -> list[BackupEntry]:
    """Every archive at the destination, newest first."""
    target = destination or destination_for(settings)
    objects = await target.list_objects()
    entries = []
    for stored in objects:
        if not stored.name.endswith(SUFFIX):
            continue
        name = stored.name.removesuffix(SUFFIX)
        raw = await target.read_small(listing_name(name))
        listing = None
        if raw is not None:
            try:
                listing = Listing.decode(raw)
            except msgspec.DecodeError:
                listing = None
        entries.append(BackupEntry(name, stored.size, stored.modified, listing))
    entries.sort(key=lambda entry: (entry.created_at, entry.name), reverse=True)
    return entries


class _HashingReader:
    """Reads a file while hashing every byte read."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._file.read(size)
        self.hash.update(data)
        self.size += len(data)
        return data


@asynccontextmanager
async def _archive(
    settings: Settings, reference: str, destination: Destination | None
) -> AsyncIterator[tuple[Path, str, Listing | None]]:
    """The archive ``reference`` names — ``latest``, a name at the destination, or the path
    of an archive file — as a local path, with its listing if any."""
    candidate = Path(reference)
    if reference.endswith(SUFFIX) and await asyncio.to_thread(candidate.is_file):
        yield candidate, str(candidate), None
        return
    target = destination or destination_for(settings)
    name = reference.removesuffix(SUFFIX)
    if name == LATEST:
        entries = await list_backups(settings, destination=target)
        if not entries:
            raise BackupNotFound(f"no backups in {target.description}")
        name = entries[0].name
    raw = await target.read_small(listing_name(name))
    listing = None
    if raw is not None:
        try:
            listing = Listing.decode(raw)
        except msgspec.DecodeError:
            listing = None
    async with target.fetch(archive_name(name)) as path:
        yield path, name, listing


def _open_checked(
    path: Path, settings: Settings, listing: Listing | None, into: Path | None, progress: Progress
) -> Manifest:
    """Decrypt and check the archive at ``path`` (into the file ``into`` if given)."""
    keys = key_ring(settings)
    with path.open("rb") as raw:
        reader = _HashingReader(raw)
        if into is None:
            manifest = open_archive(reader, keys, on_bytes=progress.advance)
        else:
            with private_file(into) as out:
                manifest = open_archive(reader, keys, out, on_bytes=progress.advance)
    if listing is not None:
        if listing.manifest != manifest:
            raise ArchiveCorrupt("the archive's sealed manifest differs from its listing")
        if (listing.archive_bytes, listing.archive_sha256) != (
            reader.size,
            reader.hash.hexdigest(),
        ):
            raise ArchiveCorrupt("the archive's size or checksum differs from its listing")
    return manifest


async def verify_backup(
    settings: Settings,
    reference: str,
    *,
    progress: Progress | None = None,
    destination: Destination | None = None,
) -> Verified:
    """Decrypt and check an archive end to end without restoring it."""
    progress = progress or Silent()
    async with _archive(settings, reference, destination) as (path, source, listing):
        progress.stage(f"verifying {source}", path.stat().st_size)
        manifest = await asyncio.to_thread(_open_checked, path, settings, listing, None, progress)
    return Verified(manifest, source, listing is not None)


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return {revision.revision for revision in script.walk_revisions()}


async def restore_backup(
    settings: Settings,
    reference: str,
    *,
    progress: Progress | None = None,
    destination: Destination | None = None,
) -> Restored:
    """Replace the configured database's contents with the archive's, all or nothing, and
    migrate it to this version's schema.

    The archive is decrypted and checked completely before the database is touched; a bad
    archive raises ``ArchiveRejected`` and changes nothing. Stop the gateway first: it
    would otherwise keep serving from caches (keys, usage not yet written) that predate the
    restore.
    """
    progress = progress or Silent()
    async with (
        _database(settings) as database,
        _workspace(settings) as work,
        _archive(settings, reference, destination) as (path, source, listing),
    ):
        dump = work / "dump"
        progress.stage(f"decrypting and checking {source}", path.stat().st_size)
        manifest = await asyncio.to_thread(_open_checked, path, settings, listing, dump, progress)
        if manifest.database != _kind(database):
            raise RestoreRefused(
                f"the archive holds a {manifest.database} database and the configured one is "
                f"{_kind(database)}: restore it into a {manifest.database} database"
            )
        revision = manifest.schema_revision
        if revision is not None and revision not in _known_revisions():
            raise RestoreRefused(
                f"the archive's schema (revision {revision}) is newer than this Interlock: "
                "upgrade Interlock first"
            )
        try:
            if database.is_sqlite:
                await _restore_sqlite(database, dump, manifest, progress)
            else:
                await _restore_postgres(database, settings, dump, manifest, progress)
            return Restored(manifest, await current_revision(database))
        except BackupError:
            raise
        except SchemaTooNew as exc:
            raise RestoreRefused(str(exc)) from None
        except Exception as exc:
            raise _describe_database_error(database, exc) from None


async def _restore_sqlite(
    database: Database, dump: Path, manifest: Manifest, progress: Progress
) -> None:
    target = sqlite_dump.database_path(database)
    progress.stage("checking the restored database")
    await asyncio.to_thread(sqlite_dump.check_restorable, dump, manifest.row_counts)
    progress.stage("migrating the restored database")
    copy = Database(f"sqlite+aiosqlite:///{dump}")
    try:
        await upgrade(copy)  # before the swap: the live file goes straight to this schema
    finally:
        await copy.aclose()
    progress.stage(f"replacing {target}")
    await database.aclose()  # no pooled connection of ours holds the old file open
    await asyncio.to_thread(sqlite_dump.replace_contents, dump, target)


async def _restore_postgres(
    database: Database, settings: Settings, dump: Path, manifest: Manifest, progress: Progress
) -> None:
    if not manifest.pg_schema:
        raise RestoreRefused("the archive's manifest names no PostgreSQL schema")
    progress.stage("restoring in one transaction")
    await postgres_dump.restore(
        database, settings.environ, dump, manifest.pg_schema, manifest.row_counts
    )
    progress.stage("migrating the restored database")
    await upgrade(database)


async def prune_backups(
    settings: Settings,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    destination: Destination | None = None,
) -> Pruned:
    """Delete the backups that ``[backup] keep_last`` / ``keep_days`` no longer keep.

    Only complete backups (with a listing) count and are deleted; the newest always stays.
    """
    config = settings.config.backup
    target = destination or destination_for(settings)
    entries = [entry for entry in await list_backups(settings, destination=target) if entry.listing]
    doomed = to_delete(
        [(entry.name, entry.created_at) for entry in entries],
        keep_last=config.keep_last,
        keep_days=config.keep_days,
        now=now or datetime.now(UTC),
    )
    if not dry_run:
        for name in doomed:
            await target.delete(archive_name(name))
            await target.delete(listing_name(name))
    kept = [entry.name for entry in entries if entry.name not in set(doomed)]
    return Pruned(doomed, kept)


__all__ = [
    "LATEST",
    "MANIFEST_SUFFIX",
    "BackupEntry",
    "Pruned",
    "Restored",
    "Verified",
    "create_backup",
    "list_backups",
    "prune_backups",
    "restore_backup",
    "verify_backup",
]
