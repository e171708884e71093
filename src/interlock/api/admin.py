"""The admin API under ``/admin/``: users, and the keys of any user.

Admins only (403 for members), with one exception: a member may list and create their own
keys at ``/admin/users/{their id}/keys`` and revoke, rotate or change their own keys at
``/admin/keys/{id}/…``; another user's key answers 404 there, like one that does not exist.
Every body is validated field by field (``interlock.api.identity_wire``): unknown fields are
refused, so nothing can be mass-assigned.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from interlock.api.identity_wire import (
    KeyCreate,
    KeyUpdate,
    UserCreate,
    UserUpdate,
    decode_body,
    json_response,
    list_json,
    or_keep,
    query_int,
    user_json,
)
from interlock.api.keys import (
    authenticated,
    create_key,
    key_not_found,
    list_keys,
    path_id,
    revoke_key,
    rotate_key,
    update_key,
)
from interlock.auth.principal import Principal
from interlock.components import Components
from interlock.errors import NotFound, PermissionDenied
from interlock.store.users import UserRecord

MAX_OFFSET = 10_000_000


def require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDenied("Only admins may use this route.")


def user_not_found() -> NotFound:
    return NotFound("No user with this id.")


async def _user(request: Request, gateway: Components) -> UserRecord:
    user = await gateway.users.get(path_id(request, "user_id", user_not_found))
    if user is None:
        raise user_not_found()
    return user


def _owner_filter(principal: Principal) -> str | None:
    """Admins act on every key; a member only on their own."""
    return None if principal.is_admin else principal.user_id


# --- users -------------------------------------------------------------------------------


@authenticated
async def create_user(request: Request, gateway: Components, principal: Principal) -> Response:
    require_admin(principal)
    body = await decode_body(request, UserCreate)
    tier = gateway.tiers.check_tier(body.tier or gateway.tiers.default)
    user = await gateway.users.create(
        body.name,
        role=body.role,
        tier=tier,
        email=body.email,
        external_id=body.external_id,
        daily_budget=body.daily_budget,
        monthly_budget=body.monthly_budget,
    )
    gateway.authenticator.forget()  # a session subject may have been cached as unknown
    return json_response(user_json(user), 201)


@authenticated
async def list_users(request: Request, gateway: Components, principal: Principal) -> Response:
    require_admin(principal)
    limit = query_int(request, "limit", 100, 1, 1000)
    offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
    users = await gateway.users.list_users(limit=limit, offset=offset)
    return json_response(list_json([user_json(user) for user in users]))


@authenticated
async def get_user(request: Request, gateway: Components, principal: Principal) -> Response:
    require_admin(principal)
    return json_response(user_json(await _user(request, gateway)))


@authenticated
async def update_user(request: Request, gateway: Components, principal: Principal) -> Response:
    require_admin(principal)
    user_id = path_id(request, "user_id", user_not_found)
    body = await decode_body(request, UserUpdate)
    if isinstance(body.tier, str):
        gateway.tiers.check_tier(body.tier)
    user = await gateway.users.update(
        user_id,
        name=or_keep(body.name),
        email=or_keep(body.email),
        role=or_keep(body.role),
        tier=or_keep(body.tier),
        status=or_keep(body.status),
        external_id=or_keep(body.external_id),
        daily_budget=or_keep(body.daily_budget),
        monthly_budget=or_keep(body.monthly_budget),
    )
    gateway.authenticator.forget()
    return json_response(user_json(user))


@authenticated
async def disable_user(request: Request, gateway: Components, principal: Principal) -> Response:
    require_admin(principal)
    user_id = path_id(request, "user_id", user_not_found)
    user = await gateway.users.update(user_id, status="disabled")
    gateway.authenticator.forget()
    return json_response(user_json(user))


# --- keys --------------------------------------------------------------------------------


def _require_self_or_admin(request: Request, principal: Principal) -> None:
    if not principal.is_admin and request.path_params["user_id"] != principal.user_id:
        raise PermissionDenied("Only admins may manage other users' keys.")


@authenticated
async def list_user_keys(request: Request, gateway: Components, principal: Principal) -> Response:
    _require_self_or_admin(request, principal)
    return await list_keys(gateway, (await _user(request, gateway)).id)


@authenticated
async def create_user_key(request: Request, gateway: Components, principal: Principal) -> Response:
    _require_self_or_admin(request, principal)
    owner = await _user(request, gateway)
    body = await decode_body(request, KeyCreate)
    return await create_key(gateway, owner, body)


@authenticated
async def change_key(request: Request, gateway: Components, principal: Principal) -> Response:
    key_id = path_id(request, "key_id", key_not_found)
    key = await gateway.keys.get_key(key_id, user_id=_owner_filter(principal))
    if key is None:
        raise key_not_found()
    body = await decode_body(request, KeyUpdate)
    return await update_key(gateway, key, body)


@authenticated
async def revoke(request: Request, gateway: Components, principal: Principal) -> Response:
    key_id = path_id(request, "key_id", key_not_found)
    return await revoke_key(gateway, key_id, _owner_filter(principal))


@authenticated
async def rotate(request: Request, gateway: Components, principal: Principal) -> Response:
    key_id = path_id(request, "key_id", key_not_found)
    return await rotate_key(gateway, key_id, _owner_filter(principal))


routes = [
    Route("/admin/users", create_user, methods=["POST"]),
    Route("/admin/users", list_users, methods=["GET"]),
    Route("/admin/users/{user_id}", get_user, methods=["GET"]),
    Route("/admin/users/{user_id}", update_user, methods=["PATCH"]),
    Route("/admin/users/{user_id}/disable", disable_user, methods=["POST"]),
    Route("/admin/users/{user_id}/keys", list_user_keys, methods=["GET"]),
    Route("/admin/users/{user_id}/keys", create_user_key, methods=["POST"]),
    Route("/admin/keys/{key_id}", change_key, methods=["PATCH"]),
    Route("/admin/keys/{key_id}/revoke", revoke, methods=["POST"]),
    Route("/admin/keys/{key_id}/rotate", rotate, methods=["POST"]),
]
