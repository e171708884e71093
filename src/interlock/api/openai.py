"""The OpenAI-compatible HTTP surface: ``POST /v1/chat/completions`` and ``GET /v1/models``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import msgspec
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from interlock.api import openai_wire
from interlock.api.body import read_body
from interlock.api.disconnect import ClientGone, unless_disconnected
from interlock.api.errors import openai_error_response
from interlock.api.openai_render import DONE, ChunkWriter, completion_body
from interlock.api.streaming import EndingStreamingResponse, StreamEnd, StreamEnding
from interlock.auth.access import allowed_models, visible_models
from interlock.auth.authenticator import bearer_token
from interlock.auth.principal import Principal
from interlock.chat.service import ChatStream, ServedBy
from interlock.chat.types import (
    ChatRequest,
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from interlock.components import Components, components_of
from interlock.errors import InterlockError, InternalError, InvalidRequest, ModelNotFound
from interlock.limits.budgets import Reservation
from interlock.telemetry.usage_record import CLIENT_CLOSED_REQUEST, record_usage

log = structlog.get_logger("interlock.api.openai")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def served_headers(request_id: str, served: ServedBy, started: float) -> dict[str, str]:
    """How the request was served, and what the gateway itself added to it."""
    elapsed = time.perf_counter() - started
    overhead_ms = max(0.0, (elapsed - served.upstream_seconds) * 1000)
    return {
        "x-request-id": request_id,
        "x-interlock-model": served.model,
        "x-interlock-deployment": served.deployment,
        "x-interlock-attempts": str(served.attempts),
        "x-interlock-overhead-ms": f"{overhead_ms:.2f}",
    }


async def chat_completions(request: Request) -> Response:
    started = time.perf_counter()
    gateway = components_of(request)
    request_id = gateway.request_ids.next()
    principal: Principal | None = None  # no usage row for a caller who is not authenticated
    chat: ChatRequest | None = None
    reservation: Reservation | None = None  # the budgets' hold, settled by ``_account``
    streaming = False
    try:
        principal = await gateway.authenticator.authenticate(
            bearer_token(request.headers.get("authorization"))
        )
        server = gateway.settings.config.server
        raw = await read_body(request, server.max_body_bytes)
        body, chat = openai_wire.parse(raw, server.max_output_tokens)
        streaming = body.stream
        if len(chat.messages) > server.max_messages:
            raise InvalidRequest(
                f"Too many messages: at most {server.max_messages} are allowed.",
                param="messages",
            )
        allowed = allowed_models(principal)  # 403 if the caller's tier is not configured
        if not gateway.router.has_model(chat.model) or (
            allowed is not None and chat.model not in allowed
        ):
            # A model outside the caller's scope looks exactly like one that does not exist.
            raise ModelNotFound(f"The model {chat.model!r} does not exist.", param="model")
        # The request's maximum cost, held against its budgets (429 when over, 503 when the
        # shared state cannot tell: budgets fail closed) before anything reaches upstream.
        reservation = await gateway.budgets.reserve(principal, chat)
        completion_id = "chatcmpl-" + request_id[4:]
        created = int(time.time())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            # Until the first token nothing is sent, so only ``receive`` tells that the
            # client left: then the attempt is cancelled and the upstream call with it.
            stream = await unless_disconnected(gateway.service.open(chat, allowed), request.receive)
            first_token_at = time.perf_counter()
            writer = ChunkWriter(completion_id, created, chat.model)
            on_end = _stream_accountant(
                gateway, request_id, principal, chat, stream, started, first_token_at, reservation
            )
            ending = StreamEnding(stream, on_end)
            return EndingStreamingResponse(
                _stream_body(stream, writer, include_usage, ending),
                ending,
                media_type="text/event-stream",
                headers={**_SSE_HEADERS, **served_headers(request_id, stream.served, started)},
            )
        result, served = await unless_disconnected(
            gateway.service.complete(chat, allowed), request.receive
        )
        response = Response(
            msgspec.json.encode(completion_body(completion_id, created, chat.model, result)),
            media_type="application/json",
            headers=served_headers(request_id, served, started),
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
        return openai_error_response(error, {"x-request-id": request_id})
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


def _account(
    gateway: Components,
    request_id: str,
    principal: Principal,
    chat: ChatRequest | None,
    started: float,
    *,
    status: int,
    streaming: bool,
    served: ServedBy | None = None,
    usage: Usage | None = None,
    output_chars: int = 0,
    first_token_at: float | None = None,
    error: str | None = None,
    partial: bool = False,
    reservation: Reservation | None = None,
) -> None:
    """Record the request's usage and settle its budget reservation at the real cost;
    accounting never fails a request."""
    try:
        record = record_usage(
            gateway.ledger,
            gateway.prices,
            request_id=request_id,
            principal=principal,
            model=chat.model if chat is not None else "",
            request=chat,
            started=started,
            status=status,
            streaming=streaming,
            served=served,
            usage=usage,
            output_chars=output_chars,
            first_token_at=first_token_at,
            error=error,
            partial=partial,
        )
    except Exception:
        log.exception("usage_not_recorded", request_id=request_id)
        return  # the reservation stays charged: never less than the real cost
    if reservation is not None:
        gateway.budgets.settle_soon(reservation, record.cost)


def _stream_accountant(
    gateway: Components,
    request_id: str,
    principal: Principal,
    chat: ChatRequest,
    stream: ChatStream,
    started: float,
    first_token_at: float,
    reservation: Reservation | None,
) -> StreamEnd:
    """What a stream does when it ends: record the tokens the client actually received."""

    def on_end(failure: str | None) -> None:
        if failure is None and stream.finish is not None:
            status, partial, usage = 200, False, stream.usage  # the whole answer was sent
        elif failure is not None:
            status, partial, usage = 200, True, None  # cut by an error event after the 200
        else:
            status, partial, usage = CLIENT_CLOSED_REQUEST, True, None  # the client left
            failure = "client_disconnected"
        _account(
            gateway,
            request_id,
            principal,
            chat,
            started,
            status=status,
            streaming=True,
            served=stream.served,
            usage=usage,
            output_chars=stream.output_chars,
            first_token_at=first_token_at,
            error=failure,
            partial=partial,
            reservation=reservation,
        )

    return on_end


async def _stream_body(
    stream: ChatStream, writer: ChunkWriter, include_usage: bool, ending: StreamEnding
) -> AsyncIterator[bytes]:
    usage: Usage | None = None
    failure: str | None = None
    try:
        yield writer.role()
        async for event in stream.events():
            if isinstance(event, TextDelta):
                yield writer.text(event.text)
            elif isinstance(event, ToolCallDelta):
                yield writer.tool_call(event)
            elif isinstance(event, ReasoningDelta):
                yield writer.reasoning(event.text)
            elif isinstance(event, Usage):
                usage = event
            elif isinstance(event, Finish):
                yield writer.finish(event.reason)
        if include_usage and usage is not None:
            yield writer.usage(usage)
        yield DONE
    except InterlockError as error:
        failure = error.code
        yield writer.error(error)
    except Exception:
        log.exception("stream_failed")
        failure = InternalError.code
        yield writer.error(InternalError())
    finally:
        # Also on cancellation (the client went away): the upstream call ends here, and the
        # tokens sent so far are still accounted.
        await ending.end(failure)


async def list_models(request: Request) -> Response:
    gateway = components_of(request)
    request_id = gateway.request_ids.next()
    try:
        principal = await gateway.authenticator.authenticate(
            bearer_token(request.headers.get("authorization"))
        )
        names = visible_models(principal, gateway.router.public_models)
    except InterlockError as error:
        return openai_error_response(error, {"x-request-id": request_id})
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "interlock"} for name in names
    ]
    return Response(
        msgspec.json.encode({"object": "list", "data": data}),
        media_type="application/json",
        headers={"x-request-id": request_id},
    )


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
]
