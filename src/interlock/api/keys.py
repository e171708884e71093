"""API keys over HTTP: the operations the admin API and members share, and the members' own
routes ``GET /v1/keys``, ``POST /v1/keys`` and ``DELETE /v1/keys/{id}``.

A member sees and changes only their own keys: another user's key answers 404, exactly like
a key that does not exist (the ownership test is part of the query, not a check after it).
A key's scope is checked against its owner's tier before it is stored: it can only narrow
it. Every change is forgotten by this instance's authenticator at once; other instances
follow within the cache TTL (one second).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from msgspec import UnsetType
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from interlock.api.errors import openai_error_response
from interlock.api.identity_wire import (
    KeyCreate,
    KeyUpdate,
    decode_body,
    json_response,
    key_json,
    list_json,
    or_keep,
)
from interlock.api.inbound import authenticate_request
from interlock.auth.authenticator import bearer_token
from interlock.auth.fields import looks_like_id
from interlock.auth.principal import Principal, Scope
from interlock.components import Components, components_of
from interlock.errors import InterlockError, InvalidRequest, NotFound
from interlock.store.keys import KeyRecord
from interlock.store.users import UNSET as KEEP
from interlock.store.users import Unset, UserRecord

Handler = Callable[[Request, Components, Principal], Awaitable[Response]]


def authenticated(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A route that authenticates its caller first and renders every ``InterlockError``."""

    async def route(request: Request) -> Response:
        gateway = components_of(request)
        try:
            principal = await authenticate_request(
                request, bearer_token(request.headers.get("authorization"))
            )
            return await handler(request, gateway, principal)
        except InterlockError as error:
            return openai_error_response(error, {"cache-control": "no-store"})

    return route


def key_not_found() -> NotFound:
    return NotFound("No API key with this id.")


def path_id(request: Request, name: str, missing: Callable[[], NotFound]) -> str:
    """The id in the path, or the not-found error if it cannot be one of ours."""
    value: str = request.path_params[name]
    if not looks_like_id(value):
        raise missing()
    return value


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise InvalidRequest("Must be in the future.", param="expires_at")


async def create_key(gateway: Components, owner: UserRecord, body: KeyCreate) -> Response:
    """Create a key for ``owner``; the answer carries the plaintext key, this once."""
    scope = gateway.tiers.check_key_scope(
        owner.tier,
        body.scope(),
        daily_budget=owner.daily_budget,
        monthly_budget=owner.monthly_budget,
    )
    _check_expiry(body.expires_at)
    row, plaintext = await gateway.keys.create_key(
        owner.id, name=body.name, expires_at=body.expires_at, scope=scope
    )
    record = await gateway.keys.get_key(row.id)
    if record is None:  # pragma: no cover - deleted in the instant since
        raise key_not_found()
    return json_response(key_json(record, plaintext), 201)


async def update_key(gateway: Components, key: KeyRecord, body: KeyUpdate) -> Response:
    """Change a key's name, expiry or scope (within its owner's tier)."""
    scope: Scope | Unset = KEEP
    if body.touches_scope():
        scope = gateway.tiers.check_key_scope(
            key.tier,
            body.scope_over(key.scope),
            daily_budget=key.user_daily_budget,
            monthly_budget=key.user_monthly_budget,
        )
    if not isinstance(body.expires_at, UnsetType):
        _check_expiry(body.expires_at)
    updated = await gateway.keys.update_key(
        key.key_id,
        user_id=key.user_id,
        name=or_keep(body.name),
        expires_at=or_keep(body.expires_at),
        scope=scope,
    )
    gateway.authenticator.forget()
    if updated is None:
        raise key_not_found()
    return json_response(key_json(updated))


async def revoke_key(gateway: Components, key_id: str, owner_id: str | None) -> Response:
    """Revoke a key (of ``owner_id``, if given); revoking a revoked key changes nothing."""
    await gateway.keys.revoke_key(key_id, user_id=owner_id)
    gateway.authenticator.forget()
    record = await gateway.keys.get_key(key_id, user_id=owner_id)
    if record is None:
        raise key_not_found()
    return json_response(key_json(record))


async def rotate_key(gateway: Components, key_id: str, owner_id: str | None) -> Response:
    """Replace a key by a new one with the same scope; the old one is revoked."""
    rotated = await gateway.keys.rotate_key(key_id, user_id=owner_id)
    gateway.authenticator.forget()
    if rotated is None:
        raise key_not_found()
    record, plaintext = rotated
    return json_response(key_json(record, plaintext), 201)


async def list_keys(gateway: Components, user_id: str) -> Response:
    keys = await gateway.keys.list_keys(user_id)
    return json_response(list_json([key_json(key) for key in keys]))


# --- a member's own keys ---------------------------------------------------------------


async def _own_user(gateway: Components, principal: Principal) -> UserRecord:
    user = await gateway.users.get(principal.user_id)
    if user is None:  # the development principal, or a user deleted since
        raise NotFound("Your user does not exist in the database.")
    return user


@authenticated
async def list_own(request: Request, gateway: Components, principal: Principal) -> Response:
    return await list_keys(gateway, principal.user_id)


@authenticated
async def create_own(request: Request, gateway: Components, principal: Principal) -> Response:
    body = await decode_body(request, KeyCreate)
    return await create_key(gateway, await _own_user(gateway, principal), body)


@authenticated
async def delete_own(request: Request, gateway: Components, principal: Principal) -> Response:
    key_id = path_id(request, "key_id", key_not_found)
    return await revoke_key(gateway, key_id, principal.user_id)


routes = [
    Route("/v1/keys", list_own, methods=["GET"]),
    Route("/v1/keys", create_own, methods=["POST"]),
    Route("/v1/keys/{key_id}", delete_own, methods=["DELETE"]),
]
