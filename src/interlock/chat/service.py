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
been sent yet, they may fail over at any point before the answer is whole.

Timeouts: ``first_token`` bounds each attempt until its first content; ``total`` bounds
the whole request (the route's) and each attempt (the deployment's, if it sets its own);
``connect`` and ``idle`` are applied by the provider adapters.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from interlock.chat.types import (
    ChatRequest,
    ChatResult,
    Event,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    is_content,
)
from interlock.errors import (
    InterlockError,
    ModelNotFound,
    ServiceUnavailable,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from interlock.providers.base import Provider, Timeouts
from interlock.routing.balancer import Balancer
from interlock.routing.failsafe import FailSafeState
from interlock.routing.guard import Admission, DeploymentGuard, Refusal
from interlock.routing.retry import RetryPolicy
from interlock.routing.router import Candidate, Router
from interlock.settings import FileConfig, RoutingConfig
from interlock.state import MemoryState, SharedState


class ProviderLookup(Protocol):
    """What the service needs from the provider registry."""

    def get(self, deployment_name: str) -> Provider: ...


@dataclass(slots=True)
class ServedBy:
    """How a request was served; rendered into response headers."""

    model: str = ""
    deployment: str = ""
    attempts: int = 0
    upstream_seconds: float = 0.0  # time spent waiting on providers (all attempts)


def estimate_tokens(text_length: int) -> int:
    """A rough token count for providers that report none (about four characters a token)."""
    return (text_length + 3) // 4


def _request_length(request: ChatRequest) -> int:
    return sum(len(message.text()) for message in request.messages)


class _Settler:
    """Settles attempts on the guard; an abandonment survives the cancellation that caused
    it (it runs as its own task, so a cancelled caller cannot interrupt the release)."""

    __slots__ = ("_pending", "guard")

    def __init__(self, guard: DeploymentGuard) -> None:
        self.guard = guard
        self._pending: set[asyncio.Task[None]] = set()

    async def shielded(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        await asyncio.shield(task)

    async def abandon(self, admission: Admission, used_tokens: int = 0) -> None:
        if not admission.settled:
            await self.shielded(self.guard.abandoned(admission, used_tokens))

    async def wait(self) -> None:
        """Let the abandonments still running finish (at shutdown)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


class ChatStream:
    """A committed answer: its first content is in hand, the rest is still coming.

    Iterate ``events()`` once. It yields the deltas, then exactly one ``Usage`` (the
    provider's, or an estimate flagged ``estimated``), then one ``Finish``. A failure after
    the commit raises ``UpstreamError``; ``aclose`` cancels the upstream call and gives back
    what the attempt held on the deployment (call it in every case: it is idempotent).
    """

    def __init__(
        self,
        request: ChatRequest,
        held: list[Event],
        upstream: AsyncGenerator[Event, None],
        served: ServedBy,
        deadline: float | None,
        admission: Admission | None = None,
        settler: _Settler | None = None,
    ) -> None:
        self.request = request
        self.served = served
        self._held = held
        self._upstream = upstream
        self._admission = admission
        self._settler = settler
        self._loop = loop = asyncio.get_running_loop()
        # The total timeout is one timer per stream, not one per chunk: when it fires, it
        # cancels the wait for the next chunk in progress (or fails the next one).
        self._expired = False
        self._waiter: asyncio.Task[Any] | None = None
        self._timer = None if deadline is None else loop.call_at(deadline, self._expire)
        self.output_chars = 0  # delivered so far, for estimates and partial usage
        self.usage: Usage | None = None
        self.finish: Finish | None = None

    async def events(self) -> AsyncIterator[Event]:
        usage: Usage | None = None
        finish: Finish | None = None
        try:
            for event in self._held:
                if isinstance(event, Usage):
                    usage = event
                elif isinstance(event, Finish):
                    finish = event
                else:
                    self._count(event)
                    yield event
            self._held = []
            while finish is None or usage is None:
                incoming = await self._next()
                if incoming is None:
                    break
                if isinstance(incoming, Usage):
                    usage = incoming
                elif isinstance(incoming, Finish):
                    finish = incoming
                else:
                    self._count(incoming)
                    yield incoming
            if finish is None:
                raise UpstreamProtocolError("The model provider's stream ended early.")
        except UpstreamError as error:
            self._stop_timer()
            await self._upstream.aclose()
            await self._settle_failure(error)
            raise
        finally:
            self._stop_timer()
            await self._upstream.aclose()
        self.usage = usage or Usage(
            input_tokens=estimate_tokens(_request_length(self.request)),
            output_tokens=estimate_tokens(self.output_chars),
            estimated=True,
        )
        self.finish = finish
        admission, settler = self._admission, self._settler
        if admission is not None and settler is not None:
            await settler.guard.succeeded(admission, self.usage.total_tokens)
        yield self.usage
        yield finish

    def _count(self, event: Event) -> None:
        if isinstance(event, TextDelta | ReasoningDelta):
            self.output_chars += len(event.text)
        elif isinstance(event, ToolCallDelta):
            self.output_chars += len(event.arguments)

    @property
    def timed_out(self) -> bool:
        """True once the request's total timeout has passed."""
        return self._expired

    def _expire(self) -> None:
        self._expired = True
        waiter = self._waiter
        if waiter is not None:
            waiter.cancel()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _next(self) -> Event | None:
        if self._expired:
            raise UpstreamTimeout("The model provider did not finish in time.")
        loop = self._loop
        started = loop.time()
        task = self._waiter = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        try:
            event = await anext(self._upstream)
        except StopAsyncIteration:
            return None
        except asyncio.CancelledError:
            # Ours (the deadline) unless someone else cancelled the task too.
            if self.timed_out and task.uncancel() <= cancelling:
                raise UpstreamTimeout("The model provider did not finish in time.") from None
            raise
        finally:
            self._waiter = None
            now = loop.time()
            self.served.upstream_seconds += now - started
        admission, settler = self._admission, self._settler
        if admission is not None and settler is not None and now >= admission.reservation.renew_at:
            await settler.guard.capacity.renew(admission.candidate, admission.reservation)
        return event

    async def _settle_failure(self, error: UpstreamError) -> None:
        admission, settler = self._admission, self._settler
        if admission is not None and settler is not None:
            await settler.guard.failed(admission, error)

    def _partial_tokens(self) -> int:
        return estimate_tokens(_request_length(self.request)) + estimate_tokens(self.output_chars)

    async def aclose(self) -> None:
        """Cancel the upstream call (if still running) and settle the attempt."""
        self._stop_timer()
        await self._upstream.aclose()
        admission, settler = self._admission, self._settler
        if admission is not None and settler is not None and not admission.settled:
            await settler.abandon(admission, self._partial_tokens())


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
        self._settler = _Settler(self.guard)
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

    async def open(self, request: ChatRequest, allowed: frozenset[str] | None = None) -> ChatStream:
        """Start the answer and return once real content has arrived (see module doc).

        ``allowed``: the public models the caller may use (None: all). The request's model
        must be one of them (else ``ModelNotFound``), and fallbacks outside them are skipped.
        """
        return await self._run(request, is_content_or_finish, allowed)

    async def complete(
        self, request: ChatRequest, allowed: frozenset[str] | None = None
    ) -> tuple[ChatResult, ServedBy]:
        """The whole answer, for non-streaming callers (``allowed`` as for ``open``)."""
        stream = await self._run(request, _is_finish, allowed)
        try:
            return await collect(stream), stream.served
        finally:
            await stream.aclose()

    def _token_estimate(self, request: ChatRequest) -> int:
        output = request.max_tokens
        if output is None:
            output = self._router.default_output_tokens
        return estimate_tokens(_request_length(request)) + output

    async def _run(
        self,
        request: ChatRequest,
        commits: Callable[[Event], bool],
        allowed: frozenset[str] | None,
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
        served = ServedBy()
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
                deadline = _attempt_deadline(candidate, route_deadline, loop.time())
                try:
                    return await self._attempt(request, admission, commits, served, deadline)
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
        commits: Callable[[Event], bool],
        served: ServedBy,
        deadline: float | None,
    ) -> ChatStream:
        candidate = admission.candidate
        provider = self._providers.get(candidate.name)
        upstream = provider.stream(request, candidate.timeouts)
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_token = candidate.timeouts.first_token
        limit = deadline
        if first_token is not None:
            limit = started + first_token if limit is None else min(limit, started + first_token)
        held: list[Event] = []
        waiting_for_content = True
        guard = self.guard
        reservation = admission.reservation
        try:
            async with asyncio.timeout_at(limit) as scope:
                async for event in upstream:
                    held.append(event)
                    if commits(event):
                        break
                    if waiting_for_content:
                        if is_content_or_finish(event):
                            # From the first content on, only the total timeout applies.
                            waiting_for_content = False
                            scope.reschedule(deadline)
                    elif loop.time() >= reservation.renew_at:
                        # A long non-streaming answer: keep the slot's lease alive.
                        await guard.capacity.renew(candidate, reservation)
                else:
                    raise UpstreamProtocolError("The model provider's stream ended early.")
        except TimeoutError:
            await upstream.aclose()
            if waiting_for_content:
                raise UpstreamTimeout(
                    "The model provider did not start answering in time."
                ) from None
            raise UpstreamTimeout("The model provider did not finish in time.") from None
        except BaseException:
            await upstream.aclose()
            raise
        finally:
            served.upstream_seconds += loop.time() - started
        served.model = candidate.model
        served.deployment = candidate.name
        return ChatStream(request, held, upstream, served, deadline, admission, self._settler)


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


async def collect(stream: ChatStream) -> ChatResult:
    """Fold a stream into one answer."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, ToolCall] = {}
    usage = Usage()
    finish = Finish("stop")
    async for event in stream.events():
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            reasoning.append(event.text)
        elif isinstance(event, ToolCallDelta):
            call = calls.get(event.index)
            if call is None:
                calls[event.index] = ToolCall(event.id or "", event.name or "", event.arguments)
            else:
                call.arguments += event.arguments
                if event.id and not call.id:
                    call.id = event.id
                if event.name and not call.name:
                    call.name = event.name
        elif isinstance(event, Usage):
            usage = event
        else:
            finish = event
    return ChatResult(
        text="".join(text),
        reasoning="".join(reasoning),
        tool_calls=[calls[index] for index in sorted(calls)],
        finish_reason=finish.reason,
        usage=usage,
    )
