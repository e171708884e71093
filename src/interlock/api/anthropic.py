"""The Anthropic-compatible HTTP surface: ``POST /v1/messages`` and
``POST /v1/messages/count_tokens``.

Any configured model answers here, whatever provider serves it: the body is parsed into the
canonical ``ChatRequest`` (``anthropic_wire``) and the canonical answer rendered back
(``anthropic_render``); nothing here knows which provider is behind the model.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from interlock.api import anthropic_wire
from interlock.api.anthropic_render import EventWriter, error_event, message_body
from interlock.api.body import read_body
from interlock.api.disconnect import ClientGone, ClientWatch, unless_disconnected
from interlock.api.errors import anthropic_error_response
from interlock.api.inbound import authenticate_call, authenticate_request, cache_directive
from interlock.api.replies import JSONReply
from interlock.api.streaming import SSE, StreamReply
from interlock.auth.access import allowed_models, model_not_found
from interlock.auth.authenticator import bearer_token
from interlock.chat.pipeline import Reply
from interlock.chat.stream import estimate_tokens
from interlock.chat.types import ChatRequest
from interlock.components import components_of
from interlock.errors import InterlockError
from interlock.telemetry.usage_record import CLIENT_CLOSED_REQUEST

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def api_key(request: Request) -> str | None:
    """The caller's key: ``x-api-key`` (Anthropic's own header), else a bearer token
    (what ``anthropic`` ≥ 2.0 sends)."""
    key = request.headers.get("x-api-key", "").strip()
    return key or bearer_token(request.headers.get("authorization"))


def with_request_id(headers: dict[str, str]) -> dict[str, str]:
    """``request-id`` too: Anthropic's header, which its SDK reads as ``_request_id``."""
    return {**headers, "request-id": headers["x-request-id"]}


def input_estimate(chat: ChatRequest) -> int:
    """About four characters a token over everything the model reads: system prompt and
    messages, tool calls' names and arguments, and the tool definitions."""
    chars = 0
    for message in chat.messages:
        chars += len(message.text())
        chars += sum(len(call.name) + len(call.arguments) for call in message.tool_calls)
    for tool in chat.tools:
        chars += len(tool.name) + len(tool.description or "")
        if tool.parameters is not None:
            chars += len(msgspec.json.encode(tool.parameters))
    return estimate_tokens(chars)


async def messages(request: Request) -> ASGIApp:
    gateway = components_of(request)
    call = gateway.pipeline.begin("anthropic", request.headers)
    try:
        await authenticate_call(call, request, api_key(request))
        version = anthropic_wire.check_version(request.headers.get("anthropic-version"))
        server = gateway.settings.config.server
        raw = await read_body(request, server.max_body_bytes)
        body, chat = anthropic_wire.parse(raw, server.max_output_tokens, version=version)
        message_id = "msg_" + call.request_id[4:]
        if body.stream:
            # Until the first token nothing is sent, so only ``receive`` tells that the
            # client left: then the attempt is cancelled and the upstream call with it.
            watch = ClientWatch(request.receive)
            reply = await watch.until_committed(call.stream(chat, cache_directive(request)))
            writer = EventWriter(message_id, chat.model)
            return StreamReply(
                _stream_body(reply, writer, input_estimate(chat), call.request_id),
                reply,
                watch,
                SSE,
                {**_SSE_HEADERS, **with_request_id(call.headers())},
                opening=1,
            )
        result = await unless_disconnected(
            call.complete(chat, cache_directive(request)), request.receive
        )
        return JSONReply(
            msgspec.json.encode(message_body(message_id, chat.model, result)),
            with_request_id(call.headers()),
        )
    except InterlockError as error:
        call.failed(error)
        return anthropic_error_response(error, call.request_id, call.headers())
    except (ClientGone, ClientDisconnect):
        call.client_left()
        return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _stream_body(
    reply: Reply, writer: EventWriter, input_tokens: int, request_id: str
) -> AsyncGenerator[bytes, None]:
    try:
        yield writer.start(input_tokens)
        async for event in reply.events():
            chunk = writer.feed(event)
            if chunk:
                yield chunk
        yield writer.end()
    except InterlockError as error:
        yield error_event(error, request_id)


async def count_tokens(request: Request) -> Response:
    """An estimate of the request's input tokens; no provider is called, nothing is billed."""
    gateway = components_of(request)
    request_id = gateway.request_ids.next()
    try:
        principal = await authenticate_request(request, api_key(request))
        version = anthropic_wire.check_version(request.headers.get("anthropic-version"))
        server = gateway.settings.config.server
        raw = await read_body(request, server.max_body_bytes)
        _, chat = anthropic_wire.parse(
            raw, server.max_output_tokens, version=version, require_max_tokens=False
        )
        allowed = allowed_models(principal)  # 403 if the caller's tier is not configured
        if not gateway.router.has_model(chat.model) or (
            allowed is not None and chat.model not in allowed
        ):
            raise model_not_found(chat.model)
    except InterlockError as error:
        return anthropic_error_response(error, request_id)
    return Response(
        msgspec.json.encode({"input_tokens": input_estimate(chat)}),
        media_type="application/json",
        headers={"request-id": request_id, "x-request-id": request_id},
    )


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
