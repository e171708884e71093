"""The request path every chat protocol shares: ``ChatPipeline``, and one ``ChatCall`` per request.

An inbound protocol adapter (``interlock.api``) does only its wire work: it reads the
credential and the body in its own format, hands the canonical request to its call, and
renders the events, the answer or the error in its own format. Everything else happens here,
in the same order whatever the protocol:

1. authenticate → the principal, or 401 (``ChatCall.authenticate``); before it, the client
   IP's rate limit and failed-authentication lock-out → 429;
2. check → request limits and the caller's model access → 400 / 403 / 404;
3. admit → rate limits per key, user, tier and model (requests, tokens, concurrency) → 429
   with ``Retry-After``; the ``x-ratelimit-*`` headers on every response;
4. budgets → the request's maximum cost held against the caller's budgets → 429 / 402 / 503;
5. cache → a stored answer, or the answer of an identical request in flight, is replayed
   (``interlock.cache``); otherwise the fresh answer is recorded on its way to the client and
   stored once it was delivered whole;
6. call → ``ChatService``: routing, retries, fallbacks and the stream-integrity contract;
7. account → exactly one usage row however the request ends (answered, refused, cut by a
   failure mid-stream, abandoned by the client); the budget hold settled at the real cost
   (nothing for a cache hit) and the rate-limit admission with the real tokens; the
   request's metrics and its trace span (``interlock.telemetry``), when they are on.

A streaming answer is a ``Reply``: the adapter renders its ``events()`` and calls ``end()``
when the response is over, in every case (``interlock.api.streaming`` makes sure of it). A
non-streaming answer is the same stream collected to the end (``ChatCall.complete``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import anyio
import structlog

from interlock.auth.access import allowed_models, model_not_found
from interlock.auth.authenticator import Authenticator
from interlock.auth.principal import Principal
from interlock.cache import (
    CACHE_HEADER,
    CacheDecision,
    CacheDirective,
    CacheStatus,
    ResponseCache,
)
from interlock.cache.recorder import result_events
from interlock.chat.service import ChatService
from interlock.chat.stream import ChatStream, ServedBy, collect
from interlock.chat.types import ChatRequest, ChatResult, Event, TextDelta, Usage
from interlock.errors import AuthenticationFailed, InterlockError, InternalError, InvalidRequest
from interlock.limits.admission import Admission, RateLimitExceeded
from interlock.limits.budgets import Budgets, Reservation
from interlock.limits.quota import NO_QUOTAS, Quotas
from interlock.limits.rate_limits import RateLimiter
from interlock.providers.http import upstream_headers
from interlock.settings import ServerConfig
from interlock.telemetry.chat_observer import ChatObserver
from interlock.telemetry.metrics import Metrics
from interlock.telemetry.prices import DeploymentPrices
from interlock.telemetry.request_ids import RequestIds
from interlock.telemetry.tracing import Tracing
from interlock.telemetry.usage_record import (
    CLIENT_CLOSED_REQUEST,
    UsageRecord,
    UsageSink,
    record_usage,
)

log = structlog.get_logger("interlock.chat.pipeline")


@dataclass(slots=True)
class ChatPipeline:
    """What every chat request goes through; built once per app, ``begin`` per request."""

    server: ServerConfig
    authenticator: Authenticator
    service: ChatService
    budgets: Budgets
    limiter: RateLimiter
    ledger: UsageSink
    prices: DeploymentPrices
    request_ids: RequestIds
    cache: ResponseCache | None = None  # None: no response cache
    # The access line, error reports and the opt-in prompt log (interlock.telemetry).
    observer: ChatObserver = field(default_factory=ChatObserver)
    metrics: Metrics | None = None  # None: metrics are off
    tracing: Tracing | None = None  # None: tracing is off, no span is made

    def begin(self, route: str = "other", headers: Mapping[str, str] | None = None) -> ChatCall:
        """A new request on inbound ``route`` (``openai``, ``anthropic``, ``aisdk``): its id
        and its clock start now. ``headers``: the HTTP request's, for the caller's
        ``traceparent``. The request id goes to the providers called from this context."""
        request_id = self.request_ids.next()
        upstream_headers.set({"x-request-id": request_id})
        call = ChatCall(self, request_id, time.perf_counter(), Metrics.route(route))
        if self.tracing is not None:
            call.served.trace = self.tracing.request(call.route, headers)
        return call

    async def authenticate(
        self,
        credential: str | None,
        *,
        peer: str | None = None,
        forwarded_for: str | Sequence[str] | None = None,
    ) -> tuple[Principal, Quotas]:
        """The caller behind ``credential`` (401 if it is not valid), for any route.

        ``peer`` is the TCP peer's address and ``forwarded_for`` the ``X-Forwarded-For``
        header (believed from trusted proxies only): the client IP, limited before the
        credential is looked at (429), and charged with the failure if it is not valid, so
        guessing keys is throttled on every route alike.
        """
        limiter = self.limiter
        ip = limiter.client_ip(peer, forwarded_for)
        quotas = await limiter.before_auth(ip)
        try:
            principal = await self.authenticator.authenticate(credential)
        except AuthenticationFailed:
            await limiter.note_failed_auth(ip)
            raise
        return principal, quotas


class ChatCall:
    """One chat request on its way through the pipeline (see the module doc).

    Call ``authenticate``, then ``stream`` or ``complete``; on an ``InterlockError`` from any
    of them call ``failed``, and ``client_left`` if the client went away before the answer
    started. Each of these ends accounts for the request exactly once.
    """

    __slots__ = (
        "_accounted",
        "_admission",
        "_allowed",
        "_cache",
        "_pipeline",
        "_quotas",
        "_reservation",
        "_transcript",
        "chat",
        "principal",
        "request_id",
        "route",
        "served",
        "started",
        "streaming",
    )

    def __init__(
        self, pipeline: ChatPipeline, request_id: str, started: float, route: str = "other"
    ) -> None:
        self._pipeline = pipeline
        self.request_id = request_id
        self.started = started  # a time.perf_counter() reading
        self.route = route  # the inbound protocol, a metrics label
        self.principal: Principal | None = None  # no usage row for an unauthenticated caller
        self.chat: ChatRequest | None = None
        self.served = ServedBy()  # filled in by the service as attempts are made
        self.streaming = False
        self._allowed: frozenset[str] | None = None
        self._reservation: Reservation | None = None  # the budgets' hold
        self._admission: Admission | None = None  # the rate limits' hold
        self._quotas: Quotas = NO_QUOTAS  # the x-ratelimit-* values known so far
        self._cache: CacheDecision | None = None  # None until the cache was asked
        self._accounted = False
        self._transcript: list[str] | None = None  # the answer, for the opt-in prompt log

    async def authenticate(
        self,
        credential: str | None,
        *,
        peer: str | None = None,
        forwarded_for: str | Sequence[str] | None = None,
    ) -> Principal:
        """The caller, from the credential its protocol carries (see
        ``ChatPipeline.authenticate``)."""
        self.principal, self._quotas = await self._pipeline.authenticate(
            credential, peer=peer, forwarded_for=forwarded_for
        )
        return self.principal

    async def stream(
        self, chat: ChatRequest, cache: CacheDirective = CacheDirective.DEFAULT
    ) -> Reply:
        """Start a streaming answer; returns once real content is in hand (or raises).
        ``cache``: the caller's cache directive (``Cache-Control``, the body's field)."""
        self.streaming = True
        await self._admit(chat)
        decision = await self._look_up(chat, cache)
        if decision.hit:
            return Reply(self, self._replay(chat, decision), time.perf_counter(), decision)
        try:
            stream = await self._pipeline.service.open(chat, self._allowed, served=self.served)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await decision.abandon()
            raise
        return Reply(self, stream, time.perf_counter(), decision)

    async def complete(
        self, chat: ChatRequest, cache: CacheDirective = CacheDirective.DEFAULT
    ) -> ChatResult:
        """The whole answer (it may fail over at any point until it is whole)."""
        await self._admit(chat)
        decision = await self._look_up(chat, cache)
        stored = False
        try:
            if decision.hit:
                stream = self._replay(chat, decision)
            else:
                stream = await self._pipeline.service.open(
                    chat, self._allowed, whole=True, served=self.served
                )
            try:
                result = await collect(stream)
            finally:
                # A shield costs more than the rest of the step: only where there is work.
                if not stream.ended:
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
            if decision.records:
                for event in result_events(result):
                    decision.feed(event)
                with anyio.CancelScope(shield=True):
                    await decision.finish(
                        model=self.served.model, deployment=self.served.deployment
                    )
            stored = True
        finally:
            if not stored and decision.records:
                with anyio.CancelScope(shield=True):
                    await decision.abandon()
        if self._transcript is not None:
            self._transcript.append(result.text)
        self._account(status=200, usage=result.usage)
        return result

    async def _look_up(self, chat: ChatRequest, directive: CacheDirective) -> CacheDecision:
        cache = self._pipeline.cache
        principal = self.principal
        if cache is None or principal is None:
            self._cache = CacheDecision(CacheStatus.BYPASS, reason="disabled")
        else:
            self._cache = await cache.lookup(chat, user=principal.user_id, directive=directive)
        return self._cache

    def _replay(self, chat: ChatRequest, decision: CacheDecision) -> ChatStream:
        """A hit as a committed stream, served by the deployment that made the answer."""
        entry = decision.entry
        assert entry is not None
        served = self.served
        served.model, served.deployment, served.committed = entry.model, entry.deployment, True
        return ChatStream(chat, [], decision.replay(), served, None)

    def headers(self) -> dict[str, str]:
        """The response headers every protocol sends: the request id, the rate limits left
        (``x-ratelimit-*``), the cache's answer, how it was served and what the gateway itself
        added to the time taken."""
        headers = {"x-request-id": self.request_id, **self._quotas.headers()}
        headers[CACHE_HEADER] = (self._cache.status if self._cache else CacheStatus.BYPASS).value
        served = self.served
        if served.deployment:
            elapsed = time.perf_counter() - self.started
            overhead_ms = max(0.0, (elapsed - served.upstream_seconds) * 1000)
            headers["x-interlock-model"] = served.model
            headers["x-interlock-deployment"] = served.deployment
            headers["x-interlock-attempts"] = str(served.attempts)
            headers["x-interlock-overhead-ms"] = f"{overhead_ms:.2f}"
        return headers

    def failed(self, error: InterlockError) -> None:
        """The request ended with ``error`` before any answer was sent."""
        if isinstance(error, RateLimitExceeded):
            self._quotas = error.quotas
            if self._pipeline.metrics is not None:
                self._pipeline.metrics.rate_limited(error.code)
        self._account(status=error.status, error=error.code, failure=error)

    def client_left(self) -> None:
        """The client went away before the answer started."""
        log.info("client_disconnected", request_id=self.request_id)
        self._account(status=CLIENT_CLOSED_REQUEST, error="client_disconnected", partial=True)

    async def _admit(self, chat: ChatRequest) -> None:
        """The checks before anything reaches upstream: limits, model access, budgets."""
        principal = self.principal
        if principal is None:
            raise RuntimeError("authenticate before asking for an answer")
        self.chat = chat
        observer = self._pipeline.observer
        observer.asked(self.request_id, chat, self.streaming)
        if observer.logs_prompts_of(principal):
            self._transcript = []
        if self.served.trace is not None:
            self.served.trace.requested(chat, self.streaming)
        server = self._pipeline.server
        if len(chat.messages) > server.max_messages:
            raise InvalidRequest(
                f"Too many messages: at most {server.max_messages} are allowed.",
                param="messages",
            )
        allowed = allowed_models(principal)  # 403 if the caller's tier is not configured
        if not self._pipeline.service.router.has_model(chat.model) or (
            allowed is not None and chat.model not in allowed
        ):
            # A model outside the caller's scope looks exactly like one that does not exist.
            raise model_not_found(chat.model)
        self._allowed = allowed
        # Rate limits: one request and its tokens (prompt + max_tokens) from every scope,
        # and a concurrency slot, held until the request is accounted.
        self._admission = await self._pipeline.limiter.admit(principal, chat, before=self._quotas)
        self._quotas = self._admission.quotas
        # The request's maximum cost, held against its budgets (over budget: refused; the
        # shared state cannot tell: 503, budgets fail closed) before anything goes upstream.
        self._reservation = await self._pipeline.budgets.reserve(principal, chat)

    def _account(
        self,
        *,
        status: int,
        usage: Usage | None = None,
        output_chars: int = 0,
        first_token_at: float | None = None,
        error: str | None = None,
        partial: bool = False,
        failure: InterlockError | None = None,
    ) -> None:
        """Record the request's usage once and settle its budget hold at the real cost and
        its rate-limit admission with the real tokens; accounting never fails a request.
        Then its access line and error report (``ChatObserver.ended``)."""
        if self._accounted:
            return
        self._accounted = True
        record = None
        try:
            record = self._settle(
                status=status,
                usage=usage,
                output_chars=output_chars,
                first_token_at=first_token_at,
                error=error,
                partial=partial,
            )
        finally:
            self._observe(status, error, record)
            self._log_end(status, failure or error, record)

    def _log_end(
        self, status: int, error: InterlockError | str | None, record: UsageRecord | None
    ) -> None:
        """The request's access line, error report and prompt log (``ChatObserver.ended``)."""
        served = self.served
        try:
            self._pipeline.observer.ended(
                request_id=self.request_id,
                principal=self.principal,
                chat=self.chat,
                record=record,
                status=status,
                error=error,
                started=self.started,
                model=served.model,
                deployment=served.deployment,
                attempts=served.attempts,
                cache=(self._cache.status if self._cache else CacheStatus.BYPASS).value,
                answer="".join(self._transcript) if self._transcript is not None else None,
            )
        except Exception:
            log.exception("request_not_logged", request_id=self.request_id)

    def _settle(
        self,
        *,
        status: int,
        usage: Usage | None,
        output_chars: int,
        first_token_at: float | None,
        error: str | None,
        partial: bool,
    ) -> UsageRecord | None:
        principal = self.principal
        if principal is None:  # no usage row for an unauthenticated caller
            return None
        pipeline = self._pipeline
        chat = self.chat
        admission = self._admission
        try:
            record = record_usage(
                pipeline.ledger,
                pipeline.prices,
                request_id=self.request_id,
                principal=principal,
                model=chat.model if chat is not None else "",
                request=chat,
                started=self.started,
                status=status,
                streaming=self.streaming,
                served=self.served,
                usage=usage,
                output_chars=output_chars,
                first_token_at=first_token_at,
                error=error,
                partial=partial,
                cache_hit=self._cache is not None and self._cache.hit,
            )
        except Exception as exc:
            log.exception("usage_not_recorded", request_id=self.request_id)
            pipeline.observer.crashed(exc, request_id=self.request_id)
            if admission is not None:  # its slot is freed; its tokens stay charged
                pipeline.limiter.settle_soon(admission, admission.reserved)
            return None  # the hold stays charged: never less than the real cost
        if admission is not None:
            pipeline.limiter.settle_soon(admission, record.input_tokens + record.output_tokens)
        if self._reservation is not None:
            pipeline.budgets.settle_soon(self._reservation, record.cost)
        return record

    def _observe(self, status: int, error: str | None, record: UsageRecord | None) -> None:
        """The request's metrics and the end of its span, when they are on."""
        pipeline = self._pipeline
        metrics, served = pipeline.metrics, self.served
        trace = served.trace
        if metrics is None and trace is None:
            return
        cache = self._cache.status.value if self._cache is not None else None
        if metrics is not None:
            if record is None:
                metrics.request_refused(self.route, status, error)
            else:
                # One clock reading for both: the overhead is a part of the duration.
                elapsed = time.perf_counter() - self.started
                overhead = None
                if served.committed and not record.cache_hit:  # answered upstream
                    overhead = max(0.0, elapsed - served.upstream_seconds)
                metrics.request_done(
                    record, self.route, cache=cache, duration_s=elapsed, overhead_s=overhead
                )
        if trace is not None:
            trace.end(
                request_id=self.request_id,
                status=status,
                error=error,
                record=record,
                response_model=served.model if served.committed else None,
                cache=cache,
            )


class Reply:
    """A streaming answer, committed: render ``events()`` once, then ``end()`` (idempotent).

    ``events()`` yields the canonical events. A failure after the commit is raised as an
    ``InterlockError`` (an unexpected exception becomes ``InternalError``, logged) for the
    adapter to render as its protocol's terminal error event. ``end`` closes the upstream
    call and accounts for what the client received: the whole answer, an answer cut by a
    failure, or one abandoned by the client.
    """

    __slots__ = ("_cache", "_call", "_ended", "_error", "_failure", "first_token_at", "stream")

    def __init__(
        self, call: ChatCall, stream: ChatStream, first_token_at: float, cache: CacheDecision
    ) -> None:
        self._call = call
        self.stream = stream
        self.first_token_at = first_token_at
        self._cache = cache
        self._failure: str | None = None
        self._error: InterlockError | None = None
        self._ended = False
        metrics = call._pipeline.metrics
        if metrics is not None:
            metrics.stream_opened(call.route)

    async def events(self) -> AsyncIterator[Event]:
        call = self._call
        admission = call._admission
        transcript = call._transcript
        try:
            async for event in self._cache.tee(self.stream.events()):
                if admission is not None and admission.renew_due():
                    # a long answer keeps its concurrency slot past the lease
                    await call._pipeline.limiter.renew(admission)
                if transcript is not None and isinstance(event, TextDelta):
                    transcript.append(event.text)
                yield event
        except InterlockError as error:
            self._failure, self._error = error.code, error
            raise
        except Exception as exc:
            log.exception("stream_failed", request_id=call.request_id)
            served = self.stream.served
            call._pipeline.observer.crashed(
                exc, request_id=call.request_id, model=served.model, deployment=served.deployment
            )
            self._failure = InternalError.code
            raise InternalError() from exc

    async def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        call = self._call
        metrics = call._pipeline.metrics
        if metrics is not None:
            metrics.stream_closed(call.route)
        stream = self.stream
        if not stream.ended:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        failure = self._failure
        if failure is None and stream.finish is not None:
            status, partial, usage = 200, False, stream.usage  # the whole answer was sent
        elif failure is not None:
            status, partial, usage = 200, True, None  # cut by an error event after the 200
        else:
            status, partial, usage = CLIENT_CLOSED_REQUEST, True, None  # the client left
            failure = "client_disconnected"
        self._call._account(
            status=status,
            usage=usage,
            output_chars=stream.output_chars,
            first_token_at=self.first_token_at,
            error=failure,
            partial=partial,
            failure=self._error,
        )
        if not self._cache.records:
            return
        with anyio.CancelScope(shield=True):  # stored only once delivered whole
            if partial:
                await self._cache.abandon()
            else:
                served = stream.served
                await self._cache.finish(model=served.model, deployment=served.deployment)
