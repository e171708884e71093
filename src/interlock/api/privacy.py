"""A user's data rights over HTTP: their export and their erasure.

- ``POST /v1/me/export`` ``{"passphrase": "…"}``: the caller's own data as an encrypted
  export file (``interlock.privacy``), streamed as a download while it is read;
- ``DELETE /v1/me`` ``{"confirm": "delete my account"}``: the caller's erasure;
- ``POST /admin/users/{id}/export`` and ``DELETE /admin/users/{id}`` (``{"confirm": "<the
  user's id>"}``): the same for any user, admins only (403 for members, 404 for an id that
  is no user).

Everything that can be refused is refused before the first byte of an export: a stream cut
later (the database failed) leaves a file that ``interlock export open`` reports as
truncated, never one that passes for whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TypeVar

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from interlock.api.admin import require_admin, user_not_found
from interlock.api.body import read_body
from interlock.api.identity_wire import json_response
from interlock.api.keys import authenticated, path_id
from interlock.auth.principal import Principal
from interlock.components import Components
from interlock.errors import InvalidRequest, NotFound, RateLimited
from interlock.privacy.erasure import erase_user
from interlock.privacy.export import EXPORTED, sealed_export
from interlock.privacy.sealed import SUFFIX, check_passphrase, passphrase_key
from interlock.state import StateUnavailable
from interlock.store import audit

log = structlog.get_logger("interlock.privacy")

CONFIRM_SELF = "delete my account"
# Exports at once per instance: each holds a database connection for as long as it streams,
# and derives its key with scrypt (32 MiB): a few must never starve the chat requests.
MAX_CONCURRENT_EXPORTS = 2


class ExportBody(msgspec.Struct, forbid_unknown_fields=True):
    passphrase: str


class EraseBody(msgspec.Struct, forbid_unknown_fields=True):
    confirm: str = ""


MAX_BODY = 8192


B = TypeVar("B", ExportBody, EraseBody)


async def decode_body(request: Request, body_type: type[B]) -> B:
    """The JSON body as ``body_type``; a 400 saying what is wrong otherwise."""
    raw = await read_body(request, MAX_BODY)
    try:
        return msgspec.json.decode(raw or b"{}", type=body_type)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"{exc}.") from None
    except msgspec.DecodeError:
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from None


def _export_slots(request: Request) -> asyncio.Semaphore:
    """The app's export slots (made on first use: one set per app, not per process)."""
    state = request.app.state
    slots: asyncio.Semaphore | None = getattr(state, "export_slots", None)
    if slots is None:
        slots = state.export_slots = asyncio.Semaphore(MAX_CONCURRENT_EXPORTS)
    return slots


class _ExportResponse(StreamingResponse):
    """The download; its export slot is given back however the response ends (sent whole,
    cut by the client, or never started)."""

    def __init__(self, pieces: AsyncIterator[bytes], slots: asyncio.Semaphore, filename: str):
        super().__init__(
            pieces,
            media_type="application/octet-stream",
            headers={
                "content-disposition": f'attachment; filename="{filename}"',
                "cache-control": "no-store",
            },
        )
        self._slots = slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._slots.release()


async def _existing(gateway: Components, user_id: str) -> str:
    if await gateway.users.get(user_id) is None:
        raise NotFound("No user with this id.")
    return user_id


async def _export(request: Request, gateway: Components, user_id: str, actor: str) -> Response:
    body = await decode_body(request, ExportBody)
    try:
        passphrase = check_passphrase(body.passphrase)
    except ValueError as exc:
        raise InvalidRequest(str(exc).capitalize() + ".", param="passphrase") from None
    await _existing(gateway, user_id)
    slots = _export_slots(request)
    if slots.locked():
        raise RateLimited(
            "Too many exports are running on this server: try again in a few seconds.",
            code="export_busy",
            retry_after=5,
        )
    await slots.acquire()
    try:
        key = await asyncio.to_thread(passphrase_key, passphrase)  # scrypt: off the event loop
        await gateway.ledger.flush()  # this instance's latest requests are in the export too
    except BaseException:
        slots.release()
        raise
    now = datetime.now(UTC)
    try:
        await audit.record(
            gateway.database,
            actor=actor,
            action=EXPORTED,
            subject=user_id,
            details={"key": "passphrase"},
            now=now,
        )
    except BaseException:
        slots.release()
        raise
    log.info("user_export_started", user_id=user_id, actor=actor)
    filename = f"interlock-export-{user_id}-{now:%Y%m%dT%H%M%SZ}{SUFFIX}"
    return _ExportResponse(sealed_export(gateway.database, user_id, key, now=now), slots, filename)


async def _erase(gateway: Components, user_id: str, actor: str) -> Response:
    # This instance's usage rows still in memory are written first, so they are anonymised too.
    await gateway.ledger.flush()
    erasure = await erase_user(gateway.database, user_id, actor=actor)
    gateway.authenticator.forget()
    cache_forgotten = gateway.cache is None
    if gateway.cache is not None:
        try:
            await gateway.cache.forget_user(user_id)
            cache_forgotten = True
        except StateUnavailable as exc:
            log.warning("erasure_cache_not_reached", user_id=user_id, error=str(exc))
    log.info("user_erased", user_id=user_id, actor=actor, already=erasure.already)
    return json_response({**erasure.summary(), "cache_forgotten": cache_forgotten})


@authenticated
async def export_own(request: Request, gateway: Components, principal: Principal) -> Response:
    return await _export(request, gateway, principal.user_id, f"user:{principal.user_id}")


@authenticated
async def erase_own(request: Request, gateway: Components, principal: Principal) -> Response:
    body = await decode_body(request, EraseBody)
    if body.confirm != CONFIRM_SELF:
        raise InvalidRequest(
            f'Erasing your account cannot be undone: send {{"confirm": "{CONFIRM_SELF}"}}.',
            code="confirmation_required",
            param="confirm",
        )
    await _existing(gateway, principal.user_id)
    return await _erase(gateway, principal.user_id, f"user:{principal.user_id}")


@authenticated
async def export_user(request: Request, gateway: Components, principal: Principal) -> Response:
    require_admin(principal)
    user_id = path_id(request, "user_id", user_not_found)
    return await _export(request, gateway, user_id, f"admin:{principal.user_id}")


@authenticated
async def erase_user_route(request: Request, gateway: Components, principal: Principal) -> Response:
    require_admin(principal)
    user_id = path_id(request, "user_id", user_not_found)
    body = await decode_body(request, EraseBody)
    if body.confirm != user_id:
        raise InvalidRequest(
            "Erasing a user cannot be undone: send the user's id as `confirm`.",
            code="confirmation_required",
            param="confirm",
        )
    return await _erase(gateway, user_id, f"admin:{principal.user_id}")


routes = [
    Route("/v1/me/export", export_own, methods=["POST"]),
    Route("/v1/me", erase_own, methods=["DELETE"]),
    Route("/admin/users/{user_id}/export", export_user, methods=["POST"]),
    Route("/admin/users/{user_id}", erase_user_route, methods=["DELETE"]),
]
