"""``create_app(settings)``: wires every component in one place.

Importing this module does no I/O. The app's lifespan builds the components (database and
migrations, server secret, admin key, provider adapters and their HTTP sessions, the
embedded model) and closes them in reverse order on shutdown. A startup failure is reported
as one clear line, never a traceback.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

from interlock import __version__
from interlock.api import admin, aisdk, anthropic, health, openai, privacy, usage
from interlock.api import keys as own_keys
from interlock.api import metrics as metrics_api
from interlock.api.errors import anthropic_error_response, openai_error_response
from interlock.api.indexed_headers import IndexedRequest
from interlock.auth.identity import open_identity
from interlock.cache import build_cache
from interlock.chat.service import ChatService
from interlock.components import Components, components_of
from interlock.errors import InterlockError, InternalError, NotFound
from interlock.jobs.scheduler import start_scheduler
from interlock.limits.budgets import Budgets
from interlock.limits.rate_limits import RateLimiter
from interlock.providers.probes import running_probes
from interlock.providers.registry import ProviderRegistry
from interlock.settings import Settings
from interlock.state import build_state
from interlock.store.conversations import ConversationStore
from interlock.store.database import database_for
from interlock.store.keys import KeyStore
from interlock.store.migrate import prepare
from interlock.store.secret import load_or_create_secret
from interlock.telemetry.access_log import AccessLog
from interlock.telemetry.ledger import build_ledger
from interlock.telemetry.metrics import build_metrics
from interlock.telemetry.prices import DeploymentPrices, packaged_price_table
from interlock.telemetry.sentry import NO_REPORTER, Reporter, sentry_reporting
from interlock.telemetry.tracing import build_tracing

log = structlog.get_logger("interlock.app")

GC_YOUNG_THRESHOLD = 50_000
"""Allocations between two collections of the youngest generation, once started (see
``InterlockApp._lifespan``)."""

Announce = Callable[[Settings, str | None], None]


def announce_to_terminal(settings: Settings, new_admin_key: str | None) -> None:
    """Say where the gateway listens and how to authenticate (the key only the first time)."""
    out = sys.stdout
    out.write(f"Interlock listening on http://{settings.host}:{settings.port}\n")
    if settings.insecure_no_auth:
        out.write(
            "WARNING: INTERLOCK_INSECURE_NO_AUTH is set: every request is accepted WITHOUT "
            "authentication. Never use this outside local development.\n"
        )
    elif new_admin_key is not None:
        out.write(
            "An admin API key was created. It is shown ONCE; store it now:\n\n"
            f"    {new_admin_key}\n\n"
            "Send it as `Authorization: Bearer <key>`.\n"
        )
    elif settings.admin_key is not None:
        out.write("Authenticate with the key in INTERLOCK_ADMIN_KEY (Authorization: Bearer).\n")
    else:
        out.write(
            "Authenticate with the admin key printed on first start "
            "(Authorization: Bearer <key>), or set INTERLOCK_ADMIN_KEY.\n"
        )
    out.flush()


@asynccontextmanager
async def running(
    settings: Settings,
    announce: Announce | None = announce_to_terminal,
    tracer_provider: TracerProvider | None = None,
) -> AsyncIterator[Components]:
    """Build every app-lifetime component; close them all on exit. ``tracer_provider``:
    where spans go, instead of the exporter the settings configure (tests, embedding)."""
    async with AsyncExitStack() as stack:
        reporter = stack.enter_context(sentry_reporting(settings.sentry, release=__version__))
        database = database_for(settings)
        stack.push_async_callback(database.aclose)
        await prepare(database)
        # Usage: started once the schema is there (it replays the outbox of a killed
        # process), closed before the database (the exit stack unwinds in reverse order).
        ledger = build_ledger(settings, database)
        await ledger.start()
        stack.push_async_callback(ledger.aclose)
        prices = DeploymentPrices(settings.config.models, packaged_price_table())
        secret = (
            settings.secret.encode()
            if settings.secret is not None
            else load_or_create_secret(settings.data_dir)
        )
        state = build_state(settings.redis_url)
        stack.push_async_callback(state.aclose)
        keys = KeyStore(database, secret)
        new_admin_key = await keys.ensure_admin_key(settings.admin_key)
        identity = await stack.enter_async_context(open_identity(settings, database, keys, secret))
        if settings.insecure_no_auth:
            log.warning("authentication_disabled", flag="INTERLOCK_INSECURE_NO_AUTH")
        providers = ProviderRegistry(settings)
        stack.push_async_callback(providers.aclose)
        await providers.start()
        probes = await stack.enter_async_context(running_probes(settings, providers.usable))
        # Routing, retries, circuits and capacity over the shared state (see chat.service).
        service = ChatService.from_config(settings.config, providers, state)
        stack.push_async_callback(service.aclose)
        router = service.router
        budgets = Budgets(
            state.limits,
            settings.config.models,
            prices,
            over_budget_status=settings.config.budgets.over_budget_status,
            fail_open=settings.config.budgets.on_state_failure == "open",
        )
        stack.push_async_callback(budgets.aclose)
        limiter = RateLimiter(
            state,
            settings.config.limits,
            default_output_tokens=settings.config.routing.default_output_tokens,
        )
        stack.push_async_callback(limiter.aclose)
        # Entries in Redis when instances share it, else in the cache's own memory store.
        cache = build_cache(settings.config.cache, state, shared=settings.redis_url is not None)
        stack.push_async_callback(cache.aclose)
        # Metrics and traces (interlock.telemetry); failed attempts are counted by the guard.
        metrics = build_metrics(settings)
        if metrics is not None:
            stack.callback(metrics.close)
            service.guard.on_failure = metrics.upstream_failed
        tracing = build_tracing(settings, tracer_provider)
        if tracing is not None:
            stack.push_async_callback(tracing.aclose)
        # Scheduled jobs (interlock.jobs): started last, so stopped first.
        stack.push_async_callback(start_scheduler(settings, database, state, ledger).aclose)
        components = Components(
            settings=settings,
            database=database,
            state=state,
            authenticator=identity.authenticator,
            router=router,
            providers=providers,
            service=service,
            ledger=ledger,
            prices=prices,
            keys=keys,
            users=identity.users,
            tiers=identity.tiers,
            budgets=budgets,
            limiter=limiter,
            cache=cache,
            reporter=reporter,
            probes=probes,
            conversations=ConversationStore(database),
            metrics=metrics,
            tracing=tracing,
        )
        if announce is not None:
            announce(settings, new_admin_key)
        yield components


def _error_response(request: Request, error: InterlockError) -> Response:
    """An error outside any route's own handling, in the shape its path's clients parse."""
    if request.url.path.startswith("/v1/messages"):
        return anthropic_error_response(error)
    return openai_error_response(error)


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    error: InterlockError = NotFound(f"No route for {request.method} {request.url.path}.")
    if status == 405:
        error = NotFound(f"{request.method} is not allowed on {request.url.path}.")
        error.status = 405
    return _error_response(request, error)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", path=request.url.path)
    components_of(request).reporter.unhandled(exc, {"route": request.url.path})
    return _error_response(request, InternalError())


# The routes the chat pipeline serves: it writes their access lines itself.
CHAT_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/messages", "/api/chat", "/api/chat/v4", "/api/chat/text"}
)


class ChatRoutes:
    """The chat routes, dispatched straight to their handlers; everything else to ``http``.

    Starlette's middleware and router cost a few percent of a chat request's CPU for nothing
    these handlers need: they render their own errors in their own protocol. An exception
    they let through is handled as Starlette's error middleware would (logged, reported,
    a 500 in OpenAI's shape if nothing was sent yet).
    """

    def __init__(self, http: Starlette, paths: frozenset[str]) -> None:
        self._http = http
        self._handlers: dict[str, Callable[[Request], Awaitable[ASGIApp]]] = {
            route.path: route.endpoint
            for route in http.routes
            if isinstance(route, Route)
            and route.path in paths
            and route.methods is not None
            and "POST" in route.methods
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handlers.get(scope["path"]) if scope.get("method") == "POST" else None
        if handler is None:
            await self._http(scope, receive, send)
            return
        scope["app"] = self._http  # where the handlers find the app's components
        try:
            response = await handler(IndexedRequest(scope, receive, send))
            await response(scope, receive, send)
        except Exception as exc:
            response = await _internal_error(Request(scope), exc)
            with contextlib.suppress(Exception):  # too late if the answer had started
                await response(scope, receive, send)


class InterlockApp:
    """The ASGI app: the HTTP routes, plus a lifespan that fails in one line, not a trace."""

    def __init__(
        self,
        settings: Settings,
        announce: Announce | None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self._announce = announce
        self._tracer_provider = tracer_provider
        self.http = Starlette(
            routes=[
                *health.routes,
                *metrics_api.routes,
                *openai.routes,
                *anthropic.routes,
                *aisdk.routes,
                *usage.routes,
                *admin.routes,
                *own_keys.routes,
                *privacy.routes,  # a user's export and erasure
            ],
            exception_handlers={404: _not_found, 405: _not_found, Exception: _internal_error},
        )
        self._running_reporter: Reporter = NO_REPORTER  # Sentry's, while the app runs
        # One access line per request (chat requests write their own) and Sentry's scope.
        self._served = AccessLog(
            ChatRoutes(self.http, CHAT_PATHS), self._reporter, self_logging=CHAT_PATHS
        )

    def _reporter(self) -> Reporter:
        return self._running_reporter  # asked per request: kept here, not looked up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self._served(scope, receive, send)

    @asynccontextmanager
    async def started(self) -> AsyncIterator[Components]:
        """Run the lifespan around a block (for embedding and in-process tests)."""
        async with running(self.settings, self._announce, self._tracer_provider) as components:
            self.http.state.components = components
            self._running_reporter = components.reporter
            try:
                yield components
            finally:
                self._running_reporter = NO_REPORTER

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.started())
            except Exception as exc:
                await send({"type": "lifespan.startup.failed", "message": startup_problem(exc)})
                return
            # Startup leaves ~100k long-lived objects (SQLAlchemy, pydantic, Alembic); moving
            # them out of the collector's generations stops every collection re-scanning them.
            gc.collect()
            gc.freeze()
            # The requests in flight hold a few thousand young objects (some 25,000 with 256
            # in flight), so the default threshold (700) ran a collection every ~15 requests,
            # each re-scanning them and finding no garbage: ~6% of the CPU under load (10,000
            # still cost 5% with 256 in flight). Past the in-flight set, the collector runs
            # rarely; reference cycles still trigger it as they pile up.
            gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


def startup_problem(exc: Exception) -> str:
    """One line saying why startup failed, without secrets or a traceback."""
    if isinstance(exc, InterlockError):
        return f"Interlock could not start: {exc.message}"
    return f"Interlock could not start: {type(exc).__name__}: {exc}"


def create_app(
    settings: Settings,
    announce: Announce | None = announce_to_terminal,
    *,
    tracer_provider: TracerProvider | None = None,
) -> InterlockApp:
    return InterlockApp(settings, announce, tracer_provider)
