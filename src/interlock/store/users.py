"""``UserStore``: the users table, as plain values.

Lookups return ``UserRecord`` (frozen, safe to cache). Uniqueness (email, session subject) is
the database's job; a collision becomes a 400 naming the field. The last active admin can
be neither demoted nor disabled, checked in a transaction that instances take in turn.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from interlock.errors import InvalidRequest, NotFound
from interlock.store.database import Database, begin_exclusive
from interlock.store.models import User, UserRole, UserStatus

# Any fixed 64-bit number, the same in every instance: "ilusersx".
USERS_LOCK_ID = 0x696C757365727378
MAX_PAGE = 1000


class Unset(enum.Enum):
    UNSET = enum.auto()


UNSET = Unset.UNSET
"""Marks an ``update`` argument that was not given (as opposed to None, which clears)."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user, as plain values."""

    id: str
    name: str
    email: str | None
    role: UserRole
    tier: str
    status: UserStatus
    external_id: str | None
    created_at: datetime
    daily_budget: Decimal | None = None  # the user's own budgets; None: the tier's
    monthly_budget: Decimal | None = None

    @property
    def is_active(self) -> bool:
        return self.status == "active"


def user_record(user: User) -> UserRecord:
    return UserRecord(
        id=user.id,
        name=user.name,
        email=user.email,
        role=user.role,
        tier=user.tier,
        status=user.status,
        external_id=user.external_id,
        created_at=user.created_at,
        daily_budget=user.daily_budget,
        monthly_budget=user.monthly_budget,
    )


# A user's columns, as UserRecord's fields in order (the export reads the same).
USER_COLUMNS = (
    User.id,
    User.name,
    User.email,
    User.role,
    User.tier,
    User.status,
    User.external_id,
    User.created_at,
    User.daily_budget,
    User.monthly_budget,
)
_SELECT = select(*USER_COLUMNS)


def _row(row: Any) -> UserRecord:
    return UserRecord(*row)


class UserStore:
    """Users in ``db``."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        name: str,
        *,
        role: UserRole = "member",
        tier: str = "free",
        email: str | None = None,
        external_id: str | None = None,
        daily_budget: Decimal | None = None,
        monthly_budget: Decimal | None = None,
    ) -> UserRecord:
        """A new active user. ``InvalidRequest`` if the email or external id is taken."""
        if role not in ("admin", "member"):
            raise ValueError(f"unknown role {role!r}: expected 'admin' or 'member'")
        user = User(
            name=name,
            role=role,
            tier=tier,
            email=email,
            external_id=external_id,
            status="active",
            daily_budget=daily_budget,
            monthly_budget=monthly_budget,
        )
        async with self._db.session() as session:
            session.add(user)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                raise await self._collision(session, email, external_id) from None
        return user_record(user)

    async def get(self, user_id: str) -> UserRecord | None:
        async with self._db.session() as session:
            row = (await session.execute(_SELECT.where(User.id == user_id))).first()
        return None if row is None else _row(row)

    async def find_by_external_id(self, external_id: str) -> UserRecord | None:
        """The user whose sessions carry the subject ``external_id``."""
        async with self._db.session() as session:
            row = (await session.execute(_SELECT.where(User.external_id == external_id))).first()
        return None if row is None else _row(row)

    async def get_or_create_external(self, external_id: str, *, name: str, tier: str) -> UserRecord:
        """The user with this session subject, created (a member of ``tier``) if none is.

        Two first requests at once both end with the same user: the loser of the insert race
        reads the winner's row.
        """
        found = await self.find_by_external_id(external_id)
        if found is not None:
            return found
        try:
            return await self.create(name, tier=tier, external_id=external_id)
        except InvalidRequest:
            found = await self.find_by_external_id(external_id)
            if found is None:
                raise
            return found

    async def list_users(self, *, limit: int = 100, offset: int = 0) -> list[UserRecord]:
        """Users, oldest first."""
        query = (
            _SELECT.order_by(User.created_at, User.id)
            .limit(max(1, min(limit, MAX_PAGE)))
            .offset(max(0, offset))
        )
        async with self._db.session() as session:
            return [_row(row) for row in await session.execute(query)]

    async def update(
        self,
        user_id: str,
        *,
        name: str | Unset = UNSET,
        email: str | Unset | None = UNSET,
        role: UserRole | Unset = UNSET,
        tier: str | Unset = UNSET,
        status: UserStatus | Unset = UNSET,
        external_id: str | Unset | None = UNSET,
        daily_budget: Decimal | Unset | None = UNSET,
        monthly_budget: Decimal | Unset | None = UNSET,
    ) -> UserRecord:
        """Change the given fields; the user as it is now.

        ``NotFound`` if there is no such user; ``InvalidRequest`` if the email or external id
        is taken, or if the change would leave no active admin.
        """
        changes: dict[str, Any] = {
            field: value
            for field, value in (
                ("name", name),
                ("email", email),
                ("role", role),
                ("tier", tier),
                ("status", status),
                ("external_id", external_id),
                ("daily_budget", daily_budget),
                ("monthly_budget", monthly_budget),
            )
            if value is not UNSET
        }
        async with self._db.session() as session:
            try:
                async with session.begin():
                    await begin_exclusive(await session.connection(), USERS_LOCK_ID)
                    user = await session.get(User, user_id)
                    if user is None:
                        raise NotFound("No user with this id.")
                    demoted = changes.get("role", "admin") != "admin"
                    disabled = changes.get("status", "active") != "active"
                    if user.role == "admin" and user.status == "active" and (demoted or disabled):
                        await self._keep_an_admin(session, user_id)
                    for field, value in changes.items():
                        setattr(user, field, value)
            except IntegrityError:
                raise await self._collision(
                    session,
                    changes.get("email"),
                    changes.get("external_id"),
                ) from None
            return user_record(user)

    async def _keep_an_admin(self, session: AsyncSession, leaving: str) -> None:
        others = await session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.role == "admin", User.status == "active", User.id != leaving)
        )
        if not others:
            raise InvalidRequest(
                "This is the last active admin: make another user an admin first.",
                code="last_admin",
            )

    async def _collision(
        self, session: AsyncSession, email: str | None, external_id: str | None
    ) -> InvalidRequest:
        """Which unique field a failed write collided on, as the error to raise."""
        if email is not None:
            taken = await session.scalar(select(User.id).where(User.email == email))
            if taken is not None:
                return InvalidRequest(
                    "A user with this email already exists.", code="email_taken", param="email"
                )
        return InvalidRequest(
            "Another user already has this external id.",
            code="external_id_taken",
            param="external_id",
        )
