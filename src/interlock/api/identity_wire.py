"""The wire format of the identity API: request bodies, their validation, and the JSON of
users and keys.

Every body is a msgspec struct with ``forbid_unknown_fields``: a field the route does not
take (``role`` in a member's key request, ``spend`` anywhere) is a 400 naming it, never
silently ignored or assigned. Text must be printable (no NUL, control characters or lone
surrogates, which PostgreSQL would refuse with an error). Ids in paths are checked for shape
before any query: a malformed one is simply not found.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from interlock.api.body import read_body
from interlock.auth.fields import check_email, check_text
from interlock.auth.principal import Scope
from interlock.auth.tiers import check_budget
from interlock.errors import InvalidRequest
from interlock.store.keys import KeyRecord
from interlock.store.users import UNSET as KEEP
from interlock.store.users import Unset, UserRecord

MAX_BODY_BYTES = 64 * 1024
_PATH = re.compile(r"`\$\.([A-Za-z_]+)")
_UNKNOWN_FIELD = re.compile(r"unknown field `([A-Za-z0-9_]{1,64})`")

Name = Annotated[str, Meta(min_length=1, max_length=200)]
KeyName = Annotated[str, Meta(max_length=200)]
Email = Annotated[str, Meta(min_length=3, max_length=320)]
ExternalId = Annotated[str, Meta(min_length=1, max_length=255)]
TierName = Annotated[str, Meta(min_length=1, max_length=64)]
ModelName = Annotated[str, Meta(min_length=1, max_length=200)]
Models = Annotated[list[ModelName], Meta(max_length=1000)]
Role = Literal["admin", "member"]
SCOPE_FIELDS = ("models", "rpm", "tpm", "max_concurrent", "daily_budget", "monthly_budget")
Status = Literal["active", "disabled"]


class UserCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    email: Email | None = None
    role: Role = "member"
    tier: TierName | None = None  # None: the configured default tier
    external_id: ExternalId | None = None
    daily_budget: Decimal | None = None  # the user's own budgets, replacing the tier's
    monthly_budget: Decimal | None = None


class UserUpdate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | UnsetType = UNSET
    email: Email | UnsetType | None = UNSET
    role: Role | UnsetType = UNSET
    tier: TierName | UnsetType = UNSET
    status: Status | UnsetType = UNSET
    external_id: ExternalId | UnsetType | None = UNSET
    daily_budget: Decimal | UnsetType | None = UNSET  # null: the tier's again
    monthly_budget: Decimal | UnsetType | None = UNSET


class KeyCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A new key's name, expiry and scope. Every scope field left out (or null) inherits the
    owner's tier; none may be wider than it."""

    name: KeyName = ""
    expires_at: datetime | None = None
    models: Models | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    daily_budget: Decimal | None = None
    monthly_budget: Decimal | None = None

    def scope(self) -> Scope:
        return Scope(
            models=None if self.models is None else frozenset(self.models),
            rpm=self.rpm,
            tpm=self.tpm,
            max_concurrent=self.max_concurrent,
            daily_budget=self.daily_budget,
            monthly_budget=self.monthly_budget,
        )


class KeyUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Changes to a key; a field left out stays as it is, null clears it (scope fields then
    inherit the owner's tier again)."""

    name: KeyName | UnsetType = UNSET
    expires_at: datetime | UnsetType | None = UNSET
    models: Models | UnsetType | None = UNSET
    rpm: int | UnsetType | None = UNSET
    tpm: int | UnsetType | None = UNSET
    max_concurrent: int | UnsetType | None = UNSET
    daily_budget: Decimal | UnsetType | None = UNSET
    monthly_budget: Decimal | UnsetType | None = UNSET

    def touches_scope(self) -> bool:
        return any(getattr(self, field) is not UNSET for field in SCOPE_FIELDS)

    def scope_over(self, current: Scope) -> Scope:
        """``current`` with this update's scope fields applied."""

        def pick(field: str) -> Any:
            value = getattr(self, field)
            return getattr(current, field) if value is UNSET else value

        models = self.models
        return Scope(
            models=current.models
            if models is UNSET
            else (None if models is None else frozenset(models)),
            rpm=pick("rpm"),
            tpm=pick("tpm"),
            max_concurrent=pick("max_concurrent"),
            daily_budget=pick("daily_budget"),
            monthly_budget=pick("monthly_budget"),
        )


Body = TypeVar("Body", UserCreate, UserUpdate, KeyCreate, KeyUpdate)
T = TypeVar("T")


def or_keep(value: T | UnsetType) -> T | Unset:
    """A field of an update body as the store takes it: absent means "keep as it is"."""
    return KEEP if isinstance(value, UnsetType) else value


async def decode_body(request: Request, body_type: type[Body]) -> Body:
    """The request's JSON body as ``body_type``, every field checked; else a 400 naming it."""
    raw = await read_body(request, MAX_BODY_BYTES)
    try:
        body = msgspec.json.decode(raw, type=body_type)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc)) from None
    except msgspec.DecodeError:
        raise InvalidRequest("The body is not valid JSON.", code="invalid_json") from None
    for field in body.__struct_fields__:
        check_text(getattr(body, field), field)
    if isinstance(body, UserCreate | UserUpdate) and isinstance(body.email, str):
        check_email(body.email)
    _check_budgets(body)
    if isinstance(body, KeyCreate | KeyUpdate):
        _check_expiry_zone(body)
    return body


def _invalid(message: str) -> InvalidRequest:
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown is not None:
        return InvalidRequest(
            f"Unknown field {unknown.group(1)!r}: it cannot be set here.",
            code="unknown_field",
            param=unknown.group(1),
        )
    path = _PATH.search(message)
    param = path.group(1) if path is not None else None
    reason = message.split(" - at ")[0]
    if reason.startswith("Invalid enum value"):
        reason = "Not one of the allowed values"  # without echoing what was sent
    return InvalidRequest(reason + ".", param=param)


def _check_budgets(body: UserCreate | UserUpdate | KeyCreate | KeyUpdate) -> None:
    for field in ("daily_budget", "monthly_budget"):
        amount = getattr(body, field)
        if isinstance(amount, Decimal):
            check_budget(amount, field)


def _check_expiry_zone(body: KeyCreate | KeyUpdate) -> None:
    expires_at = body.expires_at
    if isinstance(expires_at, datetime) and (
        expires_at.tzinfo is None or expires_at.utcoffset() is None
    ):
        raise InvalidRequest("Give a time zone (e.g. 2030-01-31T00:00:00Z).", param="expires_at")


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise InvalidRequest(f"Must be a whole number from {low} to {high}.", param=name)
    return int(raw)


def _timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def user_json(user: UserRecord) -> dict[str, Any]:
    return {
        "object": "user",
        "id": user.id,
        "name": user.name,
        "email": user.email,
        "role": user.role,
        "tier": user.tier,
        "status": user.status,
        "external_id": user.external_id,
        "created_at": _timestamp(user.created_at),
        "daily_budget": user.daily_budget,  # null: the tier's
        "monthly_budget": user.monthly_budget,
    }


def key_json(key: KeyRecord, plaintext: str | None = None) -> dict[str, Any]:
    """A key as the API shows it; ``plaintext`` only in the answer that created it."""
    body: dict[str, Any] = {
        "object": "api_key",
        "id": key.key_id,
        "short_id": key.short_id,
        "name": key.name,
        "user_id": key.user_id,
        "status": key.status(datetime.now(UTC)),
        "created_at": _timestamp(key.created_at),
        "expires_at": _timestamp(key.expires_at),
        "revoked_at": _timestamp(key.revoked_at),
        "last_used_at": _timestamp(key.last_used_at),
        "models": None if key.models is None else list(key.models),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "max_concurrent": key.max_concurrent,
        "daily_budget": key.daily_budget,
        "monthly_budget": key.monthly_budget,
    }
    if plaintext is not None:
        body["key"] = plaintext
    return body


_ENCODER = msgspec.json.Encoder(decimal_format="number")
encode_json = _ENCODER.encode
"""JSON as the identity API writes it (amounts as numbers); the CLI prints the same."""


def json_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON answer that no cache keeps (it may hold a key shown once)."""
    return Response(
        _ENCODER.encode(body),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store", **(headers or {})},
    )


def list_json(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": items}
