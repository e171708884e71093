"""The OpenAI-compatible HTTP surface: ``POST /v1/chat/completions`` and ``GET /v1/models``."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import anyio
import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from interlock.api import openai_wire
from interlock.api.body import read_body
from interlock.api.disconnect import ClientGone, unless_disconnected
from interlock.api.errors import openai_error_response
from interlock.api.openai_render import DONE, ChunkWriter, completion_body
from interlock.auth.authenticator import bearer_token
from interlock.chat.service import ChatStream, ServedBy
from interlock.chat.types import Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from interlock.components import components_of
from interlock.errors import InterlockError, InternalError, InvalidRequest, ModelNotFound

log = structlog.get_logger("interlock.api.openai")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def _request_id() -> str:
    return "req_" + os.urandom(12).hex()


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
    request_id = _request_id()
    gateway = components_of(request)
    try:
        await gateway.authenticator.authenticate(bearer_token(request.headers.get("authorization")))
        server = gateway.settings.config.server
        raw = await read_body(request, server.max_body_bytes)
        body, chat = openai_wire.parse(raw, server.max_output_tokens)
        if len(chat.messages) > server.max_messages:
            raise InvalidRequest(
                f"Too many messages: at most {server.max_messages} are allowed.",
                param="messages",
            )
        if not gateway.router.has_model(chat.model):
            raise ModelNotFound(f"The model {chat.model!r} does not exist.", param="model")
        completion_id = "chatcmpl-" + request_id[4:]
        created = int(time.time())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            stream = await gateway.service.open(chat)
            writer = ChunkWriter(completion_id, created, chat.model)
            return StreamingResponse(
                _stream_body(stream, writer, include_usage),
                media_type="text/event-stream",
                headers={**_SSE_HEADERS, **served_headers(request_id, stream.served, started)},
            )
        result, served = await unless_disconnected(gateway.service.complete(chat), request.receive)
        return Response(
            msgspec.json.encode(completion_body(completion_id, created, chat.model, result)),
            media_type="application/json",
            headers=served_headers(request_id, served, started),
        )
    except InterlockError as error:
        return openai_error_response(error, {"x-request-id": request_id})
    except ClientGone:
        log.info("client_disconnected", request_id=request_id)
        return Response(status_code=499)


async def _stream_body(
    stream: ChatStream, writer: ChunkWriter, include_usage: bool
) -> AsyncIterator[bytes]:
    usage: Usage | None = None
    yield writer.role()
    try:
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
        yield writer.error(error)
    except Exception:
        log.exception("stream_failed")
        yield writer.error(InternalError())
    finally:
        with anyio.CancelScope(shield=True):
            await stream.aclose()


async def list_models(request: Request) -> Response:
    gateway = components_of(request)
    request_id = _request_id()
    try:
        await gateway.authenticator.authenticate(bearer_token(request.headers.get("authorization")))
    except InterlockError as error:
        return openai_error_response(error, {"x-request-id": request_id})
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "interlock"}
        for name in gateway.router.public_models
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
