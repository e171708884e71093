"""PostgreSQL: ``pg_dump`` of a consistent snapshot, and an all-or-nothing restore.

The tools run without a shell, and the connection — password included — goes to them
through libpq's environment variables (``PGHOST``, ``PGPASSWORD``…), never on the command
line, where any local user could read it in the process list.

Backup: a repeatable-read transaction exports its snapshot; the manifest's row counts and
schema revision are read in it, and ``pg_dump --snapshot`` dumps exactly that same state
(custom format, Interlock's tables only) while the gateway keeps writing.

Restore: ``pg_restore`` turns the archive into SQL, and ``psql --single-transaction`` runs,
in ONE transaction: dropping Interlock's tables, the dump, and a check of every table's row
count against the manifest. Any error rolls all of it back, so the database is either the
archive's or untouched. (``pg_restore --single-transaction --clean`` alone would leave behind
a table that the target has and the archive lacks, and could not check the counts.) The
schema migration of an older archive runs after that, in its own transaction.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL

from interlock.backup.errors import ArchiveCorrupt, BackupError
from interlock.store.database import Database
from interlock.store.models import Base

TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]*")
VERSION_DIR = re.compile(r"\d+")
POSTGRES_VERSIONS = Path("/usr/lib/postgresql")
LOCK_TIMEOUT_MS = 60_000
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def interlock_tables() -> set[str]:
    """The tables Interlock owns in its schema: the models' and Alembic's."""
    return {*Base.metadata.tables, "alembic_version"}


def find_tool(name: str) -> Path:
    """A PostgreSQL client program: on PATH, else the newest in /usr/lib/postgresql/N/bin."""
    if found := shutil.which(name):
        return Path(found)
    if POSTGRES_VERSIONS.is_dir():
        versions = [d for d in POSTGRES_VERSIONS.iterdir() if VERSION_DIR.fullmatch(d.name)]
        for directory in sorted(versions, key=lambda d: int(d.name), reverse=True):
            if (candidate := directory / "bin" / name).is_file():
                return candidate
    raise BackupError(
        f"{name} not found on PATH or in /usr/lib/postgresql/*/bin: install the PostgreSQL "
        "client programs (Debian: apt-get install postgresql-client)"
    )


def libpq_environment(url: URL, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without any PG* variable, plus the connection of ``url`` for libpq."""
    env = {name: value for name, value in base.items() if not name.startswith("PG")}
    query = {key: value for key, value in url.query.items() if isinstance(value, str)}
    values = {
        "PGHOST": url.host or query.get("host") or "",
        "PGPORT": str(url.port) if url.port else query.get("port", ""),
        "PGUSER": url.username or "",
        "PGPASSWORD": url.password if isinstance(url.password, str) else "",
        "PGDATABASE": url.database or "",
        "PGAPPNAME": "interlock-backup",
        "PGCONNECT_TIMEOUT": "10",
    }
    ssl = (query.get("sslmode") or query.get("ssl") or "").lower()
    if ssl in ("true", "1"):
        ssl = "require"
    if ssl in _SSL_MODES:
        values["PGSSLMODE"] = ssl
    env.update({name: value for name, value in values.items() if value})
    return env


def quoted(schema: str, table: str) -> str:
    for name in (schema, table):
        if not TABLE_NAME.fullmatch(name):
            raise BackupError(f"unexpected schema or table name {name[:40]!r}")
    return f'"{schema}"."{table}"'


def pg_dump_command(
    tool: Path, snapshot: str, schema: str, tables: list[str], out: Path
) -> list[str]:
    """The argv of ``pg_dump``: no connection details, those are in the environment."""
    if not re.fullmatch(r"[0-9A-Fa-f-]+", snapshot):
        raise BackupError("unexpected snapshot id from the server")
    return [
        str(tool),
        "--format=custom",
        "--compress=0",  # compressed once, by the archive
        "--no-owner",
        "--no-privileges",
        f"--snapshot={snapshot}",
        *(f"--table={quoted(schema, table)}" for table in tables),
        f"--file={out}",
    ]


def restore_commands(
    pg_restore: Path,
    psql: Path,
    dump: Path,
    script: Path,
    schema: str,
    row_counts: Mapping[str, int],
) -> tuple[list[str], list[str]]:
    """The argv of ``pg_restore`` (archive → SQL script, no database involved) and of
    ``psql`` (runs the script in one transaction, between dropping the old tables and
    checking the new ones)."""
    drop = ", ".join(quoted(schema, t) for t in sorted(interlock_tables() | set(row_counts)))
    # Names are checked by `quoted` and counts are ints: nothing here comes unchecked.
    checks = "".join(
        f"IF (SELECT count(*) FROM {quoted(schema, table)}) <> {int(count)} THEN "  # noqa: S608
        f"RAISE EXCEPTION 'restored rows of {table} differ from the manifest'; END IF; "
        for table, count in sorted(row_counts.items())
    )
    return (
        [str(pg_restore), "--no-owner", "--no-privileges", f"--file={script}", str(dump)],
        [
            str(psql),
            "--no-psqlrc",
            "--quiet",
            "--set=ON_ERROR_STOP=1",
            "--single-transaction",
            f"--command=DROP TABLE IF EXISTS {drop} CASCADE",
            f"--file={script}",
            f"--command=DO $$ BEGIN {checks}END $$",
        ],
    )


def _first_error(stderr: bytes, password: str | None) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    chosen = next((line for line in lines if "ERROR" in line or "error" in line), None)
    chosen = chosen or next((line for line in lines if line), "no message")
    if password:
        chosen = chosen.replace(password, "***")
    return chosen[:400]


@dataclass(frozen=True, slots=True)
class Contents:
    row_counts: dict[str, int]
    revision: str | None
    schema: str


async def dump(database: Database, environ: Mapping[str, str], out: Path) -> Contents:
    """Dump Interlock's tables to ``out`` (custom format) from one consistent snapshot."""
    tool = find_tool("pg_dump")
    env = libpq_environment(database.url, environ)
    async with database.engine.connect() as connection:
        snapshot_conn = await connection.execution_options(isolation_level="REPEATABLE READ")
        async with snapshot_conn.begin():
            snapshot = (await snapshot_conn.execute(text("SELECT pg_export_snapshot()"))).scalar()
            schema = (await snapshot_conn.execute(text("SELECT current_schema()"))).scalar()
            present = (
                await snapshot_conn.execute(
                    text(
                        "SELECT table_name FROM information_schema.tables "
                        "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
                    )
                )
            ).scalars()
            tables = sorted(set(present) & interlock_tables())
            if not tables or not isinstance(snapshot, str) or not isinstance(schema, str):
                raise BackupError("the database holds no Interlock tables: nothing to back up")
            counts = {}
            for table in tables:
                counted = await snapshot_conn.execute(
                    text(f"SELECT count(*) FROM {quoted(schema, table)}")  # noqa: S608
                )
                counts[table] = int(counted.scalar_one())
            revision = None
            if "alembic_version" in counts:
                found = await snapshot_conn.execute(
                    text(f"SELECT version_num FROM {quoted(schema, 'alembic_version')}")  # noqa: S608
                )
                revision = found.scalar()
            # The transaction stays open while pg_dump runs: it keeps the snapshot alive.
            process = await asyncio.create_subprocess_exec(
                *pg_dump_command(tool, snapshot, schema, tables, out),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await process.communicate()
            if process.returncode != 0:
                password = database.url.password
                raise BackupError(
                    "pg_dump failed: " + _first_error(stderr, password if password else None)
                )
    return Contents(counts, revision, schema)


async def _run(argv: list[str], env: Mapping[str, str]) -> tuple[int, bytes]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    return process.returncode or 0, stderr


async def restore(
    database: Database,
    environ: Mapping[str, str],
    dump_path: Path,
    schema: str,
    row_counts: Mapping[str, int],
) -> None:
    """Replace Interlock's tables with the dump's, all or nothing (see the module doc)."""
    script = dump_path.with_name(dump_path.name + ".sql")
    restore_argv, psql_argv = restore_commands(
        find_tool("pg_restore"), find_tool("psql"), dump_path, script, schema, row_counts
    )
    status, stderr = await _run(restore_argv, environ)
    if status != 0:
        raise ArchiveCorrupt(
            "pg_restore cannot read the archive's dump: " + _first_error(stderr, None)
        )
    try:
        env = libpq_environment(database.url, environ)
        # Dropping a table waits for every transaction using it: a busy gateway makes the
        # restore fail (and roll back) after a minute rather than hang.
        env["PGOPTIONS"] = f"-c lock_timeout={LOCK_TIMEOUT_MS}"
        status, stderr = await _run(psql_argv, env)
    finally:
        script.unlink(missing_ok=True)
    if status != 0:
        password = database.url.password if database.url.password else None
        raise BackupError(
            "the restore failed and was rolled back, the database is unchanged: "
            + _first_error(stderr, password)
        )
