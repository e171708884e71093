"""The chat pipeline: one service runs every chat request, whatever protocol it came in on.

Routing (``interlock.routing``): the router gives the plan for the model as the caller may
see it (its own deployments by priority, then its fallback models'); the balancer orders
deployments that share a priority, least busy first; the guard admits an attempt only to a
deployment that is not in a cooldown, whose circuit lets it through and that has capacity,
and settles every attempt, however it ends. When nothing can take the request, the caller
gets ``ServiceUnavailable`` with ``retry_after`` set to the earliest moment something may
free up.

The stream-integrity contract lives here. ``open`` tries the candidates in order and
returns only once one of them has produced real content (or finished): until then any
failure — an error status, a connection error, an error event inside a 200 stream, a
first-token timeout — is retried on the same deployment when the retry policy says so,
else moves on to the next candidate, invisibly to the caller. A client's own bad request
is raised at once. After that the caller owns a ``ChatStream``; a failure inside it is
raised to the protocol renderer, which ends the stream with its protocol's error event.

Non-streaming requests are a stream collected to the end (``complete``); since nothing has
been sent yet, they may fail over at any point before the answer is whole. The committed
stream itself is ``interlock.chat.stream``.

Timeouts: ``first_token`` bounds each attempt until its first content; ``total`` bounds
the whole request (the route's) and each attempt (the deployment's, if it sets its own);
``connect`` and ``idle`` are applied by the provider adapters.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from interlock.chat.deadline import Deadline
from interlock.chat.stream import (
    ChatStream,
    ServedBy,
    Settler,
    collect,
    estimate_tokens,
    request_length,
)
from interlock.chat.types import ChatRequest, ChatResult, Event, Finish, is_content
from interlock.errors import (
    InterlockError,
    ModelNotFound,
    ServiceUnavailable,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from interlock.providers.base import Provider, Timeouts
from interlock.providers.http import upstream_headers
from interlock.routing.balancer import Balancer
from interlock.routing.capacity import Reservation
from interlock.routing.failsafe import FailSafeState
from interlock.routing.guard import Admission, DeploymentGuard, Refusal
from interlock.routing.retry import RetryPolicy
from interlock.routing.router import Candidate, Router
from interlock.settings import FileConfig, RoutingConfig
from interlock.state import MemoryState, SharedState

# Re-exported: the protocol renderers and the usage accountant take them from here.
__all__ = [
    "ChatService",
    "ChatStream",
    "ProviderLookup",
    "ServedBy",
    "collect",
    "estimate_tokens",
    "is_content_or_finish",
]


class ProviderLookup(Protocol):
    """What the service needs from the provider registry."""

    def get(self, deployment_name: str) -> Provider: ...


def default_guard() -> DeploymentGuard:
    """A guard over this process's own state, with the default routing settings."""
    return DeploymentGuard(FailSafeState(MemoryState()), RoutingConfig())


class ChatService:
    """Runs chat requests: routing, attempts, retries and fallbacks (see the module doc).

    ``guard``, ``retry`` and ``balancer`` default to in-process ones with the default
    settings; ``sleep`` waits between retries (tests pass one that does not sleep).
    """

    def __init__(
        self,
        router: Router,
        providers: ProviderLookup,
        *,
        guard: DeploymentGuard | None = None,
        retry: RetryPolicy | None = None,
        balancer: Balancer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._router = router
        self._providers = providers
        self.guard = guard or default_guard()
        self._retry = retry or RetryPolicy(RoutingConfig().retry)
        self._balancer = balancer or Balancer(self.guard.capacity)
        self._settler = Settler(self.guard)
        self._sleep = sleep

    @classmethod
    def from_config(
        cls,
        config: FileConfig,
        providers: ProviderLookup,
        state: SharedState,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> ChatService:
        """The service as the app runs it: routing over ``state`` (shared with the other
        instances when it is Redis), set up from ``config``. ``clock`` (wall time: instances
        compare cooldown ends) drives circuits and cooldowns; ``rng`` the jitter and the
        weighted draws."""
        routing = config.routing
        router = Router(
            config.models,
            config.server.timeouts.over(Timeouts()),
            lease=routing.slot_lease,
            default_output_tokens=routing.default_output_tokens,
        )
        guard = DeploymentGuard(
            FailSafeState(state, max_age=routing.state_max_age), routing, clock=clock
        )
        return cls(
            router,
            providers,
            guard=guard,
            retry=RetryPolicy(routing.retry, rng=rng),
            balancer=Balancer(guard.capacity, rng=rng),
            sleep=sleep,
        )

    @property
    def router(self) -> Router:
        return self._router

    async def aclose(self) -> None:
        """Finish the releases still running and close what the service owns."""
        await self._settler.wait()
        await self.guard.state.aclose()

    async def open(
        self,
        request: ChatRequest,
        allowed: frozenset[str] | None = None,
        *,
        whole: bool = False,
        served: ServedBy | None = None,
    ) -> ChatStream:
        """Start the answer and return once real content has arrived (see module doc).

        ``allowed``: the public models the caller may use (None: all). The request's model
        must be one of them (else ``ModelNotFound``), and fallbacks outside them are skipped.
        ``whole``: return only once the whole answer is in hand (a non-streaming caller, which
        may still fail over at any point). ``served`` is filled in as attempts are made, so
        that a caller still knows the attempts and the last deployment tried when this raises.
        """
        return await self._run(request, whole, allowed, served or ServedBy())

    async def complete(
        self, request: ChatRequest, allowed: frozenset[str] | None = None
    ) -> tuple[ChatResult, ServedBy]:
        """The whole answer, for non-streaming callers (``allowed`` as for ``open``)."""
        stream = await self.open(request, allowed, whole=True)
        try:
            return await collect(stream), stream.served
        finally:
            await stream.aclose()

    def _token_estimate(self, request: ChatRequest) -> int:
        output = request.max_tokens
        if output is None:
            output = self._router.default_output_tokens
        return estimate_tokens(request_length(request)) + output

    async def _run(
        self,
        request: ChatRequest,
        whole: bool,
        allowed: frozenset[str] | None,
        served: ServedBy,
    ) -> ChatStream:
        plan = self._router.plan(request.model, allowed)
        if plan is None:
            raise ModelNotFound(f"The model {request.model!r} does not exist.", param="model")
        candidates = await self._balancer.arrange(plan)
        loop = asyncio.get_running_loop()
        route_total = self._router.route_timeouts.total
        route_deadline = None if route_total is None else loop.time() + route_total
        tokens = self._token_estimate(request) if plan.counts_tokens else 0
        guard = self.guard
        holder = guard.holder()
        retry = self._retry
        retry.budget.note_request()
        last_error: InterlockError | None = None
        earliest = math.inf  # when the first refused deployment may take requests again
        for candidate in candidates:
            retries = 0
            while True:
                admission = await guard.admit(candidate, holder, tokens)
                if isinstance(admission, Refusal):
                    earliest = min(earliest, admission.retry_after)
                    break
                served.attempts += 1
                served.model = candidate.model
                served.deployment = candidate.name
                deadline = _attempt_deadline(candidate, route_deadline, loop.time())
                try:
                    return await self._attempt(request, admission, whole, served, deadline)
                except UpstreamError as error:
                    await guard.failed(admission, error)
                    if error.client_fault:
                        raise
                    last_error = error
                    left = math.inf if route_deadline is None else route_deadline - loop.time()
                    delay = retry.retry_delay(error, retries, left)
                    if delay is None:
                        break
                    retries += 1
                    await self._sleep(delay)
                except BaseException:
                    await self._settler.abandon(admission)
                    raise
            if route_deadline is not None and loop.time() >= route_deadline:
                break
        if last_error is not None:
            raise last_error
        raise ServiceUnavailable(retry_after=earliest if math.isfinite(earliest) else None)

    async def _attempt(
        self,
        request: ChatRequest,
        admission: Admission,
        whole: bool,
        served: ServedBy,
        deadline: float | None,
    ) -> ChatStream:
        """One attempt on one deployment, until it commits: real content (a stream) or the
        whole answer (``whole``: the provider is asked for one reply where it can, and only
        ``deadline`` bounds the wait, since nothing comes before the answer is whole)."""
        candidate = admission.candidate
        provider = self._providers.get(candidate.name)
        trace = served.trace
        if trace is not None:  # tracing: this attempt's span, its traceparent to the provider
            attempt = admission.observer = trace.attempt(candidate, request)
            upstream_headers.set(attempt.headers(upstream_headers.get()))
        upstream = provider.stream(request, candidate.timeouts, whole=whole)
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_token = None if whole else candidate.timeouts.first_token
        limit = deadline
        if first_token is not None:
            limit = started + first_token if limit is None else min(limit, started + first_token)
        commits = _is_finish if whole else is_content_or_finish
        held: list[Event] = []
        waiting_for_content = not whole
        guard = self.guard
        reservation = admission.reservation
        # A whole reply can take long with nothing arriving: its slot's lease is kept alive
        # on the side (a stream renews it as its events flow).
        keeper = (
            asyncio.ensure_future(self._keep_slot(candidate, reservation))
            if whole and reservation.slot_backend is not None
            else None
        )
        timer = Deadline(limit)
        try:
            async for event in upstream:
                held.append(event)
                if commits(event):
                    break
                if waiting_for_content:
                    if is_content_or_finish(event):
                        # From the first content on, only the total timeout applies.
                        waiting_for_content = False
                        timer.move(deadline)
                elif loop.time() >= reservation.renew_at:
                    # A long answer collected from a stream: keep the slot's lease alive.
                    await guard.capacity.renew(candidate, reservation)
            else:
                raise UpstreamProtocolError("The model provider's stream ended early.")
            timer.stop()
        except BaseException as error:
            # Whatever ended the attempt, a deadline that expired has its cancellation undone.
            timed_out = timer.claim() and isinstance(error, asyncio.CancelledError)
            await upstream.aclose()
            if not timed_out:
                raise
            if waiting_for_content:
                raise UpstreamTimeout(
                    "The model provider did not start answering in time."
                ) from None
            raise UpstreamTimeout("The model provider did not finish in time.") from None
        finally:
            if keeper is not None:
                keeper.cancel()
            served.upstream_seconds += loop.time() - started
        served.committed = True
        return ChatStream(request, held, upstream, served, deadline, admission, self._settler)

    async def _keep_slot(self, candidate: Candidate, reservation: Reservation) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(0.0, reservation.renew_at - loop.time()))
            await self.guard.capacity.renew(candidate, reservation)


def _attempt_deadline(
    candidate: Candidate, route_deadline: float | None, now: float
) -> float | None:
    """The route's deadline, or the deployment's own total if that comes first."""
    total = candidate.timeouts.total
    if total is None:
        return route_deadline
    own = now + total
    return own if route_deadline is None else min(own, route_deadline)


def is_content_or_finish(event: Event) -> bool:
    return is_content(event) or isinstance(event, Finish)


def _is_finish(event: Event) -> bool:
    return isinstance(event, Finish)
