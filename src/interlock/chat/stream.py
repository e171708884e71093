"""A committed answer as it streams: ``ChatStream``, and what is counted about it.

``ChatService.open`` returns a ``ChatStream`` once the first real content is in hand. The
stream relays the rest of the provider's events, enforces the request's total timeout (one
timer per stream, not one per chunk), keeps the deployment's concurrency slot alive while
it flows, and settles the attempt on the deployment guard exactly once, however it ends:
finished, failed, or abandoned by its reader (``aclose``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

import msgspec

from interlock.chat.types import (
    ChatRequest,
    ChatResult,
    Event,
    Finish,
    ReasoningDelta,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from interlock.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from interlock.routing.guard import Admission, DeploymentGuard

if TYPE_CHECKING:
    from interlock.telemetry.tracing import RequestTrace


class ServedBy(msgspec.Struct):  # built per request: a Struct is made in C
    """How a request was served (rendered into response headers), or, for a request that
    failed, the last deployment it tried."""

    model: str = ""
    deployment: str = ""
    attempts: int = 0
    committed: bool = False  # the deployment answered: real content (or the end) came back
    upstream_seconds: float = 0.0  # time spent waiting on providers (all attempts)
    trace: RequestTrace | None = None  # the request's span, parent of the attempts' (tracing)


def estimate_tokens(text_length: int) -> int:
    """A rough token count for providers that report none (about four characters a token)."""
    return (text_length + 3) // 4


def request_length(request: ChatRequest) -> int:
    """The characters of the request's text, for token estimates (counted part by part:
    the messages' texts are not joined for it)."""
    return sum(
        len(part.text)
        for message in request.messages
        for part in message.content
        if isinstance(part, TextPart)
    )


class Settler:
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
        settler: Settler | None = None,
    ) -> None:
        self.request = request
        self.served = served
        self._held = held
        self._upstream = upstream
        self._admission = admission
        self._settler = settler
        self._loop = asyncio.get_running_loop()
        # The total timeout is one timer per stream, not one per chunk: when it fires, it
        # cancels the wait for the next chunk in progress (or fails the next one). It is set
        # when the stream first reads upstream: a whole answer, already held, never does.
        self._deadline = deadline
        self._expired = False
        self._waiter: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.output_chars = 0  # delivered so far, for estimates and partial usage
        self.usage: Usage | None = None
        self.finish: Finish | None = None
        # ``events`` ran to the end: the upstream call is closed and the attempt settled,
        # so ``aclose`` has nothing left to do (and need not be shielded from cancellation).
        self.ended = False

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
            if finish is None or usage is None:
                self._start_timer()
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
        await self._conclude(usage, finish)
        assert self.usage is not None
        yield self.usage
        yield finish

    async def held_answer(self) -> list[Event] | None:
        """The whole answer when the attempt already holds it (a non-streaming call, whose
        provider sent one reply), concluded as ``events`` concludes it; else ``None``, and
        the answer is read with ``events``. Spares a whole answer the generator."""
        held = self._held
        usage: Usage | None = None
        finish: Finish | None = None
        for event in held:
            if isinstance(event, Usage):
                usage = event
            elif isinstance(event, Finish):
                finish = event
        if usage is None or finish is None:
            return None
        # ``output_chars`` stays uncounted: it serves estimates, and the usage is in hand.
        self._held = []
        self._stop_timer()
        await self._upstream.aclose()
        await self._conclude(usage, finish)
        return held

    async def _conclude(self, usage: Usage | None, finish: Finish) -> None:
        """The answer is complete and the upstream call closed: settle the attempt."""
        self.usage = usage or Usage(
            input_tokens=estimate_tokens(request_length(self.request)),
            output_tokens=estimate_tokens(self.output_chars),
            estimated=True,
        )
        self.finish = finish
        admission, settler = self._admission, self._settler
        if admission is not None and settler is not None:
            if admission.observer is not None:
                admission.observer.answered(self.usage, finish)
            await settler.guard.succeeded(admission, self.usage.total_tokens)
        self.ended = True

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

    def _start_timer(self) -> None:
        deadline = self._deadline
        if deadline is None or self._timer is not None:
            return
        if self._loop.time() >= deadline:
            self._expired = True  # passed while the held events went out: fail the next read
        else:
            self._timer = self._loop.call_at(deadline, self._expire)

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
        return estimate_tokens(request_length(self.request)) + estimate_tokens(self.output_chars)

    async def aclose(self) -> None:
        """Cancel the upstream call (if still running) and settle the attempt."""
        self._stop_timer()
        await self._upstream.aclose()
        admission, settler = self._admission, self._settler
        if admission is not None and settler is not None and not admission.settled:
            await settler.abandon(admission, self._partial_tokens())


async def collect(stream: ChatStream) -> ChatResult:
    """Fold a stream into one answer."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, ToolCall] = {}
    usage = Usage()
    finish = Finish("stop")
    events = await stream.held_answer()
    if events is None:
        events = [event async for event in stream.events()]
    for event in events:
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
        stop_sequence=finish.stop_sequence,
    )
