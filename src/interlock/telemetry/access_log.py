"""One access line per HTTP request, on the ``interlock.access`` logger.

Chat requests write theirs where the pipeline accounts for them (``ChatObserver.ended``),
with the model, deployment, tokens, cost, cache result and attempts. Every other route
(admin, keys, usage, models, health, metrics) gets its line from ``AccessLog``, a pure ASGI
middleware around the app: method, route, status, latency, the caller's ids when the route
authenticated one, and the request id the route returned in ``x-request-id`` (a route that
returns none gets one here, so every response has one). Health probes are logged at debug
level only, and so are Prometheus scrapes of ``/metrics``.

Fields are ids and numbers, never a key, token, cookie, header or message content.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import msgspec
import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from interlock.telemetry.logging import ACCESS_LOGGER
from interlock.telemetry.request_ids import RequestIds
from interlock.telemetry.sentry import NO_REPORTER, Reporter

# Polled every few seconds by machines: their lines are debug-level, not to drown the rest.
_PROBE_PATHS = ("/health/", "/metrics")
_HEADER = b"x-request-id"
_MAX_PATH = 200


class RequestContext(msgspec.Struct):  # built per request: a Struct is made in C
    """What the access line of the current HTTP request needs to know from inside it."""

    route: str
    logged: bool = False  # the chat pipeline wrote the line itself
    user_id: str | None = None
    key_id: str | None = None


_context: ContextVar[RequestContext | None] = ContextVar("interlock_request", default=None)


def current_context() -> RequestContext | None:
    return _context.get()


def note_principal(user_id: str | None, key_id: str | None) -> None:
    """Record who the current request's caller is, for its access line."""
    context = _context.get()
    if context is not None:
        context.user_id, context.key_id = user_id, key_id


def access_logger() -> Any:
    # Made per call, not kept: a kept proxy would cache the logger of the configuration it
    # first met, and tests configure logging again.
    return structlog.get_logger(ACCESS_LOGGER).bind(logger=ACCESS_LOGGER)


class AccessLog:
    """ASGI middleware: the access line of every non-chat request (see the module doc), and
    the request's own Sentry scope."""

    def __init__(
        self,
        app: ASGIApp,
        reporter: Callable[[], Reporter] = lambda: NO_REPORTER,
        self_logging: frozenset[str] = frozenset(),
    ) -> None:
        self._app = app
        self._reporter = reporter
        self._ids = RequestIds()  # for the routes that do not make their own
        # Paths whose handler writes its own line and sets its own request id (the chat
        # routes): without Sentry, nothing to do around them but the route name.
        self._self_logging = self_logging

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        context = RequestContext(route=path[:_MAX_PATH])
        token = _context.set(context)
        started = time.perf_counter()
        reporter = self._reporter()
        if path in self._self_logging and not reporter.enabled:
            try:
                await self._app(scope, receive, send)
            finally:
                _context.reset(token)
                if not context.logged:  # the handler crashed before it could write its line
                    access_logger().info(
                        "request",
                        method=scope.get("method"),
                        route=context.route,
                        status=500,
                        latency_ms=round((time.perf_counter() - started) * 1000, 1),
                    )
            return
        status = 0
        request_id: str | None = None

        async def sending(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                for name, value in headers:
                    if name == _HEADER:
                        request_id = value.decode("latin-1")
                        break
                else:  # every response carries a request id
                    request_id = self._ids.next()
                    headers.append((_HEADER, request_id.encode()))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            with reporter.request_scope(f"{scope.get('method', '')} {path[:_MAX_PATH]}"):
                await self._app(scope, receive, sending)
        finally:
            _context.reset(token)
            if not context.logged:
                route = scope.get("route")
                template = getattr(route, "path", None)
                log = access_logger()
                write = log.debug if path.startswith(_PROBE_PATHS) else log.info
                write(
                    "request",
                    request_id=request_id,
                    method=scope.get("method"),
                    route=template if isinstance(template, str) else context.route,
                    status=status or 500,  # no response started: the app crashed
                    latency_ms=round((time.perf_counter() - started) * 1000, 1),
                    user_id=context.user_id,
                    key_id=context.key_id,
                )
