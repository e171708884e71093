"""What the resilience tests share: a real gateway on loopback whose routing clock the test
holds, in front of the fake upstream, and small helpers to read what clients received.

The gateway runs as the app does (``create_app``, uvicorn, its lifespan); the test then
swaps in a chat service built by the same ``ChatService.from_config`` over the app's own
providers and shared state, with a fake clock, so cooldowns and circuits move when the
test says, without sleeping.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import uvicorn

from interlock.app import InterlockApp, create_app
from interlock.chat.service import ChatService
from interlock.components import Components
from interlock.serving import server_config
from interlock.testing.fake_upstream import FakeUpstream
from tests.support.gateway import ADMIN_KEY, make_settings

HELLO = [{"role": "user", "content": "Say hello"}]
AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


class FakeClock:
    """Wall-clock seconds that move only when the test advances them (thread-safe enough:
    one float assignment)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))  # whole seconds: differences come out exact

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Gateway:
    app: InterlockApp
    url: str
    clock: FakeClock
    loop: asyncio.AbstractEventLoop

    @property
    def components(self) -> Components:
        components: Components = self.app.http.state.components
        return components

    def run(self, coroutine: Any, timeout: float = 5.0) -> Any:
        """Run ``coroutine`` on the gateway's event loop (to look at its state)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def slots_held(self, *deployments: str) -> list[int]:
        names = ["deployment:" + name for name in deployments]
        return list(self.run(self.components.state.slots.counts(names)))

    def chat(self, model: str, *, stream: bool = False, **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": HELLO, "stream": stream, **extra}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30)


def deployment(upstream: FakeUpstream, model: str, **extra: Any) -> dict[str, Any]:
    """An OpenAI-compatible deployment of the fake upstream named after its model."""
    return {
        "provider": "openai",
        "model": model,
        "base_url": extra.pop("base_url", upstream.openai_base_url),
        "api_key_env": "FAKE_PROVIDER_KEY",
        "name": extra.pop("name", model),
        **extra,
    }


@contextmanager
def serve_gateway(
    tmp_path: Path,
    config: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, str] | None = None,
) -> Iterator[Gateway]:
    """Run the gateway with ``config`` on loopback, its routing on a fake clock."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings = make_settings(tmp_path, config, env)
    app = create_app(settings, announce=None)
    server = uvicorn.Server(server_config(app, settings.host, settings.port, loop="asyncio"))
    loops: list[asyncio.AbstractEventLoop] = []

    def run() -> None:
        async def main() -> None:
            loops.append(asyncio.get_running_loop())
            await server.serve()

        asyncio.run(main())

    thread = threading.Thread(target=run, name="interlock-resilience-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the gateway failed to start")
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway did not start in time")
        time.sleep(0.01)
    clock = FakeClock()
    components: Components = app.http.state.components
    service = ChatService.from_config(
        settings.config, components.providers, components.state, clock=clock
    )
    service.guard.on_failure = components.service.guard.on_failure  # the metrics' hook
    components.service = components.pipeline.service = service
    try:
        yield Gateway(app, f"http://{settings.host}:{settings.port}", clock, loops[0])
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def sse_events(text: str) -> list[Any]:
    """The JSON payloads of an SSE body (``[DONE]`` as the string ``"[DONE]"``)."""
    events: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else msgspec.json.decode(data))
    return events


def streamed_text(events: list[Any]) -> str:
    return "".join(
        choice["delta"].get("content") or ""
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices", [])
    )


def finish_reasons(events: list[Any]) -> list[str]:
    return [
        choice["finish_reason"]
        for event in events
        if isinstance(event, dict)
        for choice in event.get("choices", [])
        if choice.get("finish_reason")
    ]
