"""The audit log, read: what was done to users' data, newest first (see ``AuditEntry``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from interlock.store.database import Database
from interlock.store.models import AuditEntry

MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: str
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any] | None


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
