"""What every inbound protocol reads from an HTTP request the same way: who the client is
(its address, for the per-IP limits and the failed-authentication throttle) and the
caller's cache directive."""

from __future__ import annotations

from starlette.requests import Request

from interlock.auth.principal import Principal
from interlock.cache import CacheDirective
from interlock.chat.pipeline import ChatCall
from interlock.components import components_of
from interlock.telemetry.access_log import note_principal


def _peer(request: Request) -> str | None:
    client = request.scope.get("client")  # (host, port); Starlette's ``client`` wraps it
    return client[0] if client else None


async def authenticate_call(call: ChatCall, request: Request, credential: str | None) -> Principal:
    """Authenticate a chat call with ``credential``, limited by the client's address."""
    return await call.authenticate(
        credential, peer=_peer(request), forwarded_for=request.headers.getlist("x-forwarded-for")
    )


async def authenticate_request(request: Request, credential: str | None) -> Principal:
    """Authenticate any other route's caller the same way (key guessing is throttled on
    every route, not only on chat)."""
    principal, _ = await components_of(request).pipeline.authenticate(
        credential, peer=_peer(request), forwarded_for=request.headers.getlist("x-forwarded-for")
    )
    note_principal(principal.user_id, principal.key_id)  # for the access line
    return principal


def cache_directive(request: Request, body_value: object = None) -> CacheDirective:
    """The caller's cache directive: ``Cache-Control``, and the body's own field where the
    protocol has one; the stricter wins."""
    return CacheDirective.from_header(request.headers.get("cache-control")).combine(
        CacheDirective.from_body(body_value)
    )
