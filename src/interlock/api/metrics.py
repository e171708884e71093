"""``GET /metrics``: the Prometheus text format, for scrapers only.

A scrape is let in when its client address (the TCP peer, or the address behind trusted
proxies, as for the rate limits) is in ``[metrics] allow`` (loopback by default), or when
it carries ``Authorization: Bearer`` with the token of ``INTERLOCK_METRICS_TOKEN``. A wrong
token is a 401 and counts as a failed authentication of the address (guessing is throttled
as on every route); an address outside the allowlist without a token is a 401 when a token
is configured, else a 403. With ``[metrics] enabled = false`` the route is a 404.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from interlock.api.errors import openai_error_response
from interlock.auth.authenticator import bearer_token
from interlock.components import Components, components_of
from interlock.errors import AuthenticationFailed, InterlockError, NotFound, PermissionDenied
from interlock.limits.client_ip import parse_address
from interlock.telemetry.metrics import CONTENT_TYPE


async def _check_access(request: Request, gateway: Components) -> None:
    """Return if the scrape may go ahead; raise the refusal otherwise."""
    settings = gateway.settings
    token = settings.metrics_token
    limiter = gateway.limiter
    peer = request.client.host if request.client is not None else None
    ip = limiter.client_ip(peer, request.headers.getlist("x-forwarded-for"))
    credential = bearer_token(request.headers.get("authorization"))
    if credential is not None:
        await limiter.before_auth(ip)  # 429 while this address is locked out
        if token is not None and hmac.compare_digest(credential.encode(), token.encode()):
            return
        await limiter.note_failed_auth(ip)
        raise AuthenticationFailed("Invalid metrics token.")
    address = parse_address(ip)
    if address is not None and any(address in network for network in settings.config.metrics.allow):
        return
    if token is not None:
        raise AuthenticationFailed("Send the metrics token as Authorization: Bearer <token>.")
    raise PermissionDenied("Metrics may not be scraped from this address.")


async def scrape(request: Request) -> Response:
    gateway = components_of(request)
    metrics = gateway.metrics
    try:
        if metrics is None:
            raise NotFound("Metrics are turned off ([metrics] enabled = false).")
        await _check_access(request, gateway)
    except InterlockError as error:
        headers = {"www-authenticate": "Bearer"} if error.status == 401 else None
        return openai_error_response(error, headers)
    await metrics.refresh_circuits(gateway.service.guard.breakers)
    return Response(
        metrics.render(), media_type=CONTENT_TYPE, headers={"cache-control": "no-store"}
    )


routes = [Route("/metrics", scrape, methods=["GET"])]
