"""What the cache tests share: caches over a backend, a counting upstream, and ``serve``,
which runs one request through a cache the way the chat pipeline does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

from interlock.cache import CacheDecision, CacheDirective, ResponseCache, build_cache
from interlock.chat.types import (
    ChatRequest,
    Event,
    Finish,
    Message,
    TextDelta,
    TextPart,
    Usage,
)
from interlock.config_file import CacheConfig
from interlock.errors import UpstreamOverloaded
from interlock.state import MemoryState, SharedState, build_state

ANSWER = "The answer is forty-two, as everyone who has read the book knows by now. " * 3


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def chat(prompt: str = "What is the answer?", **options: Any) -> ChatRequest:
    options.setdefault("temperature", 0.0)
    return ChatRequest("gpt", [Message("user", [TextPart(prompt)])], **options)


class CountingUpstream:
    """A model that answers ``text`` in small deltas and counts its calls. While ``gate``
    is set to an unset event, every call waits on it after its first delta; ``fail_first``
    calls raise ``UpstreamOverloaded`` instead of answering."""

    def __init__(self, text: str = ANSWER) -> None:
        self.text = text
        self.calls = 0
        self.started = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.fail_first = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[Event]:
        self.calls += 1
        number = self.calls
        self.started.set()
        yield TextDelta(self.text[:5])
        if self.gate is not None:
            await self.gate.wait()
        if number <= self.fail_first:
            raise UpstreamOverloaded()
        for start in range(5, len(self.text), 7):
            yield TextDelta(self.text[start : start + 7])
        yield Usage(input_tokens=10, output_tokens=len(self.text) // 4)
        yield Finish("stop")


def text_of(events: list[Event]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


async def serve(
    cache: ResponseCache,
    request: ChatRequest,
    upstream: CountingUpstream,
    *,
    user: str = "alice",
    directive: CacheDirective = CacheDirective.DEFAULT,
) -> tuple[CacheDecision, list[Event]]:
    """One request as the pipeline runs it: replay a hit, else stream upstream through the
    recorder, then finish (delivered whole) or abandon (failed, cancelled)."""
    decision = await cache.lookup(request, user=user, directive=directive)
    if decision.hit:
        return decision, [event async for event in decision.replay()]
    events: list[Event] = []
    try:
        async for event in decision.tee(upstream.stream(request)):
            events.append(event)
    except BaseException:
        await decision.abandon()
        raise
    await decision.finish(model="gpt-4o-2024", deployment="openai:gpt-4o")
    return decision, events


class Backend:
    """Caches over one backend. In process, every "instance" is the one cache (a process
    has one); with Redis each instance has its own state, client and pool, as two gateway
    processes would."""

    def __init__(self, url: str | None, stack: AsyncExitStack) -> None:
        self.url = url
        self.clock = FakeClock()
        self._stack = stack
        self._memory: ResponseCache | None = None

    @property
    def exact(self) -> bool:
        return self.url is None

    def state(self) -> SharedState:
        if self.url is None:
            state: SharedState = MemoryState(clock=self.clock)
        else:
            # Generous time bounds: these tests are about answers, not a slow machine (the
            # failure tests use the defaults).
            state = build_state(self.url, timeout=2.0)
        self._stack.push_async_callback(state.aclose)
        return state

    def cache(self, config: CacheConfig | None = None, **options: Any) -> ResponseCache:
        config = config or CacheConfig()
        if self.url is None:
            if self._memory is None or options.get("fresh"):
                self._memory = build_cache(config, self.state(), shared=False, clock=self.clock)
                self._stack.push_async_callback(self._memory.aclose)
            return self._memory
        cache = build_cache(config, self.state(), shared=True)
        self._stack.push_async_callback(cache.aclose)
        return cache

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._stack.push_async_callback(callback)

    async def advance(self, seconds: float) -> None:
        if self.url is None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)
