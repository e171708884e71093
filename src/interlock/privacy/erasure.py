"""Erasing a user (the right to be forgotten), in one transaction, recorded in the audit log.

One transaction, taken in turn with every other change of users (``USERS_LOCK_ID``):

1. refuse if the user is the last active admin (``last_admin``);
2. each step of ``STEPS``: delete the user's keys and conversations; anonymise their usage
   rows (``user_id`` becomes ``"erased"``, ``key_id`` NULL: the bill's totals stay right,
   nobody is named);
3. delete the user's row;
4. add an ``audit_log`` row: who asked, when, and how many rows each step touched — never
   the erased name, email or content.

Either everything happened or nothing did. Run again for the same id, it finds the audit
row and answers with what the first run did (``already=True``): retrying after a lost answer
is safe. A retry anonymises again any usage row of the user written since (a gateway's
ledger writes rows in batches, so a request that ended just before the erasure may land just
after it). The response cache lives outside the database: the caller
orphans the user's entries afterwards (``ResponseCache.forget_user``), retried along.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from interlock.errors import InvalidRequest, NotFound
from interlock.store.database import Database, begin_exclusive
from interlock.store.models import ApiKey, AuditEntry, Conversation, UsageRow, User, new_id
from interlock.store.users import USERS_LOCK_ID

ERASED = "erased"  # the user_id of anonymised usage rows
ACTION = "user.erased"

Step = Callable[[AsyncConnection, str], Awaitable[int]]


async def delete_keys(conn: AsyncConnection, user_id: str) -> int:
    result = await conn.execute(delete(ApiKey).where(ApiKey.user_id == user_id))
    return int(result.rowcount)


async def anonymise_usage(conn: AsyncConnection, user_id: str) -> int:
    result = await conn.execute(
        update(UsageRow).where(UsageRow.user_id == user_id).values(user_id=ERASED, key_id=None)
    )
    return int(result.rowcount)


async def delete_conversations(conn: AsyncConnection, user_id: str) -> int:
    result = await conn.execute(delete(Conversation).where(Conversation.user_id == user_id))
    return int(result.rowcount)


STEPS: tuple[tuple[str, Step], ...] = (
    ("keys_deleted", delete_keys),
    ("conversations_deleted", delete_conversations),
    ("usage_rows_anonymised", anonymise_usage),
)


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure did (``already``: a previous one did it; this one changed nothing)."""

    user_id: str
    at: datetime
    actor: str
    counts: dict[str, int]
    already: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "erased_at": self.at.isoformat(),
            "already_erased": self.already,
            **self.counts,
        }


async def _previous(conn: AsyncConnection, user_id: str) -> Erasure | None:
    row = (
        await conn.execute(
            select(AuditEntry.at, AuditEntry.actor, AuditEntry.details)
            .where(AuditEntry.subject == user_id, AuditEntry.action == ACTION)
            .order_by(AuditEntry.at)
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    counts = {name: int(value) for name, value in (row.details or {}).items()}
    return Erasure(user_id, row.at, row.actor, counts, already=True)


async def erase_user(
    database: Database, user_id: str, *, actor: str, now: datetime | None = None
) -> Erasure:
    """Erase ``user_id`` (see the module doc). ``NotFound`` if no such user ever existed
    here; ``InvalidRequest`` (``last_admin``) for the last active admin."""
    at = (now or datetime.now(UTC)).astimezone(UTC)
    async with database.engine.connect() as conn, conn.begin():
        await begin_exclusive(conn, USERS_LOCK_ID)
        user = (
            await conn.execute(select(User.role, User.status).where(User.id == user_id))
        ).first()
        if user is None:
            previous = await _previous(conn, user_id)
            if previous is None:
                raise NotFound("No user with this id.")
            await anonymise_usage(conn, user_id)
            return previous
        if user.role == "admin" and user.status == "active":
            others = await conn.scalar(
                select(func.count())
                .select_from(User)
                .where(User.role == "admin", User.status == "active", User.id != user_id)
            )
            if not others:
                raise InvalidRequest(
                    "This is the last active admin: make another user an admin first.",
                    code="last_admin",
                )
        counts = {name: await step(conn, user_id) for name, step in STEPS}
        await conn.execute(delete(User).where(User.id == user_id))
        await conn.execute(
            insert(AuditEntry).values(
                id=new_id(), at=at, actor=actor, action=ACTION, subject=user_id, details=counts
            )
        )
    return Erasure(user_id, at, actor, counts)
