"""Everything identity needs for the app's lifetime, built in one place.

``open_identity`` makes the tiers, the user and key stores, the session verifier (with its
JWKS client and HTTP session, when sessions are configured) and the authenticator; and runs
one background task that writes the keys' ``last_used_at`` in batches, off the hot path, at
most ``KEY_USE_INTERVAL`` seconds late (and once more on a graceful stop). The app enters it
after the database and leaves it before the database closes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from sqlalchemy.exc import SQLAlchemyError

from interlock.auth.authenticator import Authenticator
from interlock.auth.jwks import JwksClient
from interlock.auth.sessions import SessionVerifier
from interlock.auth.tiers import Tiers
from interlock.providers.http import create_session
from interlock.settings import Settings
from interlock.store.database import Database
from interlock.store.keys import KeyStore
from interlock.store.users import UserStore

log = structlog.get_logger("interlock.auth")

KEY_USE_INTERVAL = 30.0


@dataclass(frozen=True, slots=True)
class Identity:
    tiers: Tiers
    users: UserStore
    keys: KeyStore
    authenticator: Authenticator


def build_tiers(settings: Settings) -> Tiers:
    config = settings.config
    return Tiers(config.tiers, config.models, config.auth.default_tier)


@contextlib.asynccontextmanager
async def open_identity(
    settings: Settings, database: Database, keys: KeyStore, secret: bytes
) -> AsyncIterator[Identity]:
    """The identity components, until the block ends. ``secret`` is the server secret that
    ``keys`` hashes under."""
    tiers = build_tiers(settings)
    users = UserStore(database)
    async with contextlib.AsyncExitStack() as stack:
        sessions: SessionVerifier | None = None
        if settings.jwt is not None:
            jwks: JwksClient | None = None
            if settings.jwt.jwks_url is not None:
                http = create_session(max_connections=4)
                stack.push_async_callback(http.close)
                jwks = JwksClient(settings.jwt.jwks_url, http)
            sessions = SessionVerifier(settings.jwt, jwks)
        authenticator = Authenticator(
            keys,
            secret,
            tiers=tiers,
            sessions=sessions,
            users=users,
            create_users=settings.jwt is not None and settings.jwt.create_users,
            insecure_no_auth=settings.insecure_no_auth,
        )
        recorder = asyncio.create_task(_record_key_use(authenticator, keys))
        try:
            yield Identity(tiers=tiers, users=users, keys=keys, authenticator=authenticator)
        finally:
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder
            await _flush_key_use(authenticator, keys)


async def _record_key_use(authenticator: Authenticator, keys: KeyStore) -> None:
    while True:
        await asyncio.sleep(KEY_USE_INTERVAL)
        await _flush_key_use(authenticator, keys)


async def _flush_key_use(authenticator: Authenticator, keys: KeyStore) -> None:
    used = authenticator.drain_used_keys()
    if not used:
        return
    try:
        await keys.record_use(used, datetime.now(UTC))
    except (SQLAlchemyError, OSError) as exc:
        # Only a convenience for the key listings: never worth failing a request or a stop.
        log.warning("key_use_not_recorded", keys=len(used), error=type(exc).__name__)
