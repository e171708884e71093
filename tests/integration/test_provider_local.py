"""The embedded model provider against the real SmolLM2-135M-Instruct model (llama.cpp).

The model is loaded once for the module. Answers are the model's own: the assertions hold
for what this model reliably produces at temperature 0.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from interlock.chat.types import (
    ChatRequest,
    Event,
    Finish,
    Message,
    TextDelta,
    TextPart,
    ToolCall,
    Usage,
)
from interlock.errors import ContextLengthExceeded, UpstreamConnectionFailed, UpstreamTimeout
from interlock.providers.base import Timeouts
from interlock.providers.local import LocalModelLoadError, LocalModelProvider
from interlock.settings import LocalModelConfig

pytestmark = pytest.mark.model

TIMEOUTS = Timeouts()
# At temperature 0 this prompt makes the model count on and on: long enough that a
# generation which ignored cancellation would hold the model for seconds.
ENDLESS = "Count from 1 to 300, separated by commas."


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[LocalModelProvider]:
    local = LocalModelProvider(LocalModelConfig())
    await local.start()
    yield local
    await local.aclose()


def ask(text: str, *, system: str | None = None, **options: object) -> ChatRequest:
    messages = [Message(role="system", content=[TextPart(system)])] if system else []
    messages.append(Message(role="user", content=[TextPart(text)]))
    return ChatRequest(model="local", messages=messages, **options)  # type: ignore[arg-type]


async def collect(provider: LocalModelProvider, request: ChatRequest) -> list[Event]:
    return [event async for event in provider.stream(request, TIMEOUTS)]


def text_of(events: list[Event]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


@pytest.mark.anyio
async def test_answers_a_factual_question(provider: LocalModelProvider) -> None:
    # Under the template's default system prompt this 4-bit 135M model answers the bare
    # question with French word salad; asked for one short sentence, it says Paris.
    events = await collect(
        provider,
        ask(
            "What is the capital of France?",
            system="Answer in one short sentence.",
            temperature=0,
        ),
    )
    assert "Paris" in text_of(events)
    assert events[-1] == Finish("stop")


@pytest.mark.anyio
async def test_streams_token_deltas_then_usage_then_finish(provider: LocalModelProvider) -> None:
    events = await collect(provider, ask("Write a short poem about the sea.", max_tokens=24))
    deltas = [event for event in events if isinstance(event, TextDelta)]
    assert len(deltas) >= 5
    assert all(event.text for event in deltas)
    assert isinstance(events[-2], Usage)
    assert isinstance(events[-1], Finish)
    assert events[: len(deltas)] == deltas  # nothing but text before the usage
    usage = events[-2]
    assert usage.input_tokens > 10  # the chat template and the question, really tokenized
    assert 5 <= usage.output_tokens <= 24
    assert usage.estimated is False


@pytest.mark.anyio
async def test_max_tokens_ends_with_length(provider: LocalModelProvider) -> None:
    events = await collect(provider, ask(ENDLESS, temperature=0, max_tokens=5))
    usage, finish = events[-2], events[-1]
    assert finish == Finish("length")
    assert isinstance(usage, Usage)
    assert 1 <= usage.output_tokens <= 5
    assert text_of(events)


@pytest.mark.anyio
async def test_max_tokens_is_capped_by_the_config() -> None:
    local = LocalModelProvider(LocalModelConfig(max_tokens=3))
    await local.start()
    try:
        events = await collect(local, ask(ENDLESS, temperature=0, max_tokens=100))
    finally:
        await local.aclose()
    assert events[-1] == Finish("length")
    assert isinstance(events[-2], Usage)
    assert events[-2].output_tokens == 3


@pytest.mark.anyio
async def test_stop_sequence_ends_the_answer_before_it(provider: LocalModelProvider) -> None:
    free = text_of(await collect(provider, ask(ENDLESS, temperature=0, max_tokens=12)))
    assert "5" in free
    events = await collect(provider, ask(ENDLESS, temperature=0, max_tokens=12, stop=["5"]))
    assert events[-1] == Finish("stop")
    assert text_of(events) == free[: free.index("5")]


@pytest.mark.anyio
async def test_event_loop_stays_responsive_while_generating(
    provider: LocalModelProvider,
) -> None:
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)  # ticking before the request starts
    started = time.perf_counter()
    events = await collect(provider, ask(ENDLESS, temperature=0, max_tokens=30))
    finished = time.perf_counter()
    ticker.cancel()
    assert isinstance(events[-2], Usage)
    assert events[-2].output_tokens == 30
    assert finished - started > 0.2  # the model really worked while the ticker ran
    times = [started, *(tick for tick in ticks if started < tick < finished), finished]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Each tick sleeps 10 ms: a loop blocked during every token's compute would tick about
    # once per token (~25 ms), and a loop blocked during the whole generation not at all.
    assert statistics.median(gaps) < 0.02
    assert max(gaps) < 0.05


async def seconds_per_token(stream: AsyncIterator[Event], tokens: int) -> float:
    """Read ``tokens`` text deltas (one token each while the model counts) and time them."""
    times: list[float] = []
    async for event in stream:
        assert isinstance(event, TextDelta)
        times.append(time.perf_counter())
        if len(times) == tokens:
            break
    return (times[-1] - times[0]) / (tokens - 1)


async def seconds_to_first_token(provider: LocalModelProvider) -> float:
    """How long the next request waits for its first token (the model must be free)."""
    started = time.perf_counter()
    # Same prompt as the long count, sampled: its prompt is already in the model's cache.
    events = [event async for event in provider.stream(ask(ENDLESS, max_tokens=2), TIMEOUTS)]
    assert events[-1] == Finish("length")
    return time.perf_counter() - started


def freed_within_a_few_tokens(waited: float, per_token: float) -> bool:
    # Had the 300-token count gone on, the next request would wait ~295 tokens' time; freed
    # at once, it waits for the token in progress plus its own two. The margin absorbs a
    # busy machine without letting a generation that ignored its caller pass.
    return waited < 0.25 + 20 * per_token


@pytest.mark.anyio
async def test_closing_the_stream_frees_the_model_at_once(provider: LocalModelProvider) -> None:
    stream = provider.stream(ask(ENDLESS, temperature=0, max_tokens=300), TIMEOUTS)
    per_token = await seconds_per_token(stream, tokens=4)
    await stream.aclose()
    waited = await seconds_to_first_token(provider)
    assert freed_within_a_few_tokens(waited, per_token), (waited, per_token)


@pytest.mark.anyio
async def test_cancelled_caller_frees_the_model(provider: LocalModelProvider) -> None:
    measured = asyncio.get_running_loop().create_future()

    async def consume() -> None:
        stream = provider.stream(ask(ENDLESS, temperature=0, max_tokens=300), TIMEOUTS)
        measured.set_result(await seconds_per_token(stream, tokens=4))
        async for _ in stream:  # the client is still reading when it disconnects
            pass

    task = asyncio.create_task(consume())
    per_token = await measured
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    waited = await seconds_to_first_token(provider)
    assert freed_within_a_few_tokens(waited, per_token), (waited, per_token)


@pytest.mark.anyio
async def test_one_generation_at_a_time_in_arrival_order(provider: LocalModelProvider) -> None:
    order: list[tuple[int, str]] = []

    async def run(number: int) -> None:
        async for event in provider.stream(ask(ENDLESS, max_tokens=3), TIMEOUTS):
            order.append((number, type(event).__name__))

    async with asyncio.TaskGroup() as group:
        for number in range(3):
            group.create_task(run(number))
            await asyncio.sleep(0)  # submitted in this order
    numbers = [number for number, _ in order]
    assert numbers == sorted(numbers)  # never interleaved, first come first served
    assert [kind for number, kind in order if kind == "Finish"] == ["Finish"] * 3


@pytest.mark.anyio
async def test_prompt_longer_than_the_context_is_refused(provider: LocalModelProvider) -> None:
    stream = provider.stream(ask("hello " * 3000), TIMEOUTS)
    with pytest.raises(ContextLengthExceeded, match="context window is 2048 tokens"):
        await anext(stream)


@pytest.mark.anyio
async def test_greedy_answers_repeat_exactly(provider: LocalModelProvider) -> None:
    # Reusing the cached prompt made this answer drift after ~20 tokens on the second run.
    request = ask("Write a long story about a dragon.", temperature=0, max_tokens=24)
    first = text_of(await collect(provider, request))
    second = text_of(await collect(provider, request))
    assert first
    assert first == second


@pytest.mark.anyio
async def test_a_seed_makes_sampling_repeatable(provider: LocalModelProvider) -> None:
    def story(seed: int) -> ChatRequest:
        return ask("Write a story about a dragon.", temperature=1.0, seed=seed, max_tokens=8)

    first = text_of(await collect(provider, story(7)))
    again = text_of(await collect(provider, story(7)))
    assert first == again
    assert text_of(await collect(provider, story(8))) != first  # the seed steers sampling


@pytest.mark.anyio
async def test_tool_messages_and_images_are_rendered_as_text(
    provider: LocalModelProvider,
) -> None:
    request = ChatRequest(
        model="local",
        messages=[
            Message(role="user", content=[TextPart("What is the weather in Paris?")]),
            Message(
                role="assistant",
                tool_calls=[ToolCall(id="call_1", name="weather", arguments='{"city":"Paris"}')],
            ),
            Message(role="tool", tool_call_id="call_1", content=[TextPart("sunny, 24 degrees")]),
        ],
        max_tokens=4,
    )
    events = await collect(provider, request)
    assert isinstance(events[-1], Finish)
    assert text_of(events)


@pytest.mark.anyio
async def test_idle_timeout_between_tokens_stops_the_generation(
    provider: LocalModelProvider,
) -> None:
    per_token = await seconds_per_token(
        provider.stream(ask(ENDLESS, temperature=0, max_tokens=4), TIMEOUTS), tokens=4
    )
    stream = provider.stream(ask(ENDLESS, temperature=0, max_tokens=300), Timeouts(idle=1e-6))
    assert isinstance(await anext(stream), TextDelta)  # no idle limit before the first token
    with pytest.raises(UpstreamTimeout):
        await anext(stream)
    waited = await seconds_to_first_token(provider)
    assert freed_within_a_few_tokens(waited, per_token), (waited, per_token)


@pytest.mark.anyio
async def test_ready_only_between_start_and_close() -> None:
    local = LocalModelProvider(LocalModelConfig())
    assert not local.ready()
    with pytest.raises(UpstreamConnectionFailed):
        await anext(local.stream(ask("hi"), TIMEOUTS))
    await local.start()
    assert local.ready()
    await local.aclose()
    assert not local.ready()
    with pytest.raises(UpstreamConnectionFailed):
        await anext(local.stream(ask("hi"), TIMEOUTS))


@pytest.mark.anyio
async def test_close_ends_a_running_generation_with_an_error() -> None:
    local = LocalModelProvider(LocalModelConfig())
    await local.start()
    stream = local.stream(ask(ENDLESS, temperature=0, max_tokens=300), TIMEOUTS)
    assert isinstance(await anext(stream), TextDelta)
    await local.aclose()
    with pytest.raises(UpstreamConnectionFailed, match="shut down"):
        async for _ in stream:
            pass


@pytest.mark.anyio
async def test_missing_model_file_is_one_clear_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.gguf")
    local = LocalModelProvider(LocalModelConfig(path=missing))
    with pytest.raises(LocalModelLoadError) as caught:
        await local.start()
    assert str(caught.value) == f"local model: {missing}: file not found"
    assert not local.ready()


@pytest.mark.anyio
async def test_corrupt_model_file_is_one_clear_line_and_no_noise(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x00garbage" * 64)
    capfd.readouterr()
    local = LocalModelProvider(LocalModelConfig(path=str(corrupt)))
    with pytest.raises(LocalModelLoadError) as caught:
        await local.start()
    message = str(caught.value)
    assert "\n" not in message
    assert "not a valid GGUF model file" in message
    assert capfd.readouterr() == ("", "")  # llama.cpp's own complaints are silenced
    assert not local.ready()
