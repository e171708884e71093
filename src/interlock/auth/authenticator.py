"""Turns a presented credential into a ``Principal``, or refuses it.

The credential's shape decides how: with sessions configured, a bearer token of three
base64url segments is a JWT (``interlock.auth.sessions``); anything else is an API key.

API keys are looked up by their keyed hash; session subjects by the user's external id. The
results (found or not; for sessions, only of verified tokens) are cached in memory for
``cache_ttl`` seconds — one second by default, which bounds how long a revoked or expired key
or a disabled user keeps working on another instance — so the steady-state hot path makes no
database round trip. A change made through this instance calls ``forget`` and takes effect at
once here. The principal's effective scope (its tier's, narrowed by the key's) is computed
when it is built and cached with it.

Nothing here logs a credential, and no credential ever reaches an error message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

from interlock.auth.keys import KeyHasher, has_valid_checksum
from interlock.auth.principal import NO_ACCESS, UNLIMITED, Principal, Scope
from interlock.auth.sessions import SessionVerifier, looks_like_jwt
from interlock.auth.tiers import Tiers
from interlock.errors import AuthenticationFailed
from interlock.store.keys import KeyRecord
from interlock.store.users import UserRecord

MAX_CREDENTIAL_LENGTH = 512
_CACHE_LIMIT = 100_000
_MAX_USED_KEYS = 100_000


class KeyLookup(Protocol):
    async def find_by_key(self, key: str) -> KeyRecord | None: ...


class SubjectLookup(Protocol):
    """Users by session subject (``UserStore``)."""

    async def find_by_external_id(self, external_id: str) -> UserRecord | None: ...

    async def get_or_create_external(
        self, external_id: str, *, name: str, tier: str
    ) -> UserRecord: ...


DEVELOPMENT_PRINCIPAL = Principal(
    user_id="development",
    user_name="development",
    role="admin",
    tier="enterprise",
    key_id=None,
    via="development",
)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, or None if there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class Authenticator:
    def __init__(
        self,
        keys: KeyLookup,
        secret: bytes,
        *,
        tiers: Tiers | None = None,
        sessions: SessionVerifier | None = None,
        users: SubjectLookup | None = None,
        create_users: bool = False,
        cache_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        insecure_no_auth: bool = False,
    ) -> None:
        if sessions is not None and users is None:
            raise ValueError("sessions need a user lookup")
        self._keys = keys
        self._hash = KeyHasher(secret)
        self._tiers = tiers
        self._sessions = sessions
        self._users = users
        self._create_users = create_users
        self._ttl = cache_ttl
        self._clock = clock
        self._insecure = insecure_no_auth
        self._loading: dict[bytes, asyncio.Future[tuple[Principal | None, datetime | None]]] = {}
        self._cache: dict[bytes, tuple[float, Principal | None, datetime | None]] = {}
        self._subjects: dict[str, tuple[float, Principal | None]] = {}
        self._used: set[str] = set()

    async def authenticate(self, credential: str | None) -> Principal:
        """The principal behind ``credential`` (a bearer token or API key header value)."""
        if self._insecure:
            return DEVELOPMENT_PRINCIPAL
        if not credential:
            raise AuthenticationFailed("Missing API key: send it as `Authorization: Bearer <key>`.")
        if self._sessions is not None and looks_like_jwt(credential):
            return await self._from_session(self._sessions, credential)
        return await self._from_key(credential)

    async def _from_key(self, key: str) -> Principal:
        if len(key) > MAX_CREDENTIAL_LENGTH or not key.isascii() or not key.isprintable():
            raise AuthenticationFailed()
        digest = self._hash(key)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            principal, expires_at = cached[1], cached[2]
        else:
            # Checked on the way to the database only: a key in the cache has passed it.
            if key.startswith("il_") and not has_valid_checksum(key):
                raise AuthenticationFailed("Invalid API key (checksum mismatch: is it mistyped?).")
            principal, expires_at = await self._load_once(digest, key, now)
        if principal is None or (expires_at is not None and expires_at <= datetime.now(UTC)):
            raise AuthenticationFailed()
        if principal.key_id is not None and len(self._used) < _MAX_USED_KEYS:
            self._used.add(principal.key_id)
        return principal

    async def _load_once(
        self, digest: bytes, key: str, now: float
    ) -> tuple[Principal | None, datetime | None]:
        """Load a key's record once however many requests miss the cache together: when a
        cached entry expires under load, one query refreshes it for all of them."""
        pending = self._loading.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[tuple[Principal | None, datetime | None]]
        future = asyncio.get_running_loop().create_future()
        self._loading[digest] = future
        try:
            loaded = await self._load(key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(loaded)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[digest] = (now + self._ttl, *loaded)
            return loaded
        finally:
            del self._loading[digest]

    async def _load(self, key: str) -> tuple[Principal | None, datetime | None]:
        record = await self._keys.find_by_key(key)
        if record is None or record.revoked_at is not None or record.user_status != "active":
            return None, None
        owner, known = self._owner_scope(
            record.tier, record.user_daily_budget, record.user_monthly_budget
        )
        principal = Principal(
            user_id=record.user_id,
            user_name=record.user_name,
            role=record.role,
            tier=record.tier,
            key_id=record.key_id,
            scope=owner.narrowed_by(record.scope) if known else NO_ACCESS,
            owner_scope=owner,
            tier_known=known,
            via="key",
        )
        return principal, record.expires_at

    async def _from_session(self, sessions: SessionVerifier, token: str) -> Principal:
        claims = await sessions.verify(token)
        now = self._clock()
        cached = self._subjects.get(claims.subject)
        if cached is not None and cached[0] > now:
            principal = cached[1]
        else:
            principal = await self._load_subject(claims.subject, claims.name or claims.email)
            if len(self._subjects) >= _CACHE_LIMIT:
                self._subjects.clear()
            self._subjects[claims.subject] = (now + self._ttl, principal)
        if principal is None:
            raise AuthenticationFailed("No active user for this session.")
        return principal

    async def _load_subject(self, subject: str, name: str | None) -> Principal | None:
        assert self._users is not None
        if self._create_users:
            tier = self._tiers.default if self._tiers is not None else "free"
            user = await self._users.get_or_create_external(
                subject, name=(name or subject)[:200], tier=tier
            )
        else:
            found = await self._users.find_by_external_id(subject)
            if found is None:
                return None
            user = found
        if not user.is_active:
            return None
        owner, known = self._owner_scope(user.tier, user.daily_budget, user.monthly_budget)
        return Principal(
            user_id=user.id,
            user_name=user.name,
            role=user.role,
            tier=user.tier,
            key_id=None,
            scope=owner,
            owner_scope=owner,
            tier_known=known,
            via="session",
        )

    def _owner_scope(
        self, tier: str, daily_budget: Decimal | None, monthly_budget: Decimal | None
    ) -> tuple[Scope, bool]:
        """The user's scope (the tier's, with the user's own budgets) and whether the tier is
        configured (an unknown tier grants nothing)."""
        if self._tiers is None:
            return UNLIMITED, True
        scope = self._tiers.owner_scope(tier, daily_budget, monthly_budget)
        return (NO_ACCESS, False) if scope is None else (scope, True)

    def forget(self) -> None:
        """Drop every cached result (after a key or user changed in this process)."""
        self._cache.clear()
        self._subjects.clear()

    def drain_used_keys(self) -> set[str]:
        """The ids of the keys used since the last call (for ``last_used_at``)."""
        used, self._used = self._used, set()
        return used
