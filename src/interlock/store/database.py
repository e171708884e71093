"""``Database``: one async SQLAlchemy engine and session factory, SQLite or PostgreSQL.

SQLite (``sqlite+aiosqlite:///path``) is the embedded default: the parent directory is
created, and every connection runs in WAL mode with a busy timeout and foreign keys enforced.
PostgreSQL (``postgresql+asyncpg://…``) gets a bounded pool whose connections are checked
before use, so a restarted server or a dropped idle connection costs a reconnect, not a 500.

The URL's password never appears in an exception or a log line: use ``safe_url``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool

from interlock.settings import Settings

WAL_PRAGMA = "PRAGMA journal_mode=WAL"
SQLITE_PRAGMAS = (
    "PRAGMA busy_timeout=5000",  # wait up to 5 s for another writer instead of failing
    WAL_PRAGMA,  # readers never block the writer, nor the writer readers
    "PRAGMA synchronous=NORMAL",  # durable enough with WAL, much faster than FULL
    "PRAGMA foreign_keys=ON",  # off by default in SQLite
)
WAL_SWITCH_TIMEOUT = 5.0


class DatabaseUnavailable(Exception):
    """The database cannot be reached or refused a trivial query. The message is safe to log."""


class Database:
    """The engine and session factory for one database URL. Create once; ``aclose`` at exit."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        max_overflow: int = 10,
        pool_timeout: float = 30.0,
        pool_recycle: float = 1800.0,
        echo: bool = False,
    ) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ValueError(
                "not a database URL (expected sqlite+aiosqlite:///… or postgresql+asyncpg://…)"
            ) from None
        self.url: URL = parsed
        self.dialect: str = parsed.get_backend_name()
        if parsed.drivername == "sqlite+aiosqlite":
            self.engine = _sqlite_engine(parsed, echo=echo)
        elif parsed.drivername == "postgresql+asyncpg":
            self.engine = create_async_engine(
                parsed,
                echo=echo,
                pool_size=pool_size,
                max_overflow=max_overflow,
                pool_timeout=pool_timeout,
                pool_recycle=pool_recycle,
                pool_pre_ping=True,
                connect_args={"server_settings": {"application_name": "interlock"}},
            )
        else:
            raise ValueError(
                f"unsupported database driver {parsed.drivername!r}: use sqlite+aiosqlite or "
                "postgresql+asyncpg"
            )
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def safe_url(self) -> str:
        """The URL with its password masked, for messages and logs."""
        return self.url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def __repr__(self) -> str:
        return f"Database({self.safe_url!r})"

    def session(self) -> AsyncSession:
        """A new session, to use as ``async with db.session() as session: …``.

        Objects stay readable after commit (``expire_on_commit=False``), so a repository can
        return them once the session is closed.
        """
        return self._sessions()

    async def ping(self) -> None:
        """Run ``SELECT 1``; raise ``DatabaseUnavailable`` (with a safe message) on failure."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (DBAPIError, OSError, TimeoutError) as exc:
            raise DatabaseUnavailable(self.describe_failure(exc)) from exc

    def describe_failure(self, exc: BaseException) -> str:
        """A one-line description of a database failure, without the password."""
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        message = f"cannot use the database at {self.safe_url}: {type(cause).__name__}"
        if detail:
            message += f": {detail}"
        password = self.url.password
        if password:
            message = message.replace(str(password), "***")
        return message

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()


async def begin_exclusive(conn: AsyncConnection, lock_id: int) -> None:
    """Make the transaction just begun on ``conn`` exclusive among instances doing the same.

    PostgreSQL: a transaction-scoped advisory lock on ``lock_id``. SQLite: ``BEGIN IMMEDIATE``,
    the database-wide write lock (the driver has not begun a transaction yet at this point, and
    commits or rolls back this one when SQLAlchemy does). Call it first in the transaction.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:lock_id)"), {"lock_id": lock_id})
    elif conn.dialect.name == "sqlite":
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


def _enable_wal(cursor: Any) -> None:
    """Switch to WAL unless already there (it persists in the file).

    The switch ignores ``busy_timeout``: connections racing to a brand-new file get "database
    is locked" at once. So retry for a while; this only happens on the very first start.
    """
    cursor.execute("PRAGMA journal_mode")
    if cursor.fetchone()[0] == "wal":
        return
    deadline = time.monotonic() + WAL_SWITCH_TIMEOUT
    while True:
        try:
            cursor.execute(WAL_PRAGMA)
            cursor.fetchall()
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # blocks the loop, but only while a new file is being created


def _sqlite_engine(url: URL, *, echo: bool) -> AsyncEngine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if in_memory:
        # Every new connection would otherwise be a new, empty in-memory database.
        engine = create_async_engine(url, echo=echo, poolclass=StaticPool)
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, echo=echo)

    @event.listens_for(engine.sync_engine, "connect")
    def _set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for pragma in SQLITE_PRAGMAS:
                if pragma == WAL_PRAGMA:
                    _enable_wal(cursor)
                else:
                    cursor.execute(pragma)
        except BaseException:
            # The pool does not close a connection whose set-up failed: aiosqlite's thread
            # would outlive it.
            cursor.close()
            dbapi_connection.close()
            raise
        cursor.close()

    return engine


def database_for(settings: Settings) -> Database:
    """The database the settings name, with their pool."""
    pool = settings.database_pool
    return Database(
        settings.database_url,
        pool_size=pool.size,
        max_overflow=pool.max_overflow,
        pool_timeout=pool.timeout,
        pool_recycle=pool.recycle,
    )
