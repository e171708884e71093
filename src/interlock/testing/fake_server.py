"""``FakeUpstream``: the fake provider as a real HTTP/1.1 server on loopback.

uvicorn (httptools, uvloop when installed) serves ``FakeUpstreamApp`` on a socket bound by the
caller, so the port is known before the server runs. In tests it runs on its own thread and
event loop; the benchmark runs it as a process (``python -m interlock.testing.fake_upstream``).

Shutdown is ours rather than ``uvicorn.Server.shutdown``: that one sleeps a fixed 100 ms and
waits for ever for stalled replies, while tests start and stop many servers. We end the
stalled replies first (``FakeUpstreamApp.close``), then close the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import uvicorn

from interlock.serving import TurnWritesHttpProtocol
from interlock.testing.fake_app import FakeUpstreamApp
from interlock.testing.fake_behavior import Behavior, Script
from interlock.testing.fake_delivery import DeliberateCutFilter
from interlock.testing.fake_ledger import Ledger, ServedRequest

_START_TIMEOUT = 5.0
_STOP_GRACE = 2.0
# Longer than uvicorn's 5 s so that a slow test never finds its pooled connection dropped.
KEEP_ALIVE_SECONDS = 60
_CUT_FILTER = DeliberateCutFilter()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop when it is installed (it is with ``uvicorn[standard]``)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one."""
    return socket.create_server((host, port), backlog=2048)


async def run_server(
    app: FakeUpstreamApp,
    sock: socket.socket,
    stop: asyncio.Event,
    on_ready: Callable[[], None],
) -> None:
    """Serve ``app`` on ``sock`` until ``stop`` is set, then shut down promptly."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if _CUT_FILTER not in uvicorn_errors.filters:
        uvicorn_errors.addFilter(_CUT_FILTER)
    config = uvicorn.Config(
        app,
        http=TurnWritesHttpProtocol,  # a reply's head and body in one segment, as providers do
        lifespan="off",
        ws="none",
        interface="asgi3",
        log_config=None,
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    on_ready()
    await stop.wait()

    for listener in server.servers:
        listener.close()
    app.close()
    state = server.server_state
    for connection in list(state.connections):
        connection.shutdown()  # idle ones close now, busy ones after their reply
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _STOP_GRACE
    # uvicorn signals neither event, so poll; it takes a few milliseconds.
    while (state.connections or state.tasks) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    for connection in list(state.connections):
        connection.transport.abort()
    for task in list(state.tasks):
        task.cancel()
    for listener in server.servers:
        await listener.wait_closed()


class FakeUpstream:
    """A fake OpenAI + Anthropic provider on ``127.0.0.1``, scriptable from tests.

    Use as ``with FakeUpstream() as upstream:`` (or ``start()`` / ``stop()``). It serves
    ``POST /v1/chat/completions``, ``POST /v1/messages`` and ``GET /v1/models``.

    Scripting (thread-safe): ``default``, ``push()``, ``set_model_behavior()``, ``reset()``.
    Observing: ``ledger`` and ``wait_for()``. ``record=False`` keeps no ledger (benchmarks);
    ``require_key`` answers 401 unless the request carries that key (``Authorization:
    Bearer`` or, on the Anthropic endpoint, ``x-api-key``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Behavior | None = None,
        record: bool = True,
        require_key: str | None = None,
        models: Sequence[str] = ("fake-model",),
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._script = Script(default)
        self._ledger = Ledger()
        self.app = FakeUpstreamApp(
            self._script,
            self._ledger if record else None,
            require_key=require_key,
            models=models,
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._error: BaseException | None = None

    # -- addresses -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeUpstream is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """The ``base_url`` for the ``openai`` SDK (it includes ``/v1``)."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """The ``base_url`` for the ``anthropic`` SDK (it appends ``/v1/messages``)."""
        return self.url

    # -- scripting -------------------------------------------------------------------------

    @property
    def default(self) -> Behavior:
        """The behaviour used when no pushed or per-model behaviour applies."""
        return self._script.default

    @default.setter
    def default(self, behavior: Behavior) -> None:
        self._script.default = behavior

    def push(self, behavior: Behavior, *, model: str | None = None) -> None:
        """Queue a one-shot behaviour for the next request (for ``model`` only, if given)."""
        self._script.push(behavior, model)

    def set_model_behavior(self, model: str, behavior: Behavior | None) -> None:
        """Use ``behavior`` for every request for ``model`` (``None`` removes it)."""
        self._script.set_model_behavior(model, behavior)

    @property
    def pending(self) -> int:
        """Pushed behaviours not consumed yet."""
        return self._script.pending

    def reset(self) -> None:
        """Forget pushed and per-model behaviours, restore the initial default, clear the
        ledger (sequence numbers keep counting)."""
        self._script.reset()
        self._ledger.clear()

    # -- observing -------------------------------------------------------------------------

    @property
    def ledger(self) -> list[ServedRequest]:
        """A snapshot of every request served, oldest first."""
        return self._ledger.snapshot()

    def wait_for(
        self, predicate: Callable[[ServedRequest], bool], timeout: float = 5.0
    ) -> ServedRequest:
        """Wait until a served request matches ``predicate`` (e.g.
        ``lambda r: r.client_disconnected``) and return a snapshot of it; raise
        ``TimeoutError`` after ``timeout`` seconds."""
        return self._ledger.wait_for(predicate, timeout)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind the port and serve on a background thread; returns once it accepts requests."""
        if self._thread is not None:
            raise RuntimeError("FakeUpstream is already started")
        sock = bind_socket(self.host, self._requested_port)
        self._port = sock.getsockname()[1]
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(sock, ready), name=f"fake-upstream-{self._port}", daemon=True
        )
        self._thread.start()
        if not ready.wait(_START_TIMEOUT) or self._error is not None:
            self.stop()
            raise RuntimeError("FakeUpstream failed to start") from self._error
        return self

    def stop(self) -> None:
        """Stop serving: stalled replies end, connections close, the thread exits."""
        thread, loop, stop_event = self._thread, self._loop, self._stop_event
        if thread is None:
            return
        if loop is not None and stop_event is not None and not loop.is_closed():
            # RuntimeError: the loop closed in between, so the thread is ending anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(_START_TIMEOUT)
        self._thread = self._loop = self._stop_event = None
        if thread.is_alive():
            raise RuntimeError("FakeUpstream did not stop")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, sock: socket.socket, ready: threading.Event) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            await run_server(self.app, sock, self._stop_event, ready.set)

        try:
            with asyncio.Runner(loop_factory=loop_factory()) as runner:
                runner.run(main())
        except BaseException as error:  # reported by start(); the thread must not die loudly
            self._error = error
            sock.close()
            ready.set()
