"""Liveness and readiness, for load balancers and orchestrators. No authentication."""

from __future__ import annotations

import asyncio

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from interlock.components import components_of

# A readiness probe that hangs is worse than one that says no.
_DATABASE_PING_TIMEOUT = 2.0


def _json(body: dict[str, object], status: int = 200) -> Response:
    return Response(
        msgspec.json.encode(body),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )


async def live(request: Request) -> Response:
    return _json({"status": "ok"})


async def ready(request: Request) -> Response:
    gateway = components_of(request)
    checks: dict[str, dict[str, object]] = {}
    try:
        async with asyncio.timeout(_DATABASE_PING_TIMEOUT):
            await gateway.database.ping()
    except Exception as exc:  # any failure means "not ready"; the reason is its class only
        checks["database"] = {"status": "down", "reason": f"ping failed ({type(exc).__name__})"}
    else:
        checks["database"] = {"status": "ok"}
    if gateway.state.backend == "redis":
        try:
            async with asyncio.timeout(_DATABASE_PING_TIMEOUT):
                await gateway.state.ping()
        except Exception as exc:  # reported, not raised: the reason is its class only
            # Each concern has its own fail-open/closed rule: degraded, not unready.
            checks["redis"] = {
                "status": "degraded",
                "reason": f"ping failed ({type(exc).__name__})",
            }
        else:
            checks["redis"] = {"status": "ok"}
    usable = gateway.providers.usable()
    if usable:
        checks["models"] = {"status": "ok", "usable_deployments": len(usable)}
    else:
        checks["models"] = {"status": "down", "reason": "no model deployment is usable"}
    is_ready = all(check["status"] != "down" for check in checks.values())
    return _json(
        {"status": "ready" if is_ready else "unavailable", "checks": checks},
        200 if is_ready else 503,
    )


routes = [
    Route("/health/live", live, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
]
