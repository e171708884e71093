"""A user's data rights from the command line: ``interlock users export``, ``interlock users
delete`` and ``interlock export open``.

These work on the database directly, as the operator. Exit status: 0 done; 1 failed (the
database, no such user, the file cannot be written); 2 bad usage (no passphrase, no
``--yes``, an existing output file, the last active admin); 3 the export file is rejected
(wrong passphrase or key, damaged, truncated) — and then no output file is left.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import typer

from interlock.cli.backup import EXIT_ARCHIVE, progress_display
from interlock.cli.runtime import EXIT_CONFIG, EXIT_FAILED, ConfigOption, fail, run_async
from interlock.cli.runtime import settings_or_exit as _settings
from interlock.cli.users import FormatOption, OutputFormat, check_id

if TYPE_CHECKING:
    from interlock.privacy.sealed import SealingKey
    from interlock.settings import Settings
    from interlock.store.database import Database

app = typer.Typer(help="Read a user's data export: decrypt and check it.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log: erasures of users' data.", no_args_is_help=True)

PassphraseEnvOption = Annotated[
    str | None,
    typer.Option(
        "--passphrase-env",
        metavar="VAR",
        help="Read the passphrase from this environment variable (else it is asked for).",
    ),
]


def _passphrase(variable: str | None, *, confirm: bool) -> str:
    """The passphrase from ``$variable``, or asked for in a terminal; checked for length."""
    from interlock.privacy.sealed import check_passphrase

    if variable is not None:
        value = os.environ.get(variable)
        if not value:
            fail([f"--passphrase-env: ${variable} is not set"], EXIT_CONFIG)
    elif sys.stdin.isatty():
        value = typer.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm)
    else:
        fail(["give the passphrase with --passphrase-env VAR (or use --server-key)"], EXIT_CONFIG)
    try:
        return check_passphrase(value)
    except ValueError as exc:
        fail([f"--passphrase-env: {exc}" if variable else str(exc)], EXIT_CONFIG)


def _create_private(path: Path) -> BinaryIO:
    """``path`` created new (never overwritten), readable by its owner only."""
    from interlock.backup.destinations import private_file

    try:
        out: BinaryIO = private_file(path)
    except FileExistsError:
        fail([f"{path} exists: choose another --out"], EXIT_CONFIG)
    except OSError as exc:
        fail([f"cannot create {path}: {exc.strerror or exc}"], EXIT_FAILED)
    return out


@asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Database]:
    from interlock.store.database import database_for
    from interlock.store.migrate import prepare

    database = database_for(settings)
    try:
        await prepare(database)
        yield database
    finally:
        await database.aclose()


def _cli_actor() -> str:
    """Who runs this command, as the audit log names them."""
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"[:200]


def export_user(
    user_id: Annotated[str, typer.Argument(help="The user's id.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="File to write (new, mode 0600) [interlock-export-USER-TIME.ilexp]."
        ),
    ] = None,
    passphrase_env: PassphraseEnvOption = None,
    server_key: Annotated[
        bool,
        typer.Option(
            "--server-key",
            help="Encrypt with the server's backup key instead of a passphrase (for the "
            "operator's archive; the user cannot open it).",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Export a user's data (profile, keys, usage) as an encrypted file."""
    from interlock.backup.keys import key_ring
    from interlock.privacy.export import EXPORTED, sealed_export
    from interlock.privacy.sealed import SUFFIX, passphrase_key
    from interlock.privacy.sealed import server_key as server_sealing_key
    from interlock.store import audit
    from interlock.store.users import UserStore

    settings = _settings(config_path=config)
    check_id(user_id, "user")
    if server_key and passphrase_env is not None:
        fail(["give either --passphrase-env or --server-key, not both"], EXIT_CONFIG)
    now = datetime.now(UTC)
    path = out or Path(f"interlock-export-{user_id}-{now:%Y%m%dT%H%M%SZ}{SUFFIX}")
    key: SealingKey
    if server_key:
        key = server_sealing_key(key_ring(settings).current)
        passphrase = None
    else:
        passphrase = _passphrase(passphrase_env, confirm=True)
    file = _create_private(path)
    counts: dict[str, Any] = {}

    async def run() -> None:
        nonlocal key
        import asyncio

        if passphrase is not None:
            key = await asyncio.to_thread(passphrase_key, passphrase)
        async with _database(settings) as database:
            if await UserStore(database).get(user_id) is None:
                fail(["No user with this id."], EXIT_FAILED)
            await audit.record(
                database,
                actor=_cli_actor(),
                action=EXPORTED,
                subject=user_id,
                details={"key": "server key" if server_key else "passphrase"},
                now=now,
            )
            with progress_display(unit="rows") as progress:
                async for piece in sealed_export(
                    database, user_id, key, now=now, progress=progress, counts=counts
                ):
                    file.write(piece)

    done = False
    try:
        run_async(run)  # a failure is one line on stderr, status 1
        done = True
    finally:
        file.close()
        if not done:
            path.unlink(missing_ok=True)
    described = ", ".join(f"{count} {name}" for name, count in counts.items())
    typer.echo(f"exported user {user_id} to {path} ({described})")


def delete_user(
    user_id: Annotated[str, typer.Argument(help="The user's id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    config: ConfigOption = None,
) -> None:
    """Erase a user: keys deleted, usage anonymised, the user deleted, the erasure audited."""
    from interlock.errors import InterlockError, NotFound
    from interlock.privacy.erasure import erase_user
    from interlock.state import StateUnavailable

    settings = _settings(config_path=config)
    check_id(user_id, "user")
    if not yes:
        if not sys.stdin.isatty():
            fail(["erasing a user cannot be undone: add --yes to go ahead"], EXIT_CONFIG)
        typer.confirm(f"Erase user {user_id} and all their data? This cannot be undone", abort=True)
    actor = _cli_actor()

    async def run() -> dict[str, Any]:
        async with _database(settings) as database:
            try:
                erasure = await erase_user(database, user_id, actor=actor)
            except InterlockError as error:
                status = EXIT_FAILED if isinstance(error, NotFound) else EXIT_CONFIG
                fail([error.message], status)
        try:
            await _forget_cached(settings, user_id)
        except StateUnavailable as exc:
            fail(
                [
                    f"user {user_id} was erased, but the shared cache could not be reached "
                    f"({exc}): run this command again"
                ],
                EXIT_FAILED,
            )
        return erasure.summary()

    summary = run_async(run)
    state = "was already erased" if summary["already_erased"] else "erased"
    details = ", ".join(
        f"{name.replace('_', ' ')}: {value}"
        for name, value in summary.items()
        if name not in ("user_id", "erased_at", "already_erased")
    )
    typer.echo(f"user {user_id} {state} at {summary['erased_at']} ({details})")


async def _forget_cached(settings: Settings, user_id: str) -> None:
    """Orphan the user's response-cache entries where this process can reach them: in Redis.
    Without Redis, each gateway's cache is in its own memory: see docs/privacy.md."""
    if settings.redis_url is None:
        return
    from interlock.cache.key import Tenant
    from interlock.cache.store import EntryStore
    from interlock.state import build_state

    state = build_state(settings.redis_url)
    try:
        store = EntryStore(state.kv, max_entry_bytes=settings.config.cache.max_entry_bytes)
        await store.new_generation(Tenant("user", user_id))
    finally:
        await state.aclose()


@app.command("open")
def open_export_file(
    file: Annotated[Path, typer.Argument(help="The export file (.ilexp).", exists=True)],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the JSON (new, mode 0600) [FILE.json]."),
    ] = None,
    passphrase_env: PassphraseEnvOption = None,
    config: ConfigOption = None,
) -> None:
    """Decrypt and check an export; write its JSON document."""
    from interlock.backup.errors import ArchiveRejected
    from interlock.backup.keys import key_ring
    from interlock.privacy.sealed import open_export, read_export_header

    try:
        with file.open("rb") as raw:
            header = read_export_header(raw)
    except ArchiveRejected as error:
        fail([str(error)], EXIT_ARCHIVE)
    passphrase = keys = None
    if header.needs_passphrase:
        passphrase = _passphrase(passphrase_env, confirm=False)
    else:
        keys = key_ring(_settings(config_path=config))
    target = out or file.with_suffix(".json")
    written = _create_private(target)
    ok = False
    try:
        with file.open("rb") as raw:
            trailer = open_export(raw, written, passphrase=passphrase, keys=keys)
        ok = True
    except ArchiveRejected as error:
        fail([f"{error}; no file was written"], EXIT_ARCHIVE)
    finally:
        written.close()
        if not ok:
            target.unlink(missing_ok=True)
    described = ", ".join(f"{count} {name}" for name, count in trailer.counts.items())
    typer.echo(
        f"wrote {target}: the data of user {trailer.user_id} exported at "
        f"{trailer.exported_at} ({described}), checked"
    )


@audit_app.command("list")
def audit_list(
    user_id: Annotated[
        str | None, typer.Option("--user", help="Only the entries about this user id.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    output: FormatOption = OutputFormat.table,
    config: ConfigOption = None,
) -> None:
    """The latest audit log entries, newest first: when, who, what, about whom, counts."""
    import json

    from interlock.store.audit import recent

    settings = _settings(config_path=config)
    if user_id is not None:
        check_id(user_id, "user")

    async def run() -> list[Any]:
        async with _database(settings) as database:
            return list(await recent(database, subject=user_id, limit=limit))

    entries = run_async(run)
    if output is OutputFormat.json:
        rows = [
            {
                "id": entry.id,
                "at": entry.at.isoformat(),
                "actor": entry.actor,
                "action": entry.action,
                "subject": entry.subject,
                "details": entry.details,
            }
            for entry in entries
        ]
        typer.echo(json.dumps(rows))
        return
    if not entries:
        typer.echo("No audit log entries.")
    for entry in entries:
        details = ", ".join(f"{name}={value}" for name, value in (entry.details or {}).items())
        typer.echo(
            f"{entry.at:%Y-%m-%d %H:%M:%S} {entry.action} {entry.subject} by {entry.actor}"
            + (f" ({details})" if details else "")
        )
