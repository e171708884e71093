"""Turns a presented credential into a ``Principal``, or refuses it.

Keys are looked up by their keyed hash. Results (found or not) are cached in memory for
``cache_ttl`` seconds — one second by default, which bounds how long a revoked or expired
key keeps working on an instance — so the steady-state hot path makes no database round trip.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from interlock.auth.keys import has_valid_checksum, hash_key
from interlock.auth.principal import Principal
from interlock.errors import AuthenticationFailed
from interlock.store.keys import KeyRecord

MAX_CREDENTIAL_LENGTH = 512
_CACHE_LIMIT = 100_000


class KeyLookup(Protocol):
    async def find_by_key(self, key: str) -> KeyRecord | None: ...


DEVELOPMENT_PRINCIPAL = Principal(
    user_id="development", user_name="development", role="admin", tier="enterprise", key_id=None
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
        cache_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        insecure_no_auth: bool = False,
    ) -> None:
        self._keys = keys
        self._secret = secret
        self._ttl = cache_ttl
        self._clock = clock
        self._insecure = insecure_no_auth
        self._cache: dict[bytes, tuple[float, Principal | None, datetime | None]] = {}

    async def authenticate(self, key: str | None) -> Principal:
        """The principal behind ``key`` (a bearer token or API key header value)."""
        if self._insecure:
            return DEVELOPMENT_PRINCIPAL
        if not key:
            raise AuthenticationFailed("Missing API key: send it as `Authorization: Bearer <key>`.")
        if len(key) > MAX_CREDENTIAL_LENGTH or not key.isascii() or not key.isprintable():
            raise AuthenticationFailed()
        if key.startswith("il_") and not has_valid_checksum(key):
            raise AuthenticationFailed("Invalid API key (checksum mismatch: is it mistyped?).")
        digest = hash_key(self._secret, key)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            principal, expires_at = cached[1], cached[2]
        else:
            principal, expires_at = await self._load(key)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[digest] = (now + self._ttl, principal, expires_at)
        if principal is None or (expires_at is not None and expires_at <= datetime.now(UTC)):
            raise AuthenticationFailed()
        return principal

    async def _load(self, key: str) -> tuple[Principal | None, datetime | None]:
        record = await self._keys.find_by_key(key)
        if record is None or record.revoked_at is not None or record.user_status != "active":
            return None, None
        principal = Principal(
            user_id=record.user_id,
            user_name=record.user_name,
            role=record.role,
            tier=record.tier,
            key_id=record.key_id,
        )
        return principal, record.expires_at

    def forget(self) -> None:
        """Drop every cached result (after a key or user changed in this process)."""
        self._cache.clear()
