"""Schema migrations: Alembic, shipped inside the package and run programmatically.

No ``alembic.ini`` is needed where Interlock runs; the configuration is built here and the
scripts live in ``interlock/store/migrations``. Alembic is synchronous, so it runs on an
async connection through ``run_sync`` (Alembic's asyncio recipe), which works for aiosqlite
and asyncpg alike.

Every migration runs in one transaction that instances take in turn (``begin_exclusive``):
two instances starting at once against PostgreSQL do not both migrate; the second waits, then
finds the schema at head. On PostgreSQL the DDL is transactional, so a failed migration leaves
the schema as it was.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from weakref import WeakKeyDictionary

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from interlock.store.database import Database, begin_exclusive

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any fixed 64-bit number, the same in every instance: "ilmigrat".
MIGRATION_LOCK_ID = 0x696C6D6967726174

log = logging.getLogger(__name__)
_ALEMBIC_TURNS: WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = WeakKeyDictionary()


class SchemaTooNew(Exception):
    """The database was migrated by a newer Interlock than this one."""

    def __init__(self, found: str, head: str) -> None:
        self.found = found
        self.head = head
        super().__init__(
            f"the database is at revision {found}, newer than this Interlock "
            f"(head {head}): upgrade Interlock"
        )


def alembic_config() -> Config:
    """Alembic's configuration for the shipped migrations, built without any ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships migrations
        raise RuntimeError("no migrations found in the package")
    return head


async def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None if it has never been migrated."""
    async with db.engine.connect() as conn:
        return await conn.run_sync(_current_revision)


async def upgrade(db: Database) -> None:
    """Migrate the database to head; raise ``SchemaTooNew`` if it is ahead of this code."""
    async with _alembic_turn(), db.engine.begin() as conn:
        await begin_exclusive(conn, MIGRATION_LOCK_ID)
        found, migrated = await conn.run_sync(_upgrade, alembic_config())
    if migrated:
        log.info("database migrated from %s to %s", found or "empty", head_revision())


async def prepare(db: Database) -> None:
    """Make the database ready at app start: reachable and migrated to head.

    Raises ``DatabaseUnavailable`` if it cannot be reached, ``SchemaTooNew`` if it was
    migrated by a newer Interlock. Safe to call on every start and from many instances.
    """
    await db.ping()
    await upgrade(db)


def _alembic_turn() -> asyncio.Lock:
    """The lock that lets one Alembic run at a time in this process.

    Alembic keeps the running migration's context in module globals (``alembic.op``,
    ``alembic.context``): two runs interleaved on one event loop (say, two databases prepared
    at once) would send each other's DDL down the wrong connection. asyncio locks belong to
    one loop, hence one per loop.
    """
    loop = asyncio.get_running_loop()
    lock = _ALEMBIC_TURNS.get(loop)
    if lock is None:
        lock = _ALEMBIC_TURNS[loop] = asyncio.Lock()
    return lock


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection, config: Config) -> tuple[str | None, bool]:
    script = ScriptDirectory.from_config(config)
    head = script.get_current_head()
    assert head is not None
    known = {revision.revision for revision in script.walk_revisions()}
    found = MigrationContext.configure(connection).get_current_heads()
    for revision in found:
        if revision not in known:
            raise SchemaTooNew(revision, head)
    if found == (head,):
        return head, False
    # env.py runs the migrations on this connection, inside the transaction begun above.
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    return (found[0] if found else None), True
