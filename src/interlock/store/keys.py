"""``KeyStore``: users and their API keys, stored as keyed hashes only.

A key is found by ``hash_key(secret, key)`` through a unique index, so any key format works
(the operator's ``INTERLOCK_ADMIN_KEY`` need not be ours); keys in our format are checked
against their checksum first, so typos and garbage never reach the database. Lookups return
``KeyRecord``, a plain frozen value the auth layer can cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from interlock.auth.keys import (
    MAX_KEY_LENGTH,
    KeyKind,
    generate_key,
    has_valid_checksum,
    hash_key,
    short_id,
)
from interlock.errors import InvalidRequest, NotFound
from interlock.store.database import Database, begin_exclusive
from interlock.store.models import ApiKey, User, UserRole, UserStatus

MIN_SECRET_BYTES = 32
MIN_ADMIN_KEY_LENGTH = 24
ADMIN_USER_NAME = "admin"
ENV_KEY_NAME = "INTERLOCK_ADMIN_KEY"
# Short ids of operator-provided keys; generated keys' short ids start with "il_".
ENV_SHORT_ID_PREFIX = "env_"
# Any fixed 64-bit number, the same in every instance: "iladmink".
ADMIN_LOCK_ID = 0x696C61646D696E6B
_CREATE_ATTEMPTS = 3


class AdminKeyError(Exception):
    """``INTERLOCK_ADMIN_KEY`` cannot be used as it is; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One API key and the user holding it, as plain values (no ORM object, safe to cache)."""

    key_id: str
    short_id: str
    name: str
    user_id: str
    user_name: str
    role: UserRole
    tier: str
    user_status: UserStatus
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def is_usable(self, now: datetime) -> bool:
        """Not revoked, not expired at ``now``, and held by an active user."""
        return (
            self.revoked_at is None
            and (self.expires_at is None or self.expires_at > now)
            and self.user_status == "active"
        )


# A key and its user, as KeyRecord's fields in order. An immutable SQL expression, no I/O.
_RECORD_QUERY = select(
    ApiKey.id,
    ApiKey.short_id,
    ApiKey.name,
    User.id,
    User.name,
    User.role,
    User.tier,
    User.status,
    ApiKey.created_at,
    ApiKey.expires_at,
    ApiKey.revoked_at,
    ApiKey.last_used_at,
).join(User, ApiKey.user_id == User.id)


def _record(row: Any) -> KeyRecord:
    return KeyRecord(*row)


def _could_be_key(key: object) -> bool:
    """Cheap checks that let garbage skip hashing and the database. Never raises."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        return False
    if not key.isascii() or not key.isprintable():
        return False
    return has_valid_checksum(key) if key.startswith("il_") else True


def _now() -> datetime:
    return datetime.now(UTC)


class KeyStore:
    """Users and API keys in ``db``; keys are hashed under the server ``secret``."""

    def __init__(self, db: Database, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the server secret must be at least {MIN_SECRET_BYTES} bytes")
        self._db = db
        self._secret = secret

    async def create_user(
        self,
        name: str,
        *,
        role: UserRole = "member",
        tier: str = "free",
        email: str | None = None,
    ) -> User:
        """A new active user. Raises ``InvalidRequest`` if the email is already taken."""
        if role not in ("admin", "member"):
            raise ValueError(f"unknown role {role!r}: expected 'admin' or 'member'")
        user = User(name=name, role=role, tier=tier, email=email, status="active")
        async with self._db.session() as session:
            session.add(user)
            try:
                await session.commit()
            except IntegrityError:
                raise InvalidRequest(
                    "A user with this email already exists.", code="email_taken", param="email"
                ) from None
        return user

    async def create_key(
        self,
        user_id: str,
        *,
        name: str = "",
        expires_at: datetime | None = None,
        kind: KeyKind = "live",
    ) -> tuple[ApiKey, str]:
        """A new key for ``user_id``: the stored row and the plaintext key, returned only here.

        Raises ``NotFound`` if there is no such user.
        """
        if expires_at is not None and expires_at.tzinfo is None:
            raise ValueError("expires_at must be timezone-aware")
        for attempt in range(_CREATE_ATTEMPTS):
            async with self._db.session() as session:
                if await session.get(User, user_id) is None:
                    raise NotFound("No user with this id.")
                key = generate_key(kind)
                row = ApiKey(
                    short_id=short_id(key),
                    key_hash=hash_key(self._secret, key),
                    user_id=user_id,
                    name=name,
                    expires_at=expires_at,
                )
                session.add(row)
                try:
                    await session.commit()
                except IntegrityError:
                    # Two keys sharing their first 8 random characters: 1 in 62**8. Draw again.
                    if attempt + 1 == _CREATE_ATTEMPTS:
                        raise
                    continue
                return row, key
        raise AssertionError("unreachable")  # pragma: no cover

    async def find_by_key(self, key: str) -> KeyRecord | None:
        """The record of ``key``, revoked or expired ones included; None if it is unknown.

        Never raises for a strange string (huge, non-ASCII, quotes, NUL…): that is None.
        """
        if not _could_be_key(key):
            return None
        digest = hash_key(self._secret, key)
        async with self._db.session() as session:
            row = (await session.execute(_RECORD_QUERY.where(ApiKey.key_hash == digest))).first()
        return None if row is None else _record(row)

    async def list_keys(self, user_id: str) -> list[KeyRecord]:
        """Every key of ``user_id``, oldest first (empty for an unknown user)."""
        query = _RECORD_QUERY.where(ApiKey.user_id == user_id)
        async with self._db.session() as session:
            rows = await session.execute(query.order_by(ApiKey.created_at, ApiKey.id))
            return [_record(row) for row in rows]

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key now. False if there is no such key or it was already revoked."""
        statement = (
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=_now())
        )
        async with self._db.session() as session:
            result = cast(CursorResult[Any], await session.execute(statement))
            await session.commit()
        return result.rowcount == 1

    async def ensure_admin_key(self, explicit_key: str | None) -> str | None:
        """Make sure an admin user exists and holds a usable key. Called at every start.

        With ``explicit_key`` (``INTERLOCK_ADMIN_KEY``): its hash is stored for the admin user
        once (later starts find it); if it differs from the previously provided key, that one
        is revoked. Returns None. Raises ``AdminKeyError`` if the key was revoked or expired
        since (set a new one), or belongs to a user who is not an admin.

        Without it: if no admin holds a usable key, a new key is made and its plaintext
        returned, for the caller to show once; otherwise None. Keys from an earlier
        ``INTERLOCK_ADMIN_KEY`` stay as they are.

        Instances starting together take turns, so only one of them creates anything.
        """
        if explicit_key is not None:
            _check_admin_key(explicit_key)
        now = _now()
        async with self._db.session() as session, session.begin():
            await begin_exclusive(await session.connection(), ADMIN_LOCK_ID)
            if explicit_key is not None:
                await self._install_admin_key(session, explicit_key, now)
                return None
            if await self._has_usable_admin_key(session, now):
                return None
            admin = await self._admin_user(session)
            key = generate_key("live")
            session.add(
                ApiKey(
                    short_id=short_id(key),
                    key_hash=hash_key(self._secret, key),
                    user_id=admin.id,
                    name="first admin key",
                )
            )
        return key

    async def _install_admin_key(self, session: AsyncSession, key: str, now: datetime) -> None:
        digest = hash_key(self._secret, key)
        found = (
            await session.execute(
                select(ApiKey, User.role)
                .join(User, ApiKey.user_id == User.id)
                .where(ApiKey.key_hash == digest)
            )
        ).first()
        if found is not None:
            row, role = found
            if role != "admin":
                raise AdminKeyError(
                    f"{ENV_KEY_NAME} is the key of a user who is not an admin: choose another"
                )
            if row.revoked_at is not None:
                raise AdminKeyError(f"{ENV_KEY_NAME} has been revoked: set a new one")
            if row.expires_at is not None and row.expires_at <= now:
                raise AdminKeyError(f"{ENV_KEY_NAME} has expired: set a new one")
            return
        await session.execute(
            update(ApiKey)
            .where(
                ApiKey.short_id.startswith(ENV_SHORT_ID_PREFIX, autoescape=True),
                ApiKey.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        admin = await self._admin_user(session)
        session.add(
            ApiKey(
                short_id=ENV_SHORT_ID_PREFIX + digest.hex()[:12],
                key_hash=digest,
                user_id=admin.id,
                name=ENV_KEY_NAME,
            )
        )

    async def _has_usable_admin_key(self, session: AsyncSession, now: datetime) -> bool:
        query = (
            select(ApiKey.id)
            .join(User, ApiKey.user_id == User.id)
            .where(
                User.role == "admin",
                User.status == "active",
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            )
            .limit(1)
        )
        return (await session.scalar(query)) is not None

    async def _admin_user(self, session: AsyncSession) -> User:
        """The oldest active admin, created if there is none."""
        admin = await session.scalar(
            select(User)
            .where(User.role == "admin", User.status == "active")
            .order_by(User.created_at, User.id)
            .limit(1)
        )
        if admin is None:
            admin = User(name=ADMIN_USER_NAME, role="admin", tier="free", status="active")
            session.add(admin)
            await session.flush()
        return admin


def _check_admin_key(key: str) -> None:
    if not MIN_ADMIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH:
        raise AdminKeyError(
            f"{ENV_KEY_NAME} must be {MIN_ADMIN_KEY_LENGTH} to {MAX_KEY_LENGTH} characters long"
        )
    if not key.isascii() or not key.isprintable():
        raise AdminKeyError(f"{ENV_KEY_NAME} must be printable ASCII characters")
    if key.startswith("il_") and not has_valid_checksum(key):
        raise AdminKeyError(
            f"{ENV_KEY_NAME} starts with il_ but is not a valid Interlock key "
            "(checksum mismatch): copy it again, or use a key without that prefix"
        )
