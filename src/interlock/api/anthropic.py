"""The Anthropic-compatible HTTP surface: ``POST /v1/messages`` and
``POST /v1/messages/count_tokens``.

Any configured model answers here, whatever provider serves it: the body is parsed into the
canonical ``ChatRequest`` (``anthropic_wire``) and the canonical answer rendered back
(``anthropic_render``); nothing here knows which provider is behind the model.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import msgspec
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from interlock.api import anthropic_wire
from interlock.api.anthropic_render import EventWriter, error_event, message_body
from interlock.api.body import read_body
from interlock.api.disconnect import ClientGone, unless_disconnected
from interlock.api.errors import anthropic_error_response
from interlock.api.openai import _account, _stream_accountant, served_headers
from interlock.api.streaming import EndingStreamingResponse, StreamEnding
from interlock.auth.access import allowed_models
from interlock.auth.authenticator import bearer_token
from interlock.auth.principal import Principal
from interlock.chat.service import ChatStream, estimate_tokens
from interlock.chat.types import ChatRequest
from interlock.components import components_of
from interlock.errors import InterlockError, InternalError, InvalidRequest, ModelNotFound
from interlock.limits.budgets import Reservation
from interlock.telemetry.usage_record import CLIENT_CLOSED_REQUEST

log = structlog.get_logger("interlock.api.anthropic")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def api_key(request: Request) -> str | None:
    """The caller's key: ``x-api-key`` (Anthropic's own header), else a bearer token."""
    key = request.headers.get("x-api-key", "").strip()
    return key or bearer_token(request.headers.get("authorization"))


def request_headers(request_id: str) -> dict[str, str]:
    return {"request-id": request_id, "x-request-id": request_id}


def input_estimate(chat: ChatRequest) -> int:
    """About four characters a token over everything the model reads: system prompt and
    messages, tool calls' arguments, and the tool definitions."""
    chars = 0
    for message in chat.messages:
        chars += len(message.text())
        chars += sum(len(call.name) + len(call.arguments) for call in message.tool_calls)
    for tool in chat.tools:
        chars += len(tool.name) + len(tool.description or "")
        if tool.parameters is not None:
            chars += len(msgspec.json.encode(tool.parameters))
    return estimate_tokens(chars)


async def messages(request: Request) -> Response:
    started = time.perf_counter()
    gateway = components_of(request)
    request_id = gateway.request_ids.next()
    principal: Principal | None = None
    chat: ChatRequest | None = None
    reservation: Reservation | None = None
    streaming = False
    try:
        principal = await gateway.authenticator.authenticate(api_key(request))
        version = anthropic_wire.check_version(request.headers.get("anthropic-version"))
        server = gateway.settings.config.server
        raw = await read_body(request, server.max_body_bytes)
        body, chat = anthropic_wire.parse(raw, server.max_output_tokens, version=version)
        streaming = body.stream
        if len(chat.messages) > server.max_messages:
            raise InvalidRequest(
                f"messages: too many messages, at most {server.max_messages} are allowed.",
                param="messages",
            )
        allowed = allowed_models(principal)
        if not gateway.router.has_model(chat.model) or (
            allowed is not None and chat.model not in allowed
        ):
            raise ModelNotFound(f"model: {chat.model!r} does not exist.", param="model")
        reservation = await gateway.budgets.reserve(principal, chat)
        message_id = "msg_" + request_id[4:]
        if body.stream:
            stream = await unless_disconnected(gateway.service.open(chat, allowed), request.receive)
            first_token_at = time.perf_counter()
            writer = EventWriter(message_id, chat.model)
            on_end = _stream_accountant(
                gateway, request_id, principal, chat, stream, started, first_token_at, reservation
            )
            ending = StreamEnding(stream, on_end)
            return EndingStreamingResponse(
                _stream_body(stream, writer, input_estimate(chat), request_id, ending),
                ending,
                media_type="text/event-stream",
                headers={
                    **_SSE_HEADERS,
                    **served_headers(request_id, stream.served, started),
                    **request_headers(request_id),
                },
            )
        result, served = await unless_disconnected(
            gateway.service.complete(chat, allowed), request.receive
        )
        response = Response(
            msgspec.json.encode(message_body(message_id, chat.model, result)),
            media_type="application/json",
            headers={**served_headers(request_id, served, started), **request_headers(request_id)},
        )
        _account(
            gateway,
            request_id,
            principal,
            chat,
            started,
            status=200,
            streaming=False,
            served=served,
            usage=result.usage,
            reservation=reservation,
        )
        return response
    except InterlockError as error:
        if principal is not None:
            _account(
                gateway,
                request_id,
                principal,
                chat,
                started,
                status=error.status,
                streaming=streaming,
                error=error.code,
                reservation=reservation,
            )
        return anthropic_error_response(error, request_id)
    except (ClientGone, ClientDisconnect):
        log.info("client_disconnected", request_id=request_id)
        if principal is not None:
            _account(
                gateway,
                request_id,
                principal,
                chat,
                started,
                status=CLIENT_CLOSED_REQUEST,
                streaming=streaming,
                error="client_disconnected",
                partial=True,
                reservation=reservation,
            )
        return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _stream_body(
    stream: ChatStream,
    writer: EventWriter,
    input_tokens: int,
    request_id: str,
    ending: StreamEnding,
) -> AsyncIterator[bytes]:
    failure: str | None = None
    try:
        yield writer.start(input_tokens)
        async for event in stream.events():
            chunk = writer.feed(event)
            if chunk:
                yield chunk
        yield writer.end()
    except InterlockError as error:
        failure = error.code
        yield error_event(error, request_id)
    except Exception:
        log.exception("stream_failed")
        failure = InternalError.code
        yield error_event(InternalError(), request_id)
    finally:
        await ending.end(failure)


async def count_tokens(request: Request) -> Response:
    gateway = components_of(request)
    request_id = gateway.request_ids.next()
    try:
        principal = await gateway.authenticator.authenticate(api_key(request))
        version = anthropic_wire.check_version(request.headers.get("anthropic-version"))
        server = gateway.settings.config.server
        raw = await read_body(request, server.max_body_bytes)
        _, chat = anthropic_wire.parse(
            raw, server.max_output_tokens, version=version, require_max_tokens=False
        )
        allowed = allowed_models(principal)
        if not gateway.router.has_model(chat.model) or (
            allowed is not None and chat.model not in allowed
        ):
            raise ModelNotFound(f"model: {chat.model!r} does not exist.", param="model")
    except InterlockError as error:
        return anthropic_error_response(error, request_id)
    return Response(
        msgspec.json.encode({"input_tokens": input_estimate(chat)}),
        media_type="application/json",
        headers=request_headers(request_id),
    )


routes = [
    Route("/v1/messages", messages, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]
