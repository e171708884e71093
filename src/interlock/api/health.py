"""Liveness and readiness, for load balancers and orchestrators. No authentication.

``/health/live``: the process answers. ``/health/ready``: 200 when the gateway can serve,
503 when a required dependency is down (the database; every model deployment). Each
dependency has its status (``ok``, ``degraded``, ``down``) and, when not ok, a fixed reason:
never a URL, a key or an exception's text. Redis is optional (each concern has its own
fail-open/closed rule), so a Redis that fails is ``degraded``, not unready; so are some, not
all, deployments being unreachable. Deployment reachability comes from the background probes
(``interlock.providers.probes``), never from a provider call per health request.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from interlock.components import Components, components_of

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
    checks["models"] = _models_check(gateway)
    statuses = {check["status"] for check in checks.values()}
    if "down" in statuses:
        return _json({"status": "unavailable", "checks": checks}, 503)
    return _json({"status": "degraded" if "degraded" in statuses else "ready", "checks": checks})


def _models_check(gateway: Components) -> dict[str, object]:
    """The deployments, from the background probes' last results (never a provider call
    here): down when none is reachable, degraded when some are not."""
    usable = gateway.providers.usable()
    probes = gateway.probes
    if probes is None or not probes.enabled:
        if usable:
            return {"status": "ok", "usable_deployments": len(usable)}
        return {"status": "down", "reason": "no model deployment is usable"}
    now = time.time()
    results = probes.results()
    deployments = {name: result.as_json(now) for name, result in results.items()}
    reachable = [name for name, result in results.items() if result.status != "down"]
    body: dict[str, object] = {"usable_deployments": len(usable)}
    if not results or not reachable:
        body.update(status="down", reason="no model deployment is reachable")
    elif len(reachable) < len(results):
        body.update(status="degraded", reason="some model deployments are unreachable")
    else:
        body["status"] = "ok"
    body["deployments"] = deployments
    return body


routes = [
    Route("/health/live", live, methods=["GET"]),
    Route("/health/ready", ready, methods=["GET"]),
]
