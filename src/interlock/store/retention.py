"""Deleting rows past their retention, in small batches.

Each batch is its own short transaction (select up to ``batch`` primary keys, delete them),
so a large backlog never holds a long lock: SQLite's single writer and PostgreSQL's row
locks are taken for one batch at a time, and the gateway keeps writing meanwhile.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, not_, or_, select, tuple_

from interlock.store.database import Database
from interlock.store.keys import ENV_SHORT_ID_PREFIX
from interlock.store.models import ApiKey, Conversation, UsageRow

DEFAULT_BATCH = 5000


async def delete_dead_keys(db: Database, before: datetime, *, batch: int = DEFAULT_BATCH) -> int:
    """Delete API keys revoked or expired before ``before``; how many.

    Keys installed from ``INTERLOCK_ADMIN_KEY`` are kept: their row is what says that the key
    was revoked or has expired, and without it the old key would be installed afresh at the
    next start. There are only ever a few.
    """
    condition = (
        or_(ApiKey.revoked_at < before, ApiKey.expires_at < before),
        not_(ApiKey.short_id.startswith(ENV_SHORT_ID_PREFIX, autoescape=True)),
    )
    return await _delete_in_batches(db, ApiKey.id, condition, batch)


async def delete_usage_before(db: Database, before: datetime, *, batch: int = DEFAULT_BATCH) -> int:
    """Delete usage rows of requests made before ``before``; how many."""
    return await _delete_in_batches(db, UsageRow.request_id, (UsageRow.created_at < before,), batch)


async def delete_conversations_before(
    db: Database, before: datetime, *, batch: int = DEFAULT_BATCH
) -> int:
    """Delete conversations last changed before ``before``; how many."""
    key = tuple_(Conversation.user_id, Conversation.id)  # a conversation's key is both
    deleted = 0
    while True:
        async with db.engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(Conversation.user_id, Conversation.id)
                    .where(Conversation.updated_at < before)
                    .limit(batch)
                )
            ).all()
            if rows:
                await conn.execute(
                    delete(Conversation).where(key.in_([tuple(row) for row in rows]))
                )
        deleted += len(rows)
        if len(rows) < batch:
            return deleted


async def _delete_in_batches(
    db: Database,
    key: Any,
    condition: tuple[ColumnElement[bool], ...],
    batch: int,
) -> int:
    table = key.class_
    deleted = 0
    while True:
        async with db.engine.begin() as conn:
            ids = (await conn.execute(select(key).where(*condition).limit(batch))).scalars().all()
            if ids:
                await conn.execute(delete(table).where(key.in_(ids)))
        deleted += len(ids)
        if len(ids) < batch:
            return deleted
