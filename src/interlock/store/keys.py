"""``KeyStore``: users and their API keys, stored as keyed hashes only.

A key is found by ``hash_key(secret, key)`` through a unique index, so any key format works
(the operator's ``INTERLOCK_ADMIN_KEY`` need not be ours); keys in our format are checked
against their checksum first, so typos and garbage never reach the database. Lookups return
``KeyRecord``, a plain frozen value the auth layer can cache.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, cast

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
from interlock.auth.principal import UNLIMITED, Scope
from interlock.errors import InvalidRequest, NotFound
from interlock.store.database import Database, begin_exclusive
from interlock.store.models import ApiKey, User, UserRole, UserStatus
from interlock.store.users import UNSET, Unset

MIN_SECRET_BYTES = 32
MIN_ADMIN_KEY_LENGTH = 24
ADMIN_USER_NAME = "admin"
ADMIN_TIER = "enterprise"  # a default tier, without limits
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
    models: tuple[str, ...] | None = None  # the key's own scope; None: as the owner's tier
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    daily_budget: Decimal | None = None
    monthly_budget: Decimal | None = None
    user_daily_budget: Decimal | None = None  # the owner's own budgets; None: the tier's
    user_monthly_budget: Decimal | None = None

    def is_usable(self, now: datetime) -> bool:
        """Not revoked, not expired at ``now``, and held by an active user."""
        return (
            self.revoked_at is None
            and (self.expires_at is None or self.expires_at > now)
            and self.user_status == "active"
        )

    def status(self, now: datetime) -> Literal["active", "revoked", "expired"]:
        """The key's own state (whatever its user's)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    @property
    def scope(self) -> Scope:
        """The key's own scope, before narrowing by its owner's tier."""
        return Scope(
            models=None if self.models is None else frozenset(self.models),
            rpm=self.rpm,
            tpm=self.tpm,
            max_concurrent=self.max_concurrent,
            daily_budget=self.daily_budget,
            monthly_budget=self.monthly_budget,
        )

    @property
    def kind(self) -> KeyKind:
        return "test" if self.short_id.startswith("il_test_") else "live"


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
    ApiKey.models,
    ApiKey.rpm,
    ApiKey.tpm,
    ApiKey.max_concurrent,
    ApiKey.daily_budget,
    ApiKey.monthly_budget,
    User.daily_budget,
    User.monthly_budget,
).join(User, ApiKey.user_id == User.id)


def _record(row: Any) -> KeyRecord:
    record = KeyRecord(*row)
    if record.models is not None:  # JSON gives a list; the record is immutable
        object.__setattr__(record, "models", tuple(record.models))
    return record


def _scope_columns(scope: Scope) -> dict[str, Any]:
    return {
        "models": None if scope.models is None else sorted(scope.models),
        "rpm": scope.rpm,
        "tpm": scope.tpm,
        "max_concurrent": scope.max_concurrent,
        "daily_budget": scope.daily_budget,
        "monthly_budget": scope.monthly_budget,
    }


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
        scope: Scope = UNLIMITED,
    ) -> tuple[ApiKey, str]:
        """A new key for ``user_id``: the stored row and the plaintext key, returned only here.

        ``scope`` is stored as given: checking it against the owner's tier is the caller's
        job (``Tiers.check_key_scope``). Raises ``NotFound`` if there is no such user.
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
                    **_scope_columns(scope),
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

    async def get_key(self, key_id: str, *, user_id: str | None = None) -> KeyRecord | None:
        """The key with this id; None if there is none, or (given ``user_id``) it is not
        that user's."""
        query = _RECORD_QUERY.where(ApiKey.id == key_id)
        if user_id is not None:
            query = query.where(ApiKey.user_id == user_id)
        async with self._db.session() as session:
            row = (await session.execute(query)).first()
        return None if row is None else _record(row)

    async def list_keys(self, user_id: str | None, *, limit: int = 1000) -> list[KeyRecord]:
        """Every key of ``user_id`` (of everyone if None), oldest first, at most ``limit``."""
        query = _RECORD_QUERY
        if user_id is not None:
            query = query.where(ApiKey.user_id == user_id)
        query = query.order_by(ApiKey.created_at, ApiKey.id).limit(max(1, limit))
        async with self._db.session() as session:
            return [_record(row) for row in await session.execute(query)]

    async def revoke_key(self, key_id: str, *, user_id: str | None = None) -> bool:
        """Revoke a key now. False if there is no such key (of ``user_id``, if given) or it
        was already revoked."""
        statement = (
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=_now())
        )
        if user_id is not None:
            statement = statement.where(ApiKey.user_id == user_id)
        async with self._db.session() as session:
            result = cast(CursorResult[Any], await session.execute(statement))
            await session.commit()
        return result.rowcount == 1

    async def update_key(
        self,
        key_id: str,
        *,
        user_id: str | None = None,
        name: str | Unset = UNSET,
        expires_at: datetime | Unset | None = UNSET,
        scope: Scope | Unset = UNSET,
    ) -> KeyRecord | None:
        """Change a key's name, expiry or scope (replaced whole); the key as it is now.
        None if there is no such key (of ``user_id``, if given)."""
        values: dict[str, Any] = {}
        if not isinstance(name, Unset):
            values["name"] = name
        if not isinstance(expires_at, Unset):
            if expires_at is not None and expires_at.tzinfo is None:
                raise ValueError("expires_at must be timezone-aware")
            values["expires_at"] = expires_at
        if not isinstance(scope, Unset):
            values.update(_scope_columns(scope))
        if values:
            statement = update(ApiKey).where(ApiKey.id == key_id).values(**values)
            if user_id is not None:
                statement = statement.where(ApiKey.user_id == user_id)
            async with self._db.session() as session:
                await session.execute(statement)
                await session.commit()
        return await self.get_key(key_id, user_id=user_id)

    async def rotate_key(
        self, key_id: str, *, user_id: str | None = None
    ) -> tuple[KeyRecord, str] | None:
        """Replace a key: a new one with the same name, expiry and scope, and the old one
        revoked, both at once. The new key's record and plaintext (returned only here).

        None if there is no such key (of ``user_id``, if given); ``InvalidRequest`` if it is
        revoked or expired (make a new one instead). Of two rotations at once, one wins.
        """
        old = await self.get_key(key_id, user_id=user_id)
        if old is None:
            return None
        now = _now()
        if old.status(now) != "active":
            raise InvalidRequest(
                f"This key is {old.status(now)}: create a new key instead.",
                code=f"key_{old.status(now)}",
            )
        key = generate_key(old.kind)
        row = ApiKey(
            short_id=short_id(key),
            key_hash=hash_key(self._secret, key),
            user_id=old.user_id,
            name=old.name,
            expires_at=old.expires_at,
            **_scope_columns(old.scope),
        )
        revoke = (
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        async with self._db.session() as session, session.begin():
            result = cast(CursorResult[Any], await session.execute(revoke))
            if result.rowcount != 1:  # revoked meanwhile, maybe by another rotation
                raise InvalidRequest(
                    "This key is revoked: create a new key instead.", code="key_revoked"
                )
            session.add(row)
        new = await self.get_key(row.id)
        assert new is not None
        return new, key

    async def record_use(self, key_ids: Collection[str], at: datetime) -> None:
        """Set ``last_used_at`` of these keys to ``at``, in one statement."""
        if not key_ids:
            return
        statement = update(ApiKey).where(ApiKey.id.in_(sorted(key_ids))).values(last_used_at=at)
        async with self._db.session() as session:
            await session.execute(statement)
            await session.commit()

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
            admin = User(name=ADMIN_USER_NAME, role="admin", tier=ADMIN_TIER, status="active")
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
