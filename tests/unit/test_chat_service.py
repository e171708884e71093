"""The pipeline's commit rule, with scripted in-memory providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest

from interlock.chat.service import ChatService, collect
from interlock.chat.types import (
    ChatRequest,
    Event,
    Finish,
    Message,
    TextDelta,
    TextPart,
    ToolCallDelta,
    Usage,
)
from interlock.errors import (
    ModelNotFound,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTimeout,
)
from interlock.providers.base import Timeouts
from interlock.routing.router import Router
from interlock.settings import DeploymentConfig, ModelConfig, TimeoutConfig

Step = Event | Exception | float  # a float sleeps that long


class ScriptedProvider:
    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = steps
        self.calls = 0
        self.closed = 0

    async def stream(self, request: ChatRequest, timeouts: Timeouts) -> AsyncGenerator[Event, None]:
        self.calls += 1
        try:
            for step in self.steps:
                if isinstance(step, Exception):
                    raise step
                if isinstance(step, float):
                    await asyncio.sleep(step)
                    continue
                yield step
        finally:
            self.closed += 1

    async def aclose(self) -> None:
        pass


class Providers:
    def __init__(self, **providers: ScriptedProvider) -> None:
        self.providers = providers

    def get(self, deployment_name: str) -> ScriptedProvider:
        return self.providers[deployment_name]


def service(providers: Providers, first_token: float = 5.0) -> ChatService:
    deployments = [
        DeploymentConfig(provider="local", name=name, priority=index)
        for index, name in enumerate(providers.providers)
    ]
    models = {"m": ModelConfig(deployments=deployments)}
    timeouts = TimeoutConfig(first_token=first_token).over(Timeouts())
    return ChatService(Router(models, timeouts), providers)  # type: ignore[arg-type]


REQUEST = ChatRequest(model="m", messages=[Message("user", [TextPart("hello there")])])
OK = [TextDelta("Hi"), TextDelta(" you"), Usage(3, 2), Finish("stop")]

pytestmark = pytest.mark.anyio


async def events_of(chat: ChatService) -> list[Event]:
    stream = await chat.open(REQUEST)
    return [event async for event in stream.events()]


async def test_commits_on_first_content_and_ends_with_usage_then_finish() -> None:
    first = ScriptedProvider([Finish("stop"), Usage(1, 1)])  # finish before usage, no text
    chat = service(Providers(a=ScriptedProvider([TextDelta(""), *OK])))
    assert await events_of(chat) == [TextDelta(""), TextDelta("Hi"), TextDelta(" you"),
                                     Usage(3, 2), Finish("stop")]  # fmt: skip
    chat = service(Providers(a=first))
    assert await events_of(chat) == [Usage(1, 1), Finish("stop")]


async def test_failures_before_content_fall_over_invisibly() -> None:
    broken = ScriptedProvider([UpstreamOverloaded()])
    error_in_stream = ScriptedProvider([UpstreamProtocolError()])
    good = ScriptedProvider(OK)
    chat = service(Providers(a=broken, b=error_in_stream, c=good))
    stream = await chat.open(REQUEST)
    assert stream.served.attempts == 3
    assert stream.served.deployment == "c"
    assert [e async for e in stream.events()][-1] == Finish("stop")
    assert broken.closed == error_in_stream.closed == 1


async def test_first_token_timeout_falls_over() -> None:
    slow = ScriptedProvider([5.0, *OK])
    chat = service(Providers(a=slow, b=ScriptedProvider(OK)), first_token=0.05)
    stream = await chat.open(REQUEST)
    assert stream.served.deployment == "b"
    assert slow.closed == 1


async def test_the_last_error_is_raised_when_everything_fails() -> None:
    chat = service(Providers(a=ScriptedProvider([UpstreamOverloaded()]),
                             b=ScriptedProvider([5.0])), first_token=0.05)  # fmt: skip
    with pytest.raises(UpstreamTimeout):
        await chat.open(REQUEST)


async def test_a_client_fault_is_not_failed_over() -> None:
    second = ScriptedProvider(OK)
    chat = service(Providers(a=ScriptedProvider([UpstreamRejected()]), b=second))
    with pytest.raises(UpstreamRejected):
        await chat.open(REQUEST)
    assert second.calls == 0


async def test_failure_after_commit_is_raised_not_hidden() -> None:
    chat = service(Providers(a=ScriptedProvider([TextDelta("Hi"), UpstreamOverloaded()]),
                             b=ScriptedProvider(OK)))  # fmt: skip
    stream = await chat.open(REQUEST)
    seen: list[Event] = []
    with pytest.raises(UpstreamOverloaded):
        async for event in stream.events():
            seen.append(event)
    assert seen == [TextDelta("Hi")]


async def test_a_stream_cut_without_finish_is_an_error() -> None:
    chat = service(Providers(a=ScriptedProvider([TextDelta("Hi")])))
    stream = await chat.open(REQUEST)
    with pytest.raises(UpstreamProtocolError):
        async for _ in stream.events():
            pass


async def test_non_streaming_fails_over_even_after_content() -> None:
    chat = service(Providers(a=ScriptedProvider([TextDelta("Hi"), UpstreamOverloaded()]),
                             b=ScriptedProvider(OK)))  # fmt: skip
    result, served = await chat.complete(REQUEST)
    assert result.text == "Hi you"
    assert served.attempts == 2


async def test_missing_usage_is_estimated() -> None:
    chat = service(Providers(a=ScriptedProvider([TextDelta("12345678"), Finish("length")])))
    result, _ = await chat.complete(REQUEST)
    assert result.usage == Usage(input_tokens=3, output_tokens=2, estimated=True)
    assert result.finish_reason == "length"


async def test_tool_call_deltas_are_assembled() -> None:
    chat = service(Providers(a=ScriptedProvider([
        ToolCallDelta(0, "call_1", "lookup", '{"q": '),
        ToolCallDelta(0, arguments='"x"}'),
        ToolCallDelta(1, "call_2", "other", "{}"),
        Finish("tool_calls"),
    ])))  # fmt: skip
    stream = await chat.open(REQUEST)
    result = await collect(stream)
    assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == [
        ("call_1", "lookup", '{"q": "x"}'),
        ("call_2", "other", "{}"),
    ]


async def test_closing_the_stream_closes_the_upstream() -> None:
    upstream = ScriptedProvider([TextDelta("Hi"), 5.0, *OK])
    chat = service(Providers(a=upstream))
    stream = await chat.open(REQUEST)
    events = stream.events()
    assert await anext(events) == TextDelta("Hi")
    await events.aclose()
    assert upstream.closed == 1


async def test_unknown_model() -> None:
    chat = service(Providers(a=ScriptedProvider(OK)))
    with pytest.raises(ModelNotFound):
        await chat.open(ChatRequest(model="nope", messages=REQUEST.messages))
