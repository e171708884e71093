"""The OpenAI-compatible HTTP surface: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Wire work only: the request and the answer in OpenAI's shapes. Everything else is the shared
pipeline's (``interlock.chat.pipeline``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import msgspec
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from interlock.api import openai_wire
from interlock.api.body import read_body
from interlock.api.disconnect import ClientGone, ClientWatch, unless_disconnected
from interlock.api.errors import openai_error_response
from interlock.api.inbound import authenticate_call, authenticate_request, cache_directive
from interlock.api.openai_render import DONE, ChunkWriter, completion_body
from interlock.api.replies import JSONReply
from interlock.api.streaming import SSE, StreamReply
from interlock.auth.access import visible_models
from interlock.auth.authenticator import bearer_token
from interlock.chat.pipeline import Reply
from interlock.chat.types import Finish, ReasoningDelta, TextDelta, ToolCallDelta, Usage
from interlock.components import components_of
from interlock.errors import InterlockError
from interlock.telemetry.usage_record import CLIENT_CLOSED_REQUEST

log = structlog.get_logger("interlock.api.openai")

_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def chat_completions(request: Request) -> ASGIApp:
    gateway = components_of(request)
    call = gateway.pipeline.begin("openai", request.headers)
    try:
        await authenticate_call(call, request, bearer_token(request.headers.get("authorization")))
        server = gateway.settings.config.server
        raw = await read_body(request, server.max_body_bytes)
        body, chat = openai_wire.parse(raw, server.max_output_tokens)
        cache = cache_directive(request, body.interlock.cache if body.interlock else None)
        completion_id = "chatcmpl-" + call.request_id[4:]
        created = int(time.time())
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            # Until the first token nothing is sent, so only ``receive`` tells that the
            # client left: then the attempt is cancelled and the upstream call with it.
            watch = ClientWatch(request.receive)
            reply = await watch.until_committed(call.stream(chat, cache))
            writer = ChunkWriter(completion_id, created, chat.model)
            return StreamReply(
                _stream_body(reply, writer, include_usage),
                reply,
                watch,
                SSE,
                {**_SSE_HEADERS, **call.headers()},
                opening=1,
            )
        result = await unless_disconnected(call.complete(chat, cache), request.receive)
        return JSONReply(
            msgspec.json.encode(completion_body(completion_id, created, chat.model, result)),
            call.headers(),
        )
    except InterlockError as error:
        call.failed(error)
        return openai_error_response(error, call.headers())
    except (ClientGone, ClientDisconnect):
        call.client_left()
        return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _stream_body(
    reply: Reply, writer: ChunkWriter, include_usage: bool
) -> AsyncGenerator[bytes, None]:
    usage: Usage | None = None
    try:
        yield writer.role()
        async for event in reply.events():
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


async def list_models(request: Request) -> Response:
    gateway = components_of(request)
    request_id = gateway.request_ids.next()
    try:
        principal = await authenticate_request(
            request, bearer_token(request.headers.get("authorization"))
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
