"""Error reports to Sentry, when ``SENTRY_DSN`` is set; nothing at all otherwise.

``sentry_reporting(settings)`` yields a ``Reporter``: ``NO_REPORTER`` (every method a no-op,
``sentry_sdk`` not even imported) without a DSN, else a ``SentryReporter``. What it sends:

- unhandled errors (the paths that answer ``internal_error``) as exceptions, level error;
- upstream failures (an ``UpstreamError`` that ended a request after every attempt) as
  messages, level warning, grouped by error code and deployment;
- both tagged with the request id, model, deployment, error class and code, and carrying the
  request's breadcrumbs: one when the AI request starts (message count, characters, token
  limit) and one when it ends (status, timing, token counts, cache result) — never content.

An exception logged anywhere else (``log.exception`` in a background task: the usage ledger's
writer, a scheduled job, the health probes) reaches Sentry too, through the logging
processor ``report_logged_exception``; the SDK's deduplication drops one already reported.

Each HTTP request runs in its own Sentry isolation scope (``request_scope``), so breadcrumbs
never mix between requests. ``send_default_pii`` stays off (the SDK's default), and
``before_send`` / ``before_breadcrumb`` scrub every string of an event of anything that looks
like a credential (``interlock.redaction``).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from interlock.redaction import scrub

if TYPE_CHECKING:
    from interlock.errors import InterlockError
    from interlock.settings import SentrySettings

_FLUSH_SECONDS = 2.0
_MAX_BREADCRUMBS = 30


class Reporter:
    """Reports nothing: what runs when Sentry is not configured (``NO_REPORTER``)."""

    enabled = False

    def request_scope(self, route: str) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def breadcrumb(self, category: str, message: str, data: Mapping[str, object]) -> None:
        """One step of the current request (lengths, timings, counts; never content)."""

    def upstream_failed(self, error: InterlockError, tags: Mapping[str, str]) -> None:
        """A request ended with ``error``, an ``UpstreamError``, after every attempt."""

    def unhandled(self, exc: BaseException, tags: Mapping[str, str]) -> None:
        """A bug: an exception that became ``internal_error``."""


NO_REPORTER = Reporter()


class SentryReporter(Reporter):
    """Reports to the Sentry client that ``sentry_reporting`` set up."""

    enabled = True

    def __init__(self, *, traces: bool = False) -> None:
        import sentry_sdk

        self._sdk = sentry_sdk
        self._traces = traces

    @contextmanager
    def request_scope(self, route: str) -> Iterator[None]:
        with self._sdk.isolation_scope() as scope:
            scope.set_tag("route", route)
            if not self._traces:
                yield
                return
            # SENTRY_TRACES_SAMPLE_RATE > 0: one transaction per request, sampled by the SDK.
            with self._sdk.start_transaction(op="http.server", name=route, source="route"):
                yield

    def breadcrumb(self, category: str, message: str, data: Mapping[str, object]) -> None:
        self._sdk.add_breadcrumb(category=category, message=message, data=dict(data))

    def upstream_failed(self, error: InterlockError, tags: Mapping[str, str]) -> None:
        with self._sdk.new_scope() as scope:
            _tag(scope, tags, error)
            scope.fingerprint = ["upstream", error.code, tags.get("deployment", "")]
            self._sdk.capture_message(
                f"upstream failure: {error.code} ({type(error).__name__})", level="warning"
            )

    def unhandled(self, exc: BaseException, tags: Mapping[str, str]) -> None:
        with self._sdk.new_scope() as scope:
            _tag(scope, tags, None)
            scope.set_tag("error_class", type(exc).__name__)
            scope.set_tag("error_code", "internal_error")
            self._sdk.capture_exception(exc)


_ERROR_METHODS = frozenset({"exception", "error", "critical"})


def report_logged_exception(logger: Any, method_name: str, event_dict: Any) -> Any:
    """A structlog processor: an error logged with its exception goes to Sentry too, when
    Sentry is set up (``sentry_sdk`` is not imported otherwise), tagged with the log event's
    name. Never raises: logging must not fail because reporting did."""
    exc_info = event_dict.get("exc_info")
    if not exc_info or method_name not in _ERROR_METHODS:
        return event_dict
    sdk = sys.modules.get("sentry_sdk")
    if sdk is None or not sdk.is_initialized():
        return event_dict
    if isinstance(exc_info, BaseException):
        exc: BaseException | None = exc_info
    elif isinstance(exc_info, tuple):
        exc = exc_info[1]
    else:
        exc = sys.exc_info()[1]
    if exc is not None:
        with contextlib.suppress(Exception), sdk.new_scope() as scope:
            scope.set_tag("log_event", str(event_dict.get("event", ""))[:200])
            scope.set_tag("error_class", type(exc).__name__)
            sdk.capture_exception(exc)
    return event_dict


def _tag(scope: Any, tags: Mapping[str, str], error: InterlockError | None) -> None:
    for name, value in tags.items():
        if value:
            scope.set_tag(name, value)
    if error is not None:
        scope.set_tag("error_class", type(error).__name__)
        scope.set_tag("error_code", error.code)


def _scrubbed(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if depth > 12:
        return value
    if isinstance(value, dict):
        return {key: _scrubbed(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrubbed(item, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(_scrubbed(item, depth + 1) for item in value)
    return value


def scrub_event(event: Any, hint: Any) -> Any:
    """``before_send``: the event with every string scrubbed, and no request data (headers,
    cookies, bodies) even if an integration added some."""
    if isinstance(event, dict):
        event.pop("request", None)
        event.pop("user", None)
    return _scrubbed(event)


def scrub_breadcrumb(crumb: Any, hint: Any) -> Any:
    """``before_breadcrumb``: the breadcrumb with every string scrubbed."""
    return _scrubbed(crumb)


@contextmanager
def sentry_reporting(
    settings: SentrySettings | None, release: str | None = None
) -> Iterator[Reporter]:
    """Set up the Sentry client for the app's lifetime (flushed and closed on exit)."""
    if settings is None:
        yield NO_REPORTER
        return
    import sentry_sdk
    from sentry_sdk.integrations.dedupe import DedupeIntegration

    sentry_sdk.init(
        dsn=settings.dsn,
        environment=settings.environment,
        release=release,
        traces_sample_rate=settings.traces_sample_rate,
        # send_default_pii is left unset: False, and the SDK's own event scrubber stays on
        # (passing it at all is deprecated in favour of data_collection since 2.5x).
        include_local_variables=False,  # a frame's locals may hold a prompt or a key
        max_request_body_size="never",
        max_breadcrumbs=_MAX_BREADCRUMBS,
        before_send=scrub_event,
        before_send_transaction=scrub_event,
        before_breadcrumb=scrub_breadcrumb,
        # Only what Interlock reports explicitly: no framework or logging hooks that would
        # pick up request bodies, headers or log lines on their own.
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[DedupeIntegration()],
    )
    try:
        yield SentryReporter(traces=settings.traces_sample_rate > 0)
    finally:
        client = sentry_sdk.get_client()
        client.flush(timeout=_FLUSH_SECONDS)
        client.close(timeout=_FLUSH_SECONDS)
        sentry_sdk.get_global_scope().set_client(None)
