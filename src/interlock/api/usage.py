"""Usage reports over HTTP: ``GET /v1/usage`` (your own) and ``GET /admin/usage`` (everyone's).

Both take ``start`` and ``end`` (UTC days, ``YYYY-MM-DD``, both included; by default the 30
days up to today) and ``group_by``; the admin report also filters by ``user`` (a user id) and
``model``. The answer has one entry per group and the total, with costs as JSON numbers in the
price table's currency. Errors have OpenAI's shape; a bad parameter is a 400 naming it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from interlock.api.errors import openai_error_response
from interlock.api.inbound import authenticate_request
from interlock.auth.authenticator import bearer_token
from interlock.auth.principal import Principal
from interlock.components import Components, components_of
from interlock.errors import InterlockError, InvalidRequest, PermissionDenied, ServiceUnavailable
from interlock.store.usage import GROUPINGS, GroupBy, UsageFilter, UsageStore, UsageTotals

log = structlog.get_logger("interlock.api.usage")

DEFAULT_DAYS = 30
MAX_FILTER_LENGTH = 200
OWN_GROUPINGS: tuple[GroupBy, ...] = ("day", "model")
# Bring this instance's latest requests into the report, but never hang on it.
_FLUSH_TIMEOUT = 2.0
_ENCODER = msgspec.json.Encoder(decimal_format="number")


async def own_usage(request: Request) -> Response:
    """The caller's own usage."""
    gateway = components_of(request)
    try:
        principal = await _authenticate(request, gateway)
        where, group_by = _parse(request, OWN_GROUPINGS, user_id=principal.user_id, model=None)
        return await _report(gateway, where, group_by, {})
    except InterlockError as error:
        return openai_error_response(error)


async def all_usage(request: Request) -> Response:
    """Everyone's usage, for admins: filter by ``user`` and ``model``."""
    gateway = components_of(request)
    try:
        principal = await _authenticate(request, gateway)
        if not principal.is_admin:
            raise PermissionDenied("Only admins can see everyone's usage: use /v1/usage.")
        user_id = _filter_param(request, "user")
        model = _filter_param(request, "model")
        where, group_by = _parse(request, GROUPINGS, user_id=user_id, model=model)
        return await _report(gateway, where, group_by, {"user": user_id, "model": model})
    except InterlockError as error:
        return openai_error_response(error)


async def _authenticate(request: Request, gateway: Components) -> Principal:
    return await authenticate_request(request, bearer_token(request.headers.get("authorization")))


def _parse(
    request: Request, groupings: tuple[GroupBy, ...], *, user_id: str | None, model: str | None
) -> tuple[UsageFilter, GroupBy]:
    params = request.query_params
    group_by = params.get("group_by", "day")
    if group_by not in groupings:
        raise InvalidRequest(f"`group_by` must be one of {', '.join(groupings)}.", param="group_by")
    end = _day(params.get("end"), "end") or datetime.now(UTC).date()
    start = _day(params.get("start"), "start") or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise InvalidRequest("`start` must not be after `end`.", param="start")
    return UsageFilter(start=start, end=end, user_id=user_id, model=model), group_by


def _day(value: str | None, name: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        if len(value) != 10:
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"`{name}` must be a date, YYYY-MM-DD.", param=name) from None


def _filter_param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_FILTER_LENGTH or not value.isprintable():
        raise InvalidRequest(
            f"`{name}` must be at most {MAX_FILTER_LENGTH} printable characters.", param=name
        )
    return value


async def _report(
    gateway: Components, where: UsageFilter, group_by: GroupBy, filters: dict[str, str | None]
) -> Response:
    try:
        async with asyncio.timeout(_FLUSH_TIMEOUT):
            await gateway.ledger.flush()
    except TimeoutError:
        pass
    store = UsageStore(gateway.database)
    try:
        groups = await store.report(where, group_by)
        total = await store.total(where)
    except Exception as exc:  # the database failed: say so, without its details
        log.warning("usage_report_failed", reason=gateway.database.describe_failure(exc))
        raise ServiceUnavailable("Usage cannot be read right now; try again shortly.") from None
    body: dict[str, Any] = {
        "object": "usage",
        "start": where.start.isoformat(),
        "end": where.end.isoformat(),
        "group_by": group_by,
        **filters,
        "currency": gateway.prices.currency,
        "data": [{"group": group.group, **_totals(group)} for group in groups],
        "total": _totals(total),
    }
    return Response(
        _ENCODER.encode(body),
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )


def _totals(totals: UsageTotals) -> dict[str, Any]:
    return {
        "requests": totals.requests,
        "input_tokens": totals.input_tokens,
        "output_tokens": totals.output_tokens,
        "cached_tokens": totals.cached_tokens,
        "cost": totals.cost,
        "errors": totals.errors,
        "cache_hits": totals.cache_hits,
        "cache_hit_rate": round(totals.cache_hit_rate, 4),
        "error_rate": round(totals.error_rate, 4),
        "latency_p50_ms": totals.latency_p50_ms,
        "latency_p95_ms": totals.latency_p95_ms,
    }


routes = [
    Route("/v1/usage", own_usage, methods=["GET"]),
    Route("/admin/usage", all_usage, methods=["GET"]),
]
