"""The database tables, as SQLAlchemy 2 typed declarative models.

Every schema change here needs a migration in ``migrations/versions`` that produces exactly
the same schema; ``tests/integration/test_store.py`` compares the two on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UserRole = Literal["admin", "member"]
UserStatus = Literal["active", "disabled"]

# Stable constraint names on every backend, so later migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    """A random primary key: a uuid4 as 32 hex digits."""
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored as UTC
    and given its ``tzinfo`` back when read. A naive datetime is refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = _utc(value)
        # SQLite's text format has no offset: store the UTC wall time so text order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        # On SQLite, the text in one step: the decorator's step and then the DATETIME type's
        # formatting took 7 µs a value, the largest share of a usage row's insert.
        return _sqlite_text if dialect.name == "sqlite" else super().bind_processor(dialect)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_SQLITE_DATETIME = "%04d-%02d-%02d %02d:%02d:%02d.%06d"  # sqlalchemy.dialects.sqlite.DATETIME's


def _utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused rather than guessed."""
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamps must be timezone-aware")
    return value.astimezone(UTC)


def _sqlite_text(value: datetime | None) -> str | None:
    """What ``UTCDateTime`` stores on SQLite: the UTC wall time as SQLAlchemy's SQLite
    ``DATETIME`` writes it (``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    if value is None:
        return None
    value = _utc(value)
    return _SQLITE_DATETIME % (
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """Someone who holds API keys: a person or an application."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("role IN ('admin', 'member')", name="role"),
        CheckConstraint("status IN ('active', 'disabled')", name="status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    role: Mapped[UserRole] = mapped_column(String(16), default="member")
    tier: Mapped[str] = mapped_column(String(64), default="free")
    status: Mapped[UserStatus] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    # The `sub` of the identity provider's session tokens (JWTs) that this user signs in with.
    external_id: Mapped[str | None] = mapped_column(String(255), unique=True, index=True)
    # The user's own budgets, replacing their tier's where set (None: the tier's).
    daily_budget: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    monthly_budget: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))


class ApiKey(Base):
    """One API key of a user. Only its keyed hash is stored, never the key itself."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    short_id: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True, index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The key's own scope, each NULL meaning "as the owner's tier": it can only narrow that.
    models: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(BigInteger)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    daily_budget: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))
    monthly_budget: Mapped[Decimal | None] = mapped_column(Numeric(20, 6))


UsageSource = Literal["provider", "estimated"]


class UsageRow(Base):
    """One chat request, as billed: who, which model and deployment, tokens, cost, outcome.

    Written in batches by ``interlock.telemetry.ledger``; the request id makes a replayed
    write a no-op. No foreign keys: a bill outlives the user or key it names.
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        CheckConstraint("usage_source IN ('provider', 'estimated')", name="usage_source"),
        Index("ix_usage_records_user_id_created_at", "user_id", "created_at"),
        Index("ix_usage_records_model_created_at", "model", "created_at"),
    )

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    user_id: Mapped[str | None] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(64))
    tier: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))  # the public model asked for
    provider: Mapped[str] = mapped_column(String(64))
    deployment: Mapped[str] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(Integer)  # including the cached ones
    output_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    cost: Mapped[Decimal] = mapped_column(Numeric(20, 10))  # currency units
    latency_ms: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)  # the HTTP status sent; 499: the client left
    error: Mapped[str | None] = mapped_column(String(64))  # the error code, if any
    cache_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer)
    streaming: Mapped[bool] = mapped_column(Boolean)
    usage_source: Mapped[UsageSource] = mapped_column(String(16))
    partial: Mapped[bool] = mapped_column(Boolean)


JobOutcome = Literal["running", "ok", "failed", "skipped"]
JobTrigger = Literal["schedule", "manual"]


class JobLease(Base):
    """Which instance runs a job now: one row per job, taken by a conditional UPDATE.

    ``holder`` is NULL when the job is free. A holder renews ``expires_at`` while it runs;
    past it, the holder is taken for dead and any instance may take the lease. ``run_id`` is
    the run that took it last (kept after release), so a taker knows what it replaces.
    """

    __tablename__ = "job_leases"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(200))
    run_id: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class JobRun(Base):
    """One run of a scheduled job: when it was due, where and how it ran, what it did.

    The unique (job, scheduled_at) index makes each due time of a job run on one instance
    only: every instance inserts the row, and only the one whose insert succeeds runs it.
    """

    __tablename__ = "job_runs"
    __table_args__ = (
        CheckConstraint("outcome IN ('running', 'ok', 'failed', 'skipped')", name="outcome"),
        CheckConstraint("trigger IN ('schedule', 'manual')", name="trigger"),
        Index("ix_job_runs_job_scheduled_at", "job", "scheduled_at", unique=True),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job: Mapped[str] = mapped_column(String(64))
    scheduled_at: Mapped[datetime] = mapped_column(UTCDateTime())
    trigger: Mapped[JobTrigger] = mapped_column(String(16))
    instance: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[JobOutcome] = mapped_column(String(16))
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    error: Mapped[str | None] = mapped_column(String(1000))


class Conversation(Base):
    """One chat of a user, as the AI SDK front-end shows it: its ``UIMessage``s as JSON.

    The chat id is chosen by the client (``useChat``'s ``id``), so it is unique per user only:
    the key is (user, chat id), and one user can never reach or collide with another's chat.
    """

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_user_id_updated_at", "user_id", "updated_at"),)

    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    message_count: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)  # of ``messages`` as JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class AuditEntry(Base):
    """Something done to a user's data that must be provable later: an erasure, say.

    ``subject`` is the random id of the user concerned, never a name or an email; ``details``
    holds counts, never the data itself. Kept when the user is gone: that is its point.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_subject_action", "subject", "action"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    actor: Mapped[str] = mapped_column(String(200))  # who: "user:<id>", "cli:<os user>@<host>"
    action: Mapped[str] = mapped_column(String(64))  # what: "user.erased"
    subject: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
