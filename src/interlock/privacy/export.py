"""A user's own data, as one JSON document, produced section by section and row by row.

    {"format": "interlock-export", "version": 1, "exported_at": "…", "user_id": "…",
     "profile": {…},
     "keys": [{…}, …],
     "conversations": [{…, "messages": [UIMessage, …]}, …],
     "usage": [{…}, …]}

Every section is read in one transaction (``REPEATABLE READ`` on PostgreSQL, the WAL
snapshot on SQLite), so the document is one consistent view. Rows come from the database
through a server-side cursor, ``BATCH`` at a time, and leave as JSON at once: memory stays
the same whether a user has ten usage rows or ten million. A section is one entry of
``SECTIONS``: a name and a function of the connection and the user id that yields rows (or
one object). Keys are metadata only: a key's hash never leaves the database. Conversations
(the AI SDK chats) are large rows: they are read a few at a time and sent one by one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from interlock.backup.progress import Progress, Silent
from interlock.errors import NotFound
from interlock.privacy.sealed import Sealer, SealingKey
from interlock.store.database import Database
from interlock.store.models import ApiKey, Conversation, UsageRow, User
from interlock.store.users import USER_COLUMNS

EXPORTED = "user.exported"  # the audit log's action for an export
FORMAT = "interlock-export"
VERSION = 1
BATCH = 1000

Rows = Callable[[AsyncConnection, str], AsyncIterator[dict[str, Any]]]
Count = Callable[[AsyncConnection, str], Awaitable[int]]


@dataclass(frozen=True, slots=True)
class Section:
    """One key of the document: a list of rows, or one object when ``single``."""

    name: str
    rows: Rows
    count: Count | None = None  # rows to come, for progress; None: not counted
    single: bool = False
    batch: int = BATCH  # rows sent on at once (fewer for large rows)


async def _stream(
    conn: AsyncConnection, query: Select[Any, *tuple[Any, ...]], batch: int = BATCH
) -> AsyncIterator[dict[str, Any]]:
    result = await conn.stream(query.execution_options(yield_per=batch))
    names = tuple(result.keys())
    async for partition in result.partitions():
        for row in partition:
            yield dict(zip(names, row, strict=True))


async def profile(conn: AsyncConnection, user_id: str) -> AsyncIterator[dict[str, Any]]:
    result = await conn.execute(select(*USER_COLUMNS).where(User.id == user_id))
    names = tuple(result.keys())
    row = result.first()
    if row is None:
        raise NotFound("No user with this id.")
    yield dict(zip(names, row, strict=True))


KEY_COLUMNS = (
    ApiKey.id,
    ApiKey.short_id,
    ApiKey.name,
    ApiKey.created_at,
    ApiKey.expires_at,
    ApiKey.revoked_at,
    ApiKey.last_used_at,
    ApiKey.models,
    ApiKey.rpm,
    ApiKey.tpm,
    ApiKey.max_concurrent,
    ApiKey.daily_budget,
    ApiKey.monthly_budget,
)  # never ApiKey.key_hash


async def keys(conn: AsyncConnection, user_id: str) -> AsyncIterator[dict[str, Any]]:
    query = (
        select(*KEY_COLUMNS).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at, ApiKey.id)
    )
    async for row in _stream(conn, query):
        yield row


async def usage(conn: AsyncConnection, user_id: str) -> AsyncIterator[dict[str, Any]]:
    query = (
        select(UsageRow)
        .where(UsageRow.user_id == user_id)
        .order_by(UsageRow.created_at, UsageRow.request_id)
    )
    columns = [column for column in UsageRow.__table__.columns if column.name != "user_id"]
    async for row in _stream(conn, query.with_only_columns(*columns)):
        yield row


async def count_usage(conn: AsyncConnection, user_id: str) -> int:
    query = select(func.count()).select_from(UsageRow).where(UsageRow.user_id == user_id)
    return int(await conn.scalar(query) or 0)


async def count_keys(conn: AsyncConnection, user_id: str) -> int:
    query = select(func.count()).select_from(ApiKey).where(ApiKey.user_id == user_id)
    return int(await conn.scalar(query) or 0)


CONVERSATION_BATCH = 8  # a conversation may hold up to [aisdk] max_conversation_bytes


async def conversations(conn: AsyncConnection, user_id: str) -> AsyncIterator[dict[str, Any]]:
    query = (
        select(
            Conversation.id,
            Conversation.title,
            Conversation.created_at,
            Conversation.updated_at,
            Conversation.message_count,
            Conversation.size_bytes,
            Conversation.messages,
        )
        .where(Conversation.user_id == user_id)
        .order_by(Conversation.created_at, Conversation.id)
    )
    async for row in _stream(conn, query, CONVERSATION_BATCH):
        yield row


async def count_conversations(conn: AsyncConnection, user_id: str) -> int:
    query = select(func.count()).select_from(Conversation).where(Conversation.user_id == user_id)
    return int(await conn.scalar(query) or 0)


SECTIONS: tuple[Section, ...] = (
    Section("profile", profile, single=True),
    Section("keys", keys, count_keys),
    Section("conversations", conversations, count_conversations, batch=1),
    Section("usage", usage, count_usage),
)


def _encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


async def document(
    database: Database,
    user_id: str,
    *,
    exported_at: datetime,
    counts: dict[str, int],
    progress: Progress | None = None,
    sections: tuple[Section, ...] = SECTIONS,
) -> AsyncIterator[bytes]:
    """The JSON document in pieces (a row, a batch of rows); fills ``counts`` per section.

    ``NotFound`` if the user does not exist (raised before any piece).
    """
    progress = progress or Silent()
    async with database.engine.connect() as raw:
        conn = raw
        if database.dialect == "postgresql":
            conn = await raw.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            if await conn.scalar(select(User.id).where(User.id == user_id)) is None:
                raise NotFound("No user with this id.")
            yield _encode(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "exported_at": exported_at.astimezone(UTC).isoformat(),
                    "user_id": user_id,
                }
            )[:-1]
            for section in sections:
                total = await section.count(conn, user_id) if section.count else None
                progress.stage(f"exporting {section.name}", total)
                counts[section.name] = 0
                opening = b',\n"' + section.name.encode() + b'": '
                if section.single:
                    async for row in section.rows(conn, user_id):
                        yield opening + _encode(row)
                        counts[section.name] = 1
                    continue
                batch = [opening + b"["]
                pending = 0
                async for row in section.rows(conn, user_id):
                    batch.append((b"\n" if not counts[section.name] else b",\n") + _encode(row))
                    counts[section.name] += 1
                    pending += 1
                    if pending >= section.batch:
                        yield b"".join(batch)
                        progress.advance(pending)
                        batch, pending = [], 0
                batch.append(b"\n]")
                yield b"".join(batch)
                progress.advance(pending)
            progress.stage("sealing the export")
            yield b"\n}\n"


async def sealed_export(
    database: Database,
    user_id: str,
    key: SealingKey,
    *,
    now: datetime | None = None,
    progress: Progress | None = None,
    counts: dict[str, int] | None = None,
) -> AsyncIterator[bytes]:
    """The encrypted export file, piece by piece (see ``interlock.privacy.sealed``); fills
    ``counts`` (rows per section) if given."""
    exported_at = (now or datetime.now(UTC)).astimezone(UTC)
    counts = {} if counts is None else counts
    sealer = Sealer(key)
    started = False
    async for piece in document(
        database, user_id, exported_at=exported_at, counts=counts, progress=progress
    ):
        if not started:
            started = True
            yield sealer.start()
        if sealed := sealer.feed(piece):
            yield sealed
    yield sealer.close(user_id=user_id, exported_at=exported_at.isoformat(), counts=counts)
