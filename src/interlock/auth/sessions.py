"""Browser sessions: verifying the JWTs that the app's own auth system issues.

Two key sources, chosen by the token's algorithm and never by anything else in it:

- ``HS256`` (``HS384``, ``HS512``) with a shared secret: ``INTERLOCK_JWT_SECRET``, or
  ``NEXTAUTH_SECRET`` for a NextAuth app that signs its tokens;
- ``RS*``, ``PS*``, ``ES*``, ``EdDSA`` with the public keys of a JWKS URL (OIDC providers).

Only the algorithms in the allow-list are accepted (``alg: none`` never is). An HMAC token is
checked with the shared secret only, and an asymmetric one with a JWKS key fit for exactly
that algorithm: so the classic confusion — an HS256 token "signed" with the provider's public
key as the secret — fails like any forgery. ``exp`` and ``sub`` are required; ``exp``,
``nbf`` and ``iat`` are checked with a small leeway, ``aud`` and ``iss`` when configured.
Header fields that point at keys (``jku``, ``x5u``, ``jwk``) are ignored.

Every failure is ``AuthenticationFailed`` (401), with a message that never quotes the token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import jwt

from interlock.auth.jwks import JwksClient, KeySetUnavailable
from interlock.errors import AuthenticationFailed, ServiceUnavailable
from interlock.settings import SYMMETRIC_ALGORITHMS, JwtSettings

MAX_TOKEN_LENGTH = 16 * 1024
MAX_SUBJECT_LENGTH = 255
_SEGMENT = r"[A-Za-z0-9_-]+"
_JWS_SHAPE = re.compile(rf"{_SEGMENT}\.{_SEGMENT}\.[A-Za-z0-9_-]*")
_REQUIRED_CLAIMS = ["exp", "sub"]

INVALID_SESSION = "Invalid session token."


def looks_like_jwt(credential: str) -> bool:
    """Whether ``credential`` has the shape of a signed JWT: three base64url segments."""
    return credential.count(".") == 2 and _JWS_SHAPE.fullmatch(credential) is not None


@dataclass(frozen=True, slots=True)
class SessionClaims:
    """What a verified session says about its user."""

    subject: str
    name: str | None
    email: str | None


def _text_claim(claims: dict[str, Any], name: str, limit: int) -> str | None:
    value = claims.get(name)
    if isinstance(value, str) and 0 < len(value) <= limit and value.isprintable():
        return value
    return None


class SessionVerifier:
    """Verifies session tokens under ``settings``; asymmetric keys come from ``jwks``."""

    def __init__(self, settings: JwtSettings, jwks: JwksClient | None) -> None:
        self._settings = settings
        self._jwks = jwks
        self._allowed = frozenset(settings.algorithms)
        self._secret = settings.secret.encode("utf-8") if settings.secret else None
        self._audience: list[str] | None = list(settings.audience) or None
        self._options: Any = {
            "require": _REQUIRED_CLAIMS,
            "verify_aud": True,
            "verify_iss": settings.issuer is not None,
            # A short secret or small RSA key is refused, not merely warned about.
            "enforce_minimum_key_length": True,
        }

    async def verify(self, token: str) -> SessionClaims:
        """The claims of a valid token; ``AuthenticationFailed`` for anything else.

        ``ServiceUnavailable`` (503) when the token needs the identity provider's keys and
        they cannot be fetched: the token may well be valid.
        """
        if len(token) > MAX_TOKEN_LENGTH or not looks_like_jwt(token):
            raise AuthenticationFailed(INVALID_SESSION)
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthenticationFailed(INVALID_SESSION) from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._allowed:
            raise AuthenticationFailed(f"{INVALID_SESSION} Its algorithm is not accepted.")
        key = await self._key(header, algorithm)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationFailed("The session token has expired.") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise AuthenticationFailed(INVALID_SESSION) from None
        subject = _text_claim(claims, "sub", MAX_SUBJECT_LENGTH)
        if subject is None:
            raise AuthenticationFailed(f"{INVALID_SESSION} Its subject is not usable.")
        return SessionClaims(
            subject=subject,
            name=_text_claim(claims, "name", 200),
            email=_text_claim(claims, "email", 320),
        )

    async def _key(self, header: dict[str, Any], algorithm: str) -> Any:
        if algorithm in SYMMETRIC_ALGORITHMS:
            if self._secret is None:  # pragma: no cover - settings refuse this combination
                raise AuthenticationFailed(INVALID_SESSION)
            return self._secret
        if self._jwks is None:  # pragma: no cover - settings refuse this combination
            raise AuthenticationFailed(INVALID_SESSION)
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            raise AuthenticationFailed(INVALID_SESSION)
        try:
            key = await self._jwks.key_for(kid, algorithm)
        except KeySetUnavailable:
            raise ServiceUnavailable(
                "Cannot verify the session token now: the identity provider's keys are unavailable."
            ) from None
        if key is None:
            raise AuthenticationFailed(f"{INVALID_SESSION} Its signing key is unknown.")
        return key
