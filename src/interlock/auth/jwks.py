"""``JwksClient``: the identity provider's public signing keys, fetched and cached.

Keys are fetched asynchronously with the app's aiohttp session (never a blocking call on the
event loop), kept for ``ttl`` seconds, and fetched again early when a token names a key id
the set does not hold (a rotation) — but at most once per ``min_refresh_interval``, so tokens
with made-up key ids cannot make the gateway hammer the provider. When a fetch fails, the
keys already held keep being used; only with none at all is verification impossible
(``KeySetUnavailable``).

A key is used only for the algorithm it was published for: its ``alg`` if it has one, else
one that fits its type (RSA: RS*/PS*, EC: ES* on the key's curve, OKP: EdDSA).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec
import structlog
from jwt import PyJWK
from jwt.exceptions import PyJWTError

log = structlog.get_logger("interlock.auth.jwks")

DEFAULT_TTL = 300.0
DEFAULT_MIN_REFRESH_INTERVAL = 30.0
DEFAULT_TIMEOUT = 5.0
MAX_KEY_SET_BYTES = 512 * 1024
MAX_KEYS = 100

_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class KeySetUnavailable(Exception):
    """No key set could be fetched and none is held. The message is safe to log."""


def fits(jwk: dict[str, Any], algorithm: str) -> bool:
    """Whether the published key ``jwk`` may verify tokens signed with ``algorithm``."""
    if jwk.get("use", "sig") != "sig":
        return False
    if "alg" in jwk:
        return bool(jwk["alg"] == algorithm)
    if jwk.get("kty") != _KEY_TYPES.get(algorithm[:2]):
        return False
    curve = _CURVES.get(algorithm)
    return curve is None or jwk.get("crv") == curve


class JwksClient:
    """The keys published at ``url``, for verifying session tokens."""

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        ttl: float = DEFAULT_TTL,
        min_refresh_interval: float = DEFAULT_MIN_REFRESH_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._session = session
        self._ttl = ttl
        self._min_interval = min_refresh_interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._keys: list[dict[str, Any]] = []
        self._built: dict[tuple[str | None, str], PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._lock = asyncio.Lock()
        self._last_error = "the key set has not been fetched yet"
        self.fetches = 0  # successful fetches, for tests and metrics

    async def key_for(self, kid: str | None, algorithm: str) -> PyJWK | None:
        """The key to verify a token with header ``kid`` and ``alg``; None if no key fits.

        Raises ``KeySetUnavailable`` if no key set is held and none can be fetched.
        """
        now = self._clock()
        if self._fetched_at is None or now - self._fetched_at >= self._ttl:
            await self._refresh(force=False)
        key = self._find(kid, algorithm)
        if key is None and self._may_refetch():
            await self._refresh(force=True)  # a key rotated in since the last fetch?
            key = self._find(kid, algorithm)
        return key

    def _may_refetch(self) -> bool:
        return self._tried_at is None or self._clock() - self._tried_at >= self._min_interval

    def _find(self, kid: str | None, algorithm: str) -> PyJWK | None:
        cached = self._built.get((kid, algorithm))
        if cached is not None:
            return cached
        if kid is None:
            # A token without a key id can only be matched when exactly one key fits.
            candidates = [jwk for jwk in self._keys if fits(jwk, algorithm)]
        else:
            candidates = [jwk for jwk in self._keys if jwk.get("kid") == kid]
        if len(candidates) != 1 or not fits(candidates[0], algorithm):
            return None
        try:
            key = PyJWK(candidates[0], algorithm=algorithm)
        except (PyJWTError, ValueError, TypeError):  # a malformed key: as if absent
            return None
        self._built[(kid, algorithm)] = key
        return key

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            now = self._clock()
            fresh = self._fetched_at is not None and now - self._fetched_at < self._ttl
            if fresh and not force:
                return  # another caller refreshed while this one waited for the lock
            if not self._may_refetch():
                # Tried moments ago (maybe by another caller): use what is held, if anything.
                if not self._keys:
                    raise KeySetUnavailable(self._last_error)
                return
            self._tried_at = now
            try:
                keys = await self._fetch()
            except KeySetUnavailable as exc:
                self._last_error = str(exc)
                if not self._keys:
                    raise
                log.warning("jwks_refresh_failed", reason=str(exc))
                return
            self._keys = keys
            self._built.clear()
            self._fetched_at = now
            self.fetches += 1

    async def _fetch(self) -> list[dict[str, Any]]:
        try:
            async with self._session.get(
                self._url, timeout=self._timeout, allow_redirects=False
            ) as response:
                if response.status != 200:
                    raise KeySetUnavailable(f"the key set URL answered {response.status}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_KEY_SET_BYTES:
                        raise KeySetUnavailable("the key set is too large")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KeySetUnavailable(f"cannot fetch the key set ({type(exc).__name__})") from None
        try:
            document = msgspec.json.decode(bytes(body))
        except msgspec.DecodeError:
            raise KeySetUnavailable("the key set is not JSON") from None
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise KeySetUnavailable("the key set has no `keys` list")
        usable = [key for key in keys[:MAX_KEYS] if isinstance(key, dict)]
        if not usable:
            raise KeySetUnavailable("the key set holds no keys")
        return usable
