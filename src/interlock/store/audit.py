"""The audit log: what was done to users' data (see ``AuditEntry``). Erasures write theirs in
their own transaction (``interlock.privacy.erasure``); exports through ``record``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select

from interlock.store.database import Database
from interlock.store.models import AuditEntry, new_id

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: str
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any] | None


async def record(
    database: Database,
    *,
    actor: str,
    action: str,
    subject: str,
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Add one entry (``details``: counts and modes, never personal data)."""
    async with database.engine.begin() as conn:
        await conn.execute(
            insert(AuditEntry).values(
                id=new_id(),
                at=(now or datetime.now(UTC)).astimezone(UTC),
                actor=actor[:200],
                action=action,
                subject=subject,
                details=details,
            )
        )


async def recent(
    database: Database, *, subject: str | None = None, limit: int = 100
) -> list[AuditRecord]:
    """The latest entries (about ``subject`` only, if given), newest first."""
    query = select(
        AuditEntry.id,
        AuditEntry.at,
        AuditEntry.actor,
        AuditEntry.action,
        AuditEntry.subject,
        AuditEntry.details,
    ).order_by(AuditEntry.at.desc(), AuditEntry.id)
    if subject is not None:
        query = query.where(AuditEntry.subject == subject)
    async with database.engine.connect() as conn:
        rows = await conn.execute(query.limit(max(1, min(limit, MAX_PAGE))))
        return [AuditRecord(*row) for row in rows]
