"""The fake upstream's raw ASGI application: routing, choosing the behaviour, the ledger.

No framework on the hot path: one dict lookup routes a request, the protocol's wire module
parses it and renders the reply as bytes, and ``fake_delivery`` puts it on the wire.

Client disconnects are seen by a watcher task that waits on ``receive()`` once the request
body has been read (uvicorn answers it with ``http.disconnect`` when the client goes away).
The watcher records the disconnect at once and resolves the exchange's ``gone`` future, which
every wait of the reply races against; ``close()`` resolves the same futures with
``SHUTDOWN`` so that stalled replies end when the server stops. A reply that cannot wait
(non-streaming, no delay, no fault) gets no watcher: it is sent at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import msgspec

from interlock.testing.fake_anthropic import AnthropicWire
from interlock.testing.fake_behavior import Behavior, Script
from interlock.testing.fake_delivery import CLIENT_GONE, SHUTDOWN, Exchange
from interlock.testing.fake_ledger import Ledger, ProtocolName, ServedRequest
from interlock.testing.fake_openai import OpenAIWire
from interlock.testing.fake_reply import (
    BadRequest,
    ChatView,
    Headers,
    Wire,
    find_header,
    plan_reply,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _ClientGone(Exception):
    pass


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] != "http.request":
        raise _ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


class FakeUpstreamApp:
    """ASGI app answering ``POST /v1/chat/completions``, ``POST /v1/messages`` and
    ``GET /v1/models`` as OpenAI and Anthropic do, under the behaviours of ``script``.

    ``ledger`` is ``None`` to record nothing (benchmarks).
    """

    def __init__(
        self,
        script: Script,
        ledger: Ledger | None,
        *,
        require_key: str | None = None,
        models: Sequence[str] = ("fake-model",),
    ) -> None:
        self._script = script
        self._ledger = ledger
        self._require_key = require_key
        self._models = tuple(models)
        self._routes: dict[str, Wire] = {
            "/v1/chat/completions": OpenAIWire(),
            "/v1/messages": AnthropicWire(),
        }
        self._openai = self._routes["/v1/chat/completions"]
        self._anthropic = self._routes["/v1/messages"]
        self._seq = itertools.count(1)
        self._live: set[asyncio.Future[str]] = set()
        self._watchers: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        """End every waiting reply (call on the server's loop before shutting down)."""
        for gone in self._live:
            if not gone.done():
                gone.set_result(SHUTDOWN)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        wire = self._routes.get(scope["path"])
        if wire is not None and scope["method"] == "POST":
            await self._chat(wire, scope, receive, send)
        else:
            await self._other(scope, receive, send)

    # -- recording -------------------------------------------------------------------------

    def _open_record(
        self, scope: Scope, protocol: ProtocolName, model: str | None, body: Any
    ) -> ServedRequest:
        ledger = self._ledger
        record = ServedRequest(
            seq=next(self._seq),
            method=scope["method"],
            path=scope["path"],
            protocol=protocol,
            model=model,
            body=body,
            headers=(
                {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
                if ledger is not None
                else {}
            ),
            stream=False,
            started_at=time.monotonic(),
            client_port=client[1] if (client := scope.get("client")) else None,
        )
        if ledger is not None:
            ledger.add(record)
        return record

    def _close_record(self, record: ServedRequest) -> None:
        if record.ended_at is None:
            record.ended_at = time.monotonic()
        if self._ledger is not None:
            self._ledger.notify()

    async def _watch(
        self, receive: Receive, gone: asyncio.Future[str], record: ServedRequest
    ) -> None:
        # The body has been read, so uvicorn answers only when the client disconnects or
        # once the response is complete (the reply has then already closed its record).
        await receive()
        if record.ended_at is None:
            record.client_disconnected = True
            self._close_record(record)
        if not gone.done():
            gone.set_result(CLIENT_GONE)

    # -- endpoints -------------------------------------------------------------------------

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await _read_body(receive)
        except _ClientGone:
            return
        headers: Headers = scope["headers"]
        anthropic = find_header(headers, b"anthropic-version") is not None
        wire = self._anthropic if anthropic else self._openai
        record = self._open_record(scope, wire.name, None, None)
        exchange = Exchange(wire, record, send)
        try:
            if scope["path"] == "/v1/models" and scope["method"] == "GET":
                if self._require_key is not None and not wire.key_matches(
                    headers, self._require_key
                ):
                    await exchange.error(401)
                    return
                body = wire.models_body(self._models)
                await exchange.respond(200, body, exchange.json_headers(body))
            else:
                message = f"Unknown request URL: {scope['method']} {scope['path']}."
                await exchange.error(404, message=message)
        finally:
            self._close_record(record)

    async def _chat(self, wire: Wire, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            raw = await _read_body(receive)
        except _ClientGone:
            return
        try:
            doc: Any = msgspec.json.decode(raw)
            parse_error = None
        except msgspec.DecodeError:
            doc, parse_error = None, "We could not parse the JSON body of your request."
        model = doc.get("model") if isinstance(doc, dict) else None
        record = self._open_record(scope, wire.name, model if isinstance(model, str) else None, doc)
        headers: Headers = scope["headers"]
        exchange = Exchange(wire, record, send)
        try:
            if self._require_key is not None and not wire.key_matches(headers, self._require_key):
                await exchange.error(401)
                return
            if parse_error is not None:
                await exchange.error(400, message=parse_error)
                return
            try:
                view = wire.parse(doc, headers)
            except BadRequest as error:
                await exchange.error(400, message=error.message, param=error.param)
                return
            record.stream = view.stream
            behavior = self._script.choose(view.model)
            record.behavior = behavior
            if view.stream or behavior.waits:
                exchange.gone = self._watch_disconnect(receive, record)
            try:
                await self._answer(exchange, view, behavior)
            finally:
                if exchange.gone is not None:
                    self._live.discard(exchange.gone)
        finally:
            self._close_record(record)

    def _watch_disconnect(self, receive: Receive, record: ServedRequest) -> asyncio.Future[str]:
        gone: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        watcher = asyncio.create_task(self._watch(receive, gone, record))
        self._watchers.add(watcher)  # the loop keeps only a weak reference to tasks
        watcher.add_done_callback(self._watchers.discard)
        self._live.add(gone)
        return gone

    async def _answer(self, exchange: Exchange, view: ChatView, behavior: Behavior) -> None:
        if behavior.never_answer:
            await exchange.wait(None)
            await exchange.end_unstarted()
            return
        if behavior.first_byte_delay and await exchange.wait(behavior.first_byte_delay):
            await exchange.end_unstarted()
            return
        if behavior.status != 200:
            await exchange.error(
                behavior.status,
                error_type=behavior.error_type,
                message=behavior.error_message,
                code=behavior.error_code,
                extra=behavior.encoded_headers,
            )
            return
        reply = plan_reply(behavior, view)
        if view.stream:
            await exchange.reply_stream(view, reply, behavior)
        else:
            await exchange.reply_full(view, reply, behavior)
