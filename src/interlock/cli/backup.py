"""``interlock backup``: create, list, verify, restore and prune encrypted backups.

Long work shows a progress bar in a terminal and plain lines otherwise. Exit status: 0 done;
1 failed (database, tools, destination, backup not found); 2 bad configuration or usage
(``restore`` without ``--yes``); 3 the archive is corrupt, truncated or encrypted with a key
that is not configured — and then nothing was changed.
"""

from __future__ import annotations

import base64
import enum
import secrets
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from interlock.cli.runtime import EXIT_CONFIG, EXIT_FAILED, ConfigOption, fail, run_async
from interlock.cli.runtime import settings_or_exit as _settings

if TYPE_CHECKING:
    from interlock.backup.progress import Progress
    from interlock.backup.service import BackupEntry

EXIT_ARCHIVE = 3

app = typer.Typer(
    help="Encrypted backups of the database: create, list, verify, restore, prune.",
    no_args_is_help=True,
)

T = TypeVar("T")


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"


ArchiveArgument = Annotated[
    str,
    typer.Argument(
        help="A backup's name (see `interlock backup list`), `latest`, or the path of an "
        ".ilbk file."
    ),
]


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


class PlainProgress:
    """One line per stage on stdout, for logs and pipes."""

    def __init__(self, unit: str = "bytes") -> None:
        self._unit = unit

    def stage(self, description: str, total: int | None = None) -> None:
        suffix = ""
        if total is not None:
            suffix = f" ({human_bytes(total)})" if self._unit == "bytes" else f" ({total} rows)"
        typer.echo(f"{description}{suffix}...")

    def advance(self, amount: int) -> None:
        return None


class BarProgress:
    """A rich progress bar on stderr, one task per stage."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar
        self._task: Any = None

    def stage(self, description: str, total: int | None = None) -> None:
        if self._task is not None:
            task = self._bar.tasks[-1]
            done = task.total if task.total is not None else 1  # an empty step is done too
            self._bar.update(self._task, completed=done, total=done)
        self._task = self._bar.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, amount)


@contextmanager
def progress_display(unit: str = "bytes") -> Iterator[Progress]:
    """A bar in a terminal, plain lines otherwise; totals counted in ``unit`` ("bytes" or
    "rows")."""
    if not sys.stderr.isatty():
        yield PlainProgress(unit)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn() if unit == "bytes" else MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        yield BarProgress(bar)


def run_backup(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; a backup failure is one line on stderr with its exit status."""
    from interlock.backup.errors import ArchiveRejected, BackupError
    from interlock.settings import ConfigError

    async def run() -> T:
        try:
            return await work()
        except ArchiveRejected as error:
            fail([f"{error}; nothing was changed"], EXIT_ARCHIVE)
        except BackupError as error:
            fail([str(error)], EXIT_FAILED)
        except ConfigError as error:
            fail(error.problems, EXIT_CONFIG)

    return run_async(run)


@app.command("create")
def create(config: ConfigOption = None) -> None:
    """Back up the database (online: the gateway may keep running) to the destination."""
    from interlock.backup.service import create_backup

    settings = _settings(config_path=config)
    with progress_display() as progress:
        listing = run_backup(lambda: create_backup(settings, progress=progress))
    manifest = listing.manifest
    typer.echo(
        f"backup {manifest.name}: {human_bytes(listing.archive_bytes)}, "
        f"{sum(manifest.row_counts.values())} rows, schema {manifest.schema_revision or 'none'}, "
        f"key {manifest.key_id}"
    )


def _entry_json(entry: BackupEntry) -> dict[str, Any]:
    import msgspec

    listing = msgspec.to_builtins(entry.listing) if entry.listing else None
    return {
        "name": entry.name,
        "archive_bytes": entry.archive_bytes,
        "stored_at": entry.stored_at.isoformat(),
        "listing": listing,
    }


@app.command("list")
def list_backups(
    output: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = (
        OutputFormat.table
    ),
    config: ConfigOption = None,
) -> None:
    """List the backups at the destination, newest first."""
    from interlock.backup.service import list_backups as listed

    settings = _settings(config_path=config)
    entries = run_backup(lambda: listed(settings))
    if output is OutputFormat.json:
        import json

        typer.echo(json.dumps([_entry_json(entry) for entry in entries], indent=2))
        return
    from rich.table import Table

    from interlock.cli.users import console_out

    table = Table("name", "created", "database", "schema", "size", "rows", "key")
    for entry in entries:
        if entry.listing is None:
            table.add_row(entry.name, "", "", "(no listing)", human_bytes(entry.archive_bytes))
            continue
        manifest = entry.listing.manifest
        table.add_row(
            entry.name,
            manifest.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            manifest.database,
            manifest.schema_revision or "",
            human_bytes(entry.listing.archive_bytes),
            str(sum(manifest.row_counts.values())),
            manifest.key_id,
        )
    console_out().print(table)


@app.command("verify")
def verify(archive: ArchiveArgument, config: ConfigOption = None) -> None:
    """Decrypt and check a backup end to end (frames, checksum, manifest) without restoring."""
    from interlock.backup.service import verify_backup

    settings = _settings(config_path=config)
    with progress_display() as progress:
        verified = run_backup(lambda: verify_backup(settings, archive, progress=progress))
    manifest = verified.manifest
    typer.echo(
        f"ok: {verified.source} is intact: {manifest.database}, "
        f"{sum(manifest.row_counts.values())} rows, schema {manifest.schema_revision or 'none'}, "
        f"made {manifest.created_at:%Y-%m-%d %H:%M:%S} UTC, key {manifest.key_id}"
    )


@app.command("restore")
def restore(
    archive: ArchiveArgument,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: replace the database's contents.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Replace the database's contents with a backup's, all or nothing; stop the gateway
    first."""
    from sqlalchemy.engine import make_url

    from interlock.backup.service import restore_backup

    settings = _settings(config_path=config)
    if not yes:
        where = make_url(settings.database_url).render_as_string(hide_password=True)
        fail(
            [
                f"restore replaces every row of {where} with the backup's: stop the gateway, "
                "then run again with --yes"
            ],
            EXIT_CONFIG,
        )
    with progress_display() as progress:
        restored = run_backup(lambda: restore_backup(settings, archive, progress=progress))
    manifest = restored.manifest
    typer.echo(
        f"restored {manifest.name}: {sum(manifest.row_counts.values())} rows from "
        f"{manifest.created_at:%Y-%m-%d %H:%M:%S} UTC; schema {manifest.schema_revision or 'none'}"
        f" -> {restored.revision or 'none'}"
    )


@app.command("prune")
def prune(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say what would be deleted.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Delete the backups that [backup] keep_last / keep_days no longer keep."""
    from interlock.backup.service import prune_backups

    settings = _settings(config_path=config)
    pruned = run_backup(lambda: prune_backups(settings, dry_run=dry_run))
    verb = "would delete" if dry_run else "deleted"
    for name in pruned.deleted:
        typer.echo(f"{verb} {name}")
    typer.echo(f"{verb} {len(pruned.deleted)}, kept {len(pruned.kept)}")


@app.command("keygen")
def keygen() -> None:
    """Print a new random backup key for INTERLOCK_BACKUP_KEY."""
    typer.echo(base64.b64encode(secrets.token_bytes(32)).decode("ascii"))
