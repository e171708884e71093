"""The embedded model (SmolLM2-135M-Instruct by default) as a provider.

Two sides:

- this module, on the event loop: translates the ``ChatRequest`` (cheap, no tokenizing), hands
  it to the model's worker thread and relays the events that thread sends back;
- ``interlock.providers.local_worker``, on that thread: llama.cpp itself.

The model has one thread of its own (a one-worker executor). It is loaded, run and freed on
that thread, so the llama.cpp context, which is not thread-safe, only ever sees one caller,
and requests queue in arrival order (FIFO) for their turn. llama.cpp releases the GIL while
it computes, so the event loop keeps serving other requests while the model generates.

Per token the worker does one ``loop.call_soon_threadsafe(queue.put_nowait, event)``; the
event objects are built on the worker, the loop only forwards them. A caller that goes away
(the iterator is closed, or its task is cancelled) sets the job's ``threading.Event``; the
worker checks it between tokens, so the model is free for the next request within one token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from interlock.chat.types import ChatRequest, Event, Message
from interlock.errors import InterlockError, UpstreamConnectionFailed, UpstreamTimeout
from interlock.providers.base import Timeouts
from interlock.settings import LocalModelConfig

if TYPE_CHECKING:
    from interlock.providers.local_worker import LocalModel

DEFAULT_TEMPERATURE = 0.2
"""SmolLM2's model card samples at 0.2 with top-p 0.9; the 135M model drifts into incoherent
rambling at the usual default of 1.0, so an unset temperature means 0.2."""
DEFAULT_TOP_P = 0.9


class LocalModelLoadError(InterlockError):
    """The embedded model could not be loaded; the message is one line saying why."""

    status = 503
    code = "local_model_unavailable"
    message = "The local model could not be loaded."


Deliver = Callable[[Event | InterlockError], object]
"""Hands one event (or the error that ends the stream) to the event loop; thread-safe."""


@dataclass(slots=True)
class GenerationJob:
    """One request as the worker needs it."""

    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    deliver: Deliver
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: Event | InterlockError) -> None:
        """Send ``item`` to the caller (called on the worker thread)."""
        try:
            self.deliver(item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled.set()


def build_job(request: ChatRequest, config: LocalModelConfig, deliver: Deliver) -> GenerationJob:
    """Translate ``request`` for the local model.

    ``max_tokens`` defaults to, and is capped at, ``config.max_tokens``. SmolLM2 has no tool
    calling and no vision: tool calls and tool results become plain text in the conversation,
    images are dropped, and ``tools`` / ``response_format`` are ignored.
    """
    requested = config.max_tokens if request.max_tokens is None else request.max_tokens
    temperature = DEFAULT_TEMPERATURE if request.temperature is None else request.temperature
    return GenerationJob(
        messages=[_as_chat_message(message) for message in request.messages],
        max_tokens=max(1, min(requested, config.max_tokens)),
        temperature=max(0.0, temperature),
        top_p=DEFAULT_TOP_P if request.top_p is None else request.top_p,
        stop=[stop for stop in request.stop if stop],
        seed=request.seed,
        deliver=deliver,
    )


def _as_chat_message(message: Message) -> dict[str, str]:
    text = message.text()
    if message.role == "tool":
        source = message.name or message.tool_call_id or "a tool"
        return {"role": "user", "content": f"[result from {source}]\n{text}"}
    if message.tool_calls:
        calls = "\n".join(
            f"[called {call.name} with arguments {call.arguments}]" for call in message.tool_calls
        )
        text = f"{text}\n{calls}" if text else calls
    return {"role": message.role, "content": text}


class LocalModelProvider:
    """The embedded llama.cpp model. ``start()`` loads it; ``aclose()`` frees it."""

    def __init__(self, config: LocalModelConfig) -> None:
        self._config = config
        self._model: LocalModel | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Load the model on its worker thread, leaving the event loop free meanwhile.

        Raises ``LocalModelLoadError`` (one line) if the file is missing or not a model.
        """
        if self._model is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="interlock-local-model")
        try:
            model = await asyncio.get_running_loop().run_in_executor(executor, _load, self._config)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._model, self._executor = model, executor

    def ready(self) -> bool:
        """True once the model is loaded and until it is closed (for the readiness check)."""
        return self._model is not None

    async def stream(
        self, request: ChatRequest, timeouts: Timeouts, *, whole: bool = False
    ) -> AsyncGenerator[Event, None]:
        """Generate the answer, yielding ``TextDelta``s as tokens come, then ``Usage`` (real
        token counts) and ``Finish``. Raises ``ContextLengthExceeded`` before any text if the
        prompt does not fit the context window. ``timeouts.idle`` bounds the wait between two
        events once the answer started; the wait for this request's turn is the pipeline's
        ``first_token`` timeout."""
        model, executor = self._model, self._executor
        if model is None or executor is None:
            raise UpstreamConnectionFailed("The local model is not loaded.")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event | InterlockError | None] = asyncio.Queue()
        put = events.put_nowait
        job = build_job(request, self._config, lambda item: loop.call_soon_threadsafe(put, item))
        done = loop.run_in_executor(executor, model.run, job)
        # Runs after every event the job handed over: they were queued on the loop first.
        done.add_done_callback(lambda _: events.put_nowait(None))
        idle = timeouts.idle
        started = False
        try:
            while True:
                if started and idle is not None and events.empty():
                    try:
                        async with asyncio.timeout(idle):
                            item = await events.get()
                    except TimeoutError:
                        raise UpstreamTimeout(
                            f"The local model produced nothing for {idle:g} seconds."
                        ) from None
                else:
                    item = await events.get()
                if item is None:
                    return
                if isinstance(item, InterlockError):
                    raise item
                started = True
                yield item
        finally:
            job.cancelled.set()

    async def aclose(self) -> None:
        """Stop every generation, running or queued, and free the model."""
        model, executor = self._model, self._executor
        self._model = self._executor = None
        if model is None or executor is None:
            return
        model.stop_all()
        try:
            # Queued behind the jobs, which now end at once; the model is freed on its thread.
            await asyncio.get_running_loop().run_in_executor(executor, model.close)
        finally:
            executor.shutdown(wait=False)  # the thread is idle now and exits by itself


def _load(config: LocalModelConfig) -> LocalModel:
    # Imported here, on the worker thread: importing llama_cpp loads its shared library,
    # which importing this module must not do.
    from interlock.providers.local_worker import load_model

    return load_model(config)
