"""The pipeline with scripted in-memory providers: the commit rule, retries, fallbacks,
circuits, cooldowns, capacity and model access. Clocks are injected: nothing sleeps for a
cooldown or a backoff."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

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
    ServiceUnavailable,
    UpstreamAuthFailed,
    UpstreamConnectionFailed,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from interlock.providers.base import Timeouts
from interlock.settings import (
    BreakerConfig,
    DeploymentConfig,
    FileConfig,
    ModelConfig,
    RetryConfig,
    RoutingConfig,
    ServerConfig,
    TimeoutConfig,
)
from interlock.state import Limit, MemoryState, SharedState

Step = Event | Exception | float  # a float sleeps that long
Script = Sequence[Step]


class ScriptedProvider:
    """Plays one script per call (the last one again once they run out)."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts
        self.calls = 0
        self.closed = 0
        self.whole: list[bool] = []  # what each call asked for

    async def stream(
        self, request: ChatRequest, timeouts: Timeouts, *, whole: bool = False
    ) -> AsyncGenerator[Event, None]:
        script = self.scripts[min(self.calls, len(self.scripts) - 1)]
        self.calls += 1
        self.whole.append(whole)
        try:
            for step in script:
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


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sleeps:
    """Records the backoff waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


NO_RETRIES = RoutingConfig(retry=RetryConfig(max_retries=0))


def build(
    providers: Providers,
    *,
    routing: RoutingConfig = NO_RETRIES,
    first_token: float = 5.0,
    total: float = 600.0,
    deployment: Mapping[str, Mapping[str, Any]] | None = None,
    models: Mapping[str, ModelConfig] | None = None,
    clock: FakeClock | None = None,
    state: SharedState | None = None,
    sleeps: Sleeps | None = None,
) -> ChatService:
    """A service whose model ``m`` has one deployment per provider, in priority order."""
    if models is None:
        deployments = [
            DeploymentConfig(
                provider="local", name=name, priority=index, **(deployment or {}).get(name, {})
            )
            for index, name in enumerate(providers.providers)
        ]
        models = {"m": ModelConfig(deployments=deployments)}
    config = FileConfig(
        models=dict(models),
        server=ServerConfig(timeouts=TimeoutConfig(first_token=first_token, total=total)),
        routing=routing,
    )
    return ChatService.from_config(
        config,
        providers,  # type: ignore[arg-type]
        state or MemoryState(),
        clock=clock or FakeClock(),
        rng=random.Random(4),
        sleep=sleeps or Sleeps(),
    )


def ask(model: str = "m", max_tokens: int | None = None) -> ChatRequest:
    return ChatRequest(
        model=model, messages=[Message("user", [TextPart("hello there")])], max_tokens=max_tokens
    )


REQUEST = ask()
OK = [TextDelta("Hi"), TextDelta(" you"), Usage(3, 2), Finish("stop")]

pytestmark = pytest.mark.anyio


async def events_of(chat: ChatService, request: ChatRequest = REQUEST) -> list[Event]:
    stream = await chat.open(request)
    try:
        return [event async for event in stream.events()]
    finally:
        await stream.aclose()


# ---- the commit rule ------------------------------------------------------------------------


async def test_commits_on_first_content_and_ends_with_usage_then_finish() -> None:
    first = ScriptedProvider([Finish("stop"), Usage(1, 1)])  # finish before usage, no text
    chat = build(Providers(a=ScriptedProvider([TextDelta(""), *OK])))
    assert await events_of(chat) == [TextDelta(""), TextDelta("Hi"), TextDelta(" you"),
                                     Usage(3, 2), Finish("stop")]  # fmt: skip
    chat = build(Providers(a=first))
    assert await events_of(chat) == [Usage(1, 1), Finish("stop")]


async def test_failures_before_content_fall_over_invisibly() -> None:
    broken = ScriptedProvider([UpstreamOverloaded()])
    error_in_stream = ScriptedProvider([UpstreamProtocolError()])
    good = ScriptedProvider(OK)
    chat = build(Providers(a=broken, b=error_in_stream, c=good))
    stream = await chat.open(REQUEST)
    assert stream.served.attempts == 3
    assert stream.served.deployment == "c"
    assert [e async for e in stream.events()][-1] == Finish("stop")
    assert broken.closed == error_in_stream.closed == 1


async def test_first_token_timeout_falls_over() -> None:
    slow = ScriptedProvider([5.0, *OK])
    chat = build(Providers(a=slow, b=ScriptedProvider(OK)), first_token=0.05)
    stream = await chat.open(REQUEST)
    assert stream.served.deployment == "b"
    assert slow.closed == 1


async def test_first_token_timeout_does_not_cut_a_long_non_streaming_answer() -> None:
    # Content at once, then a slow rest: only the total timeout applies after content.
    steady = ScriptedProvider([TextDelta("Hi"), 0.05, 0.05, TextDelta(" you"), Finish("stop")])
    chat = build(Providers(a=steady), first_token=0.03)
    result, served = await chat.complete(REQUEST)
    assert result.text == "Hi you"
    assert served.attempts == 1


async def test_a_non_streaming_answer_is_asked_for_whole_and_a_stream_is_not() -> None:
    provider = ScriptedProvider(OK)
    chat = build(Providers(a=provider))
    result, _ = await chat.complete(REQUEST)
    stream = await chat.open(REQUEST)
    await stream.aclose()
    assert result.text == "Hi you"
    assert provider.whole == [True, False]


async def test_a_whole_reply_is_not_cut_by_the_first_token_timeout() -> None:
    # Nothing comes before a whole reply is ready: only the total timeout applies.
    late = ScriptedProvider([0.1, *OK])
    chat = build(Providers(a=late), first_token=0.02)
    result, served = await chat.complete(REQUEST)
    assert (result.text, served.attempts) == ("Hi you", 1)


async def test_a_whole_reply_that_never_comes_falls_over_at_the_total_timeout() -> None:
    hung = ScriptedProvider([5.0, *OK])
    deployment = {"a": {"timeouts": {"total": 0.1}}}
    chat = build(Providers(a=hung, b=ScriptedProvider(OK)), deployment=deployment)
    result, served = await chat.complete(REQUEST)
    assert (result.text, served.deployment, served.attempts) == ("Hi you", "b", 2)
    assert hung.closed == 1


async def test_a_long_whole_reply_keeps_its_concurrency_slot() -> None:
    state = MemoryState()
    slow = ScriptedProvider([0.25, *OK])
    chat = build(
        Providers(a=slow),
        routing=RoutingConfig(retry=RetryConfig(max_retries=0), slot_lease=0.1),
        # Short streaming timeouts make a short lease: a whole reply outlasts it.
        deployment={"a": {"max_concurrent": 1, "timeouts": {"first_token": 0.02, "idle": 0.02}}},
        state=state,
    )
    first = asyncio.ensure_future(chat.complete(REQUEST))
    await asyncio.sleep(0.2)  # past the lease: only renewals keep the slot held
    with pytest.raises(ServiceUnavailable):
        await chat.complete(REQUEST)
    result, _ = await first
    assert result.text == "Hi you"


async def test_the_total_timeout_ends_a_committed_stream_and_its_upstream_call() -> None:
    slow = ScriptedProvider([TextDelta("Hi"), 5.0, *OK])
    chat = build(Providers(a=slow), total=0.1)
    stream = await chat.open(REQUEST)
    seen: list[Event] = []

    async def read_all() -> None:
        async for event in stream.events():
            seen.append(event)

    with pytest.raises(UpstreamTimeout):
        await read_all()
    assert seen == [TextDelta("Hi")]
    assert slow.closed == 1


async def test_the_total_timeout_also_fires_while_the_reader_is_busy() -> None:
    chat = build(Providers(a=ScriptedProvider([TextDelta("Hi"), TextDelta("!"), *OK])), total=0.05)
    stream = await chat.open(REQUEST)
    events = stream.events()
    assert await anext(events) == TextDelta("Hi")
    await asyncio.sleep(0.1)  # a slow client: the deadline passes between two chunks
    with pytest.raises(UpstreamTimeout):
        await anext(events)


async def test_a_stream_read_in_time_is_not_cut() -> None:
    chat = build(Providers(a=ScriptedProvider([TextDelta("Hi"), 0.01, *OK])), total=5)
    assert (await events_of(chat))[-1] == Finish("stop")


async def test_the_last_error_is_raised_when_everything_fails() -> None:
    chat = build(Providers(a=ScriptedProvider([UpstreamOverloaded()]),
                           b=ScriptedProvider([5.0])), first_token=0.05)  # fmt: skip
    with pytest.raises(UpstreamTimeout):
        await chat.open(REQUEST)


async def test_a_client_fault_is_not_retried_or_failed_over() -> None:
    first = ScriptedProvider([UpstreamRejected()])
    second = ScriptedProvider(OK)
    chat = build(Providers(a=first, b=second), routing=RoutingConfig())
    with pytest.raises(UpstreamRejected):
        await chat.open(REQUEST)
    assert (first.calls, second.calls) == (1, 0)


async def test_failure_after_commit_is_raised_not_hidden() -> None:
    chat = build(Providers(a=ScriptedProvider([TextDelta("Hi"), UpstreamOverloaded()]),
                           b=ScriptedProvider(OK)))  # fmt: skip
    stream = await chat.open(REQUEST)
    seen: list[Event] = []

    async def read_all() -> None:
        async for event in stream.events():
            seen.append(event)

    with pytest.raises(UpstreamOverloaded):
        await read_all()
    assert seen == [TextDelta("Hi")]


async def test_a_stream_cut_without_finish_is_an_error() -> None:
    chat = build(Providers(a=ScriptedProvider([TextDelta("Hi")])))
    stream = await chat.open(REQUEST)
    with pytest.raises(UpstreamProtocolError):
        async for _ in stream.events():
            pass


async def test_non_streaming_fails_over_even_after_content() -> None:
    chat = build(Providers(a=ScriptedProvider([TextDelta("Hi"), UpstreamOverloaded()]),
                           b=ScriptedProvider(OK)))  # fmt: skip
    result, served = await chat.complete(REQUEST)
    assert result.text == "Hi you"
    assert served.attempts == 2


async def test_missing_usage_is_estimated() -> None:
    chat = build(Providers(a=ScriptedProvider([TextDelta("12345678"), Finish("length")])))
    result, _ = await chat.complete(REQUEST)
    assert result.usage == Usage(input_tokens=3, output_tokens=2, estimated=True)
    assert result.finish_reason == "length"


async def test_tool_call_deltas_are_assembled() -> None:
    chat = build(Providers(a=ScriptedProvider([
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
    chat = build(Providers(a=upstream))
    stream = await chat.open(REQUEST)
    events = stream.events()
    assert await anext(events) == TextDelta("Hi")
    await events.aclose()
    assert upstream.closed == 1


async def test_unknown_model() -> None:
    chat = build(Providers(a=ScriptedProvider(OK)))
    with pytest.raises(ModelNotFound):
        await chat.open(ChatRequest(model="nope", messages=REQUEST.messages))


# ---- retries ---------------------------------------------------------------------------------

RETRY_ONCE = RoutingConfig(retry=RetryConfig(max_retries=1, backoff_base=0.2, backoff_max=1.0))


@pytest.mark.parametrize("error", [UpstreamOverloaded(), UpstreamConnectionFailed()])
async def test_a_transient_failure_is_retried_once_on_the_same_deployment(error: Exception) -> None:
    flaky = ScriptedProvider([error], OK)
    other = ScriptedProvider(OK)
    sleeps = Sleeps()
    chat = build(Providers(a=flaky, b=other), routing=RETRY_ONCE, sleeps=sleeps)
    stream = await chat.open(REQUEST)
    assert stream.served.deployment == "a"
    assert stream.served.attempts == 2
    assert (flaky.calls, other.calls) == (1 + 1, 0)
    assert len(sleeps.waits) == 1 and 0 <= sleeps.waits[0] <= 0.2  # full jitter under base


async def test_retries_are_bounded_then_the_next_deployment_serves() -> None:
    down = ScriptedProvider([UpstreamOverloaded()])
    other = ScriptedProvider(OK)
    sleeps = Sleeps()
    routing = RoutingConfig(retry=RetryConfig(max_retries=3, backoff_base=0.1, backoff_max=0.25))
    chat = build(Providers(a=down, b=other), routing=routing, sleeps=sleeps)
    stream = await chat.open(REQUEST)
    assert stream.served.deployment == "b"
    assert down.calls == 4
    assert len(sleeps.waits) == 3
    assert all(0 <= wait <= 0.25 for wait in sleeps.waits)  # capped


@pytest.mark.parametrize(
    "error",
    [
        UpstreamTimeout(),
        UpstreamAuthFailed(),
        UpstreamProtocolError(),
        UpstreamRateLimited(),
        UpstreamOverloaded(retry_after=3),
    ],
)
async def test_failures_that_waiting_cannot_fix_move_on_at_once(error: Exception) -> None:
    first = ScriptedProvider([error])
    second = ScriptedProvider(OK)
    sleeps = Sleeps()
    chat = build(Providers(a=first, b=second), routing=RETRY_ONCE, sleeps=sleeps)
    stream = await chat.open(REQUEST)
    assert stream.served.deployment == "b"
    assert first.calls == 1
    assert sleeps.waits == []


async def test_the_retry_budget_stops_retries_during_an_outage() -> None:
    routing = RoutingConfig(
        retry=RetryConfig(max_retries=1, budget_ratio=0.2, budget_min=2, budget_window=10),
        breaker=BreakerConfig(min_calls=1000),  # keep the circuit out of this
    )
    down = ScriptedProvider([UpstreamOverloaded()])
    chat = build(Providers(a=down), routing=routing)
    for _ in range(20):
        with pytest.raises(UpstreamOverloaded):
            await chat.open(REQUEST)
    # 20 requests: at most max(2, 0.2 * 20) = 4 retries, not 20.
    assert 20 < down.calls <= 24


# ---- model access ----------------------------------------------------------------------------


def two_models(
    a: ScriptedProvider, b: ScriptedProvider
) -> tuple[Providers, dict[str, ModelConfig]]:
    models = {
        "m": ModelConfig(
            deployments=[DeploymentConfig(provider="local", name="a")], fallbacks=["backup"]
        ),
        "backup": ModelConfig(deployments=[DeploymentConfig(provider="local", name="b")]),
    }
    return Providers(a=a, b=b), models


async def test_a_model_outside_the_callers_models_is_not_found() -> None:
    providers, models = two_models(ScriptedProvider(OK), ScriptedProvider(OK))
    chat = build(providers, models=models)
    with pytest.raises(ModelNotFound):
        await chat.open(REQUEST, allowed=frozenset({"backup"}))
    with pytest.raises(ModelNotFound):
        await chat.complete(REQUEST, allowed=frozenset())
    assert providers.providers["a"].calls == 0
    result, served = await chat.complete(REQUEST, allowed=frozenset({"m", "backup"}))
    assert served.model == "m" and result.text == "Hi you"


async def test_a_fallback_outside_the_callers_models_is_never_used() -> None:
    backup = ScriptedProvider(OK)
    providers, models = two_models(ScriptedProvider([UpstreamOverloaded()]), backup)
    chat = build(providers, models=models)
    with pytest.raises(UpstreamOverloaded):
        await chat.open(REQUEST, allowed=frozenset({"m"}))
    assert backup.calls == 0
    stream = await chat.open(REQUEST, allowed=None)
    assert stream.served.model == "backup"


# ---- circuits and cooldowns --------------------------------------------------------------------

BREAKER = RoutingConfig(
    retry=RetryConfig(max_retries=0),
    breaker=BreakerConfig(failure_rate=0.5, min_calls=4, window=30, cooldown=10, max_cooldown=35),
)


async def test_an_open_circuit_is_skipped_then_probed_then_closed() -> None:
    primary = ScriptedProvider([UpstreamConnectionFailed()])
    backup = ScriptedProvider(OK)
    clock = FakeClock()
    chat = build(Providers(a=primary, b=backup), routing=BREAKER, clock=clock)
    for _ in range(4):
        assert (await chat.open(REQUEST)).served.attempts == 2
    assert primary.calls == 4  # the fourth failure opened the circuit
    for _ in range(3):
        stream = await chat.open(REQUEST)
        assert (stream.served.attempts, stream.served.deployment) == (1, "b")
    assert primary.calls == 4

    clock.advance(10)  # half-open: one probe goes through, and fails: open again, 20 s
    assert (await chat.open(REQUEST)).served.attempts == 2
    assert primary.calls == 5
    clock.advance(19)
    await chat.open(REQUEST)
    assert primary.calls == 5
    clock.advance(1)
    primary.scripts = (OK,)  # recovered: the probe succeeds and closes the circuit
    stream = await chat.open(REQUEST)
    assert stream.served.deployment == "a"
    await collect(stream)
    assert (await chat.open(REQUEST)).served.deployment == "a"


async def test_client_faults_do_not_open_a_circuit() -> None:
    rejecting = ScriptedProvider([UpstreamRejected()])
    chat = build(Providers(a=rejecting), routing=BREAKER)
    for _ in range(10):
        with pytest.raises(UpstreamRejected):
            await chat.open(REQUEST)
    assert rejecting.calls == 10


async def test_with_every_circuit_open_the_answer_is_503_with_retry_after() -> None:
    clock = FakeClock()
    chat = build(Providers(a=ScriptedProvider([UpstreamOverloaded()])), routing=BREAKER,
                 clock=clock)  # fmt: skip
    for _ in range(4):
        with pytest.raises(UpstreamOverloaded):
            await chat.open(REQUEST)
    clock.advance(4)
    with pytest.raises(ServiceUnavailable) as caught:
        await chat.open(REQUEST)
    assert caught.value.retry_after == pytest.approx(6)


async def test_retry_after_puts_the_deployment_in_cooldown() -> None:
    limited = ScriptedProvider([UpstreamRateLimited(retry_after=30)], OK)
    backup = ScriptedProvider(OK)
    clock = FakeClock()
    chat = build(Providers(a=limited, b=backup), clock=clock)
    assert (await chat.open(REQUEST)).served.deployment == "b"
    clock.advance(29)
    assert (await chat.open(REQUEST)).served.deployment == "b"
    assert limited.calls == 1
    clock.advance(1)
    assert (await chat.open(REQUEST)).served.deployment == "a"


async def test_a_lone_rate_limited_deployment_answers_429_then_503_until_it_recovers() -> None:
    clock = FakeClock()
    limited = ScriptedProvider([UpstreamRateLimited(retry_after=7)])
    chat = build(Providers(a=limited), clock=clock)
    with pytest.raises(UpstreamRateLimited) as first:
        await chat.open(REQUEST)
    assert first.value.retry_after == 7
    clock.advance(2)
    with pytest.raises(ServiceUnavailable) as second:
        await chat.open(REQUEST)
    assert second.value.retry_after == pytest.approx(5)
    assert limited.calls == 1


# ---- capacity --------------------------------------------------------------------------------


async def test_concurrency_is_capped_and_the_slot_comes_back_when_the_stream_ends() -> None:
    state = MemoryState()
    a = ScriptedProvider([TextDelta("Hi"), *OK])
    b = ScriptedProvider(OK)
    chat = build(Providers(a=a, b=b), deployment={"a": {"max_concurrent": 1}}, state=state)
    held = await chat.open(REQUEST)
    assert held.served.deployment == "a"
    second = await chat.open(REQUEST)
    assert second.served.deployment == "b"  # a is full
    assert await state.slots.counts(["deployment:a"]) == [1]
    await collect(held)
    await held.aclose()
    assert await state.slots.counts(["deployment:a"]) == [0]
    assert (await chat.open(REQUEST)).served.deployment == "a"


async def test_a_cancelled_attempt_gives_its_slot_back() -> None:
    state = MemoryState()
    chat = build(Providers(a=ScriptedProvider([5.0])), deployment={"a": {"max_concurrent": 1}},
                 state=state)  # fmt: skip
    task = asyncio.ensure_future(chat.open(REQUEST))
    await asyncio.sleep(0.01)
    assert await state.slots.counts(["deployment:a"]) == [1]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await state.slots.counts(["deployment:a"]) == [0]


async def test_an_abandoned_stream_gives_its_slot_back() -> None:
    state = MemoryState()
    a = ScriptedProvider([TextDelta("Hi"), 5.0, *OK])
    chat = build(Providers(a=a), deployment={"a": {"max_concurrent": 1}}, state=state)
    stream = await chat.open(REQUEST)
    await stream.aclose()
    assert a.closed == 1
    assert await state.slots.counts(["deployment:a"]) == [0]


async def test_requests_per_minute_full_means_503_with_the_wait() -> None:
    chat = build(Providers(a=ScriptedProvider(OK)), deployment={"a": {"rpm": 2}})
    for _ in range(2):
        await events_of(chat)
    with pytest.raises(ServiceUnavailable) as caught:
        await chat.open(REQUEST)
    assert caught.value.retry_after == pytest.approx(30, abs=0.5)  # one request refills in 30 s


async def test_tokens_are_reserved_up_front_and_corrected_to_the_usage() -> None:
    state = MemoryState()
    a = ScriptedProvider([TextDelta("Hi"), Usage(3, 2), Finish("stop")])
    chat = build(Providers(a=a), deployment={"a": {"tpm": 1000}}, state=state)
    stream = await chat.open(ask(max_tokens=400))
    left = await _tokens_left(state, "a", 1000)
    assert left == 1000 - (3 + 400)  # prompt estimate + max_tokens, while it runs
    await collect(stream)
    assert await _tokens_left(state, "a", 1000) == 1000 - 5  # the real usage after it


async def _tokens_left(state: SharedState, deployment: str, tpm: int) -> int:
    decision = await state.limits.admit([Limit(f"deployment:{deployment}:tpm", tpm, 60, 0)])
    return decision.scopes[0].remaining


async def test_a_request_bigger_than_the_token_limit_still_fits_an_empty_bucket() -> None:
    chat = build(Providers(a=ScriptedProvider(OK)), deployment={"a": {"tpm": 100}})
    assert (await chat.open(ask(max_tokens=5000))).served.deployment == "a"


async def test_least_busy_deployment_of_a_priority_goes_first() -> None:
    state = MemoryState()
    a = ScriptedProvider([TextDelta("Hi"), *OK])
    b = ScriptedProvider([TextDelta("Hi"), *OK])
    models = {
        "m": ModelConfig(
            deployments=[
                DeploymentConfig(provider="local", name="a", priority=1),
                DeploymentConfig(provider="local", name="b", priority=1),
            ]
        )
    }
    chat = build(Providers(a=a, b=b), models=models, state=state)
    first = await chat.open(REQUEST)
    second = await chat.open(REQUEST)
    third = await chat.open(REQUEST)
    assert {first.served.deployment, second.served.deployment} == {"a", "b"}
    assert await state.slots.counts(["deployment:a", "deployment:b"]) in ([2, 1], [1, 2])
    for stream in (first, second, third):
        await stream.aclose()
    assert await state.slots.counts(["deployment:a", "deployment:b"]) == [0, 0]
