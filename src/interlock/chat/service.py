"""The chat pipeline: one service runs every chat request, whatever protocol it came in on.

The stream-integrity contract lives here. ``open`` tries the candidate deployments in order
and returns only once one of them has produced real content (or finished): until then any
failure — an error status, a connection error, an error event inside a 200 stream, a
first-token timeout — moves on to the next candidate, invisibly to the caller. After that
the caller owns a ``ChatStream``; a failure inside it is raised to the protocol renderer,
which ends the stream with its protocol's error event.

Non-streaming requests are a stream collected to the end (``complete``); since nothing has
been sent yet, they may fail over at any point before the answer is whole.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

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
from interlock.providers.base import Provider
from interlock.routing.router import Candidate, Router


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


class ChatStream:
    """A committed answer: its first content is in hand, the rest is still coming.

    Iterate ``events()`` once. It yields the deltas, then exactly one ``Usage`` (the
    provider's, or an estimate flagged ``estimated``), then one ``Finish``. A failure after
    the commit raises ``UpstreamError``; closing the iterator cancels the upstream call.
    """

    def __init__(
        self,
        request: ChatRequest,
        held: list[Event],
        upstream: AsyncGenerator[Event, None],
        served: ServedBy,
        deadline: float | None,
    ) -> None:
        self.request = request
        self.served = served
        self._held = held
        self._upstream = upstream
        self._deadline = deadline
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
        finally:
            await self._upstream.aclose()
        if finish is None:
            raise UpstreamProtocolError("The model provider's stream ended early.")
        self.usage = usage or Usage(
            input_tokens=estimate_tokens(_request_length(self.request)),
            output_tokens=estimate_tokens(self.output_chars),
            estimated=True,
        )
        self.finish = finish
        yield self.usage
        yield finish

    def _count(self, event: Event) -> None:
        if isinstance(event, TextDelta | ReasoningDelta):
            self.output_chars += len(event.text)
        elif isinstance(event, ToolCallDelta):
            self.output_chars += len(event.arguments)

    async def _next(self) -> Event | None:
        started = time.perf_counter()
        try:
            if self._deadline is None:
                return await anext(self._upstream)
            async with asyncio.timeout_at(self._deadline):
                return await anext(self._upstream)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise UpstreamTimeout("The model provider did not finish in time.") from None
        finally:
            self.served.upstream_seconds += time.perf_counter() - started

    async def aclose(self) -> None:
        await self._upstream.aclose()


class ChatService:
    def __init__(self, router: Router, providers: ProviderLookup) -> None:
        self._router = router
        self._providers = providers

    async def open(self, request: ChatRequest) -> ChatStream:
        """Start the answer and return once real content has arrived (see module doc)."""
        return await self._run(request, is_content_or_finish)

    async def complete(self, request: ChatRequest) -> tuple[ChatResult, ServedBy]:
        """The whole answer, for non-streaming callers."""
        stream = await self._run(request, _is_finish)
        return await collect(stream), stream.served

    async def _run(self, request: ChatRequest, commits: Callable[[Event], bool]) -> ChatStream:
        candidates = self._router.candidates(request.model)
        if not candidates:
            raise ModelNotFound(f"The model {request.model!r} does not exist.", param="model")
        served = ServedBy()
        loop = asyncio.get_running_loop()
        last_error: InterlockError | None = None
        total = candidates[0].timeouts.total
        deadline = None if total is None else loop.time() + total
        for candidate in candidates:
            served.attempts += 1
            try:
                return await self._attempt(request, candidate, commits, served, deadline)
            except UpstreamError as error:
                if error.client_fault:
                    raise
                last_error = error
            if deadline is not None and loop.time() >= deadline:
                break
        raise last_error or ServiceUnavailable()

    async def _attempt(
        self,
        request: ChatRequest,
        candidate: Candidate,
        commits: Callable[[Event], bool],
        served: ServedBy,
        deadline: float | None,
    ) -> ChatStream:
        provider = self._providers.get(candidate.deployment.name)
        upstream = provider.stream(request, candidate.timeouts)
        loop = asyncio.get_running_loop()
        first_token = candidate.timeouts.first_token
        limit = deadline
        if first_token is not None:
            first_deadline = loop.time() + first_token
            limit = first_deadline if limit is None else min(limit, first_deadline)
        held: list[Event] = []
        started = time.perf_counter()
        try:
            async with asyncio.timeout_at(limit):
                async for event in upstream:
                    held.append(event)
                    if commits(event):
                        break
                else:
                    raise UpstreamProtocolError("The model provider's stream ended early.")
        except TimeoutError:
            await upstream.aclose()
            raise UpstreamTimeout("The model provider did not start answering in time.") from None
        except BaseException:
            await upstream.aclose()
            raise
        finally:
            served.upstream_seconds += time.perf_counter() - started
        served.model = candidate.model
        served.deployment = candidate.deployment.name
        return ChatStream(request, held, upstream, served, deadline)


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
