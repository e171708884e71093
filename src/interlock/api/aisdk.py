"""The Vercel AI SDK HTTP surface: ``useChat`` front-ends pointed at Interlock work unchanged.

- ``POST /api/chat``: the UI message stream (``ai`` 5 and later, ``DefaultChatTransport``);
- ``POST /api/chat/v4``: the data stream (``ai`` 4's ``useChat``, its default protocol);
- ``POST /api/chat/text``: the text stream (``TextStreamChatTransport``, or ``ai`` 4 with
  ``streamProtocol: 'text'``); either body;
- ``GET /api/chat/{id}/stream``: stream resumption, which Interlock does not offer: 204;
- ``GET /api/conversations``, ``GET`` and ``DELETE /api/conversations/{id}``: the caller's
  stored chats.

Wire work only, as in ``interlock.api.openai``: the pipeline (``interlock.chat.pipeline``)
authenticates, checks, calls and accounts. With an ``ai`` 5 body and a chat ``id``, a turn
whose answer is complete is stored in the caller's conversation before the stream's last
chunks go out; a failed or abandoned answer stores nothing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from interlock.api.aisdk_render import (
    FINISH_REASON_SINCE,
    DataStreamWriter,
    TextStreamWriter,
    UIMessageStreamWriter,
    parse_version,
)
from interlock.api.aisdk_wire import Options, UIChatBody, UIMessageIn, is_v4, parse_ui, parse_v4
from interlock.api.body import read_body
from interlock.api.disconnect import ClientGone, ClientWatch
from interlock.api.errors import aisdk_error_response
from interlock.api.identity_wire import json_response, list_json, query_int
from interlock.api.inbound import authenticate_call, authenticate_request, cache_directive
from interlock.api.keys import authenticated
from interlock.api.streaming import PLAIN_TEXT, SSE, StreamCut, StreamReply
from interlock.auth.authenticator import bearer_token
from interlock.auth.principal import Principal
from interlock.chat.pipeline import ChatCall, Reply
from interlock.components import Components, components_of
from interlock.errors import ConversationTooLarge, InterlockError, NotFound
from interlock.store.conversations import (
    ConversationSummary,
    UIMessage,
    json_size,
    merge_turn,
)
from interlock.telemetry.usage_record import CLIENT_CLOSED_REQUEST

log = structlog.get_logger("interlock.api.aisdk")

UI_STREAM_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",
    "x-vercel-ai-ui-message-stream": "v1",
}
DATA_STREAM_HEADERS = {"cache-control": "no-cache", "x-vercel-ai-data-stream": "v1"}
TEXT_STREAM_HEADERS = {"cache-control": "no-cache"}
MAX_CHAT_ID = 128


# ---- conversations, on the chat path --------------------------------------------------------


def ui_message(message: UIMessageIn) -> UIMessage:
    """A parsed ``UIMessage`` back as the JSON the client sent (what is stored)."""
    stored: UIMessage = {"id": message.id, "role": message.role, "parts": message.parts}
    if message.metadata is not None:
        stored["metadata"] = message.metadata
    return stored


@dataclass(slots=True)
class Turn:
    """One turn of a stored conversation: what to merge when the answer is complete."""

    user_id: str
    chat_id: str
    incoming: list[UIMessage]
    regenerate: bool
    regenerated_id: str | None
    continued: UIMessage | None  # the assistant message this answer continues, if any


def _stores_conversations(principal: Principal) -> bool:
    # Only callers who are users of this gateway own conversations; the development
    # principal (INTERLOCK_INSECURE_NO_AUTH) is nobody's.
    return principal.via != "development"


async def _turn(gateway: Components, principal: Principal, body: UIChatBody) -> Turn | None:
    """The turn to store, once the size cap allows it (413 before any model call)."""
    if body.id is None or not _stores_conversations(principal):
        return None
    incoming = [ui_message(message) for message in body.messages]
    last = incoming[-1] if incoming else None
    continued = last if last is not None and last["role"] == "assistant" else None
    regenerate = body.trigger == "regenerate-message"
    turn = Turn(principal.user_id, body.id, incoming, regenerate, body.messageId, continued)
    stored = await gateway.conversations.get(turn.user_id, turn.chat_id)
    projected = merge_turn(
        stored.messages if stored is not None else [],
        incoming,
        None,
        regenerate=regenerate,
        regenerated_id=body.messageId,
    )
    if json_size(projected) > gateway.settings.config.aisdk.max_conversation_bytes:
        raise ConversationTooLarge(param="messages")
    return turn


async def _save(gateway: Components, turn: Turn, answer: UIMessage) -> None:
    """Store a finished turn; a failure is logged, never shown: the answer was delivered."""
    if turn.continued is not None:
        answer = {**turn.continued, "parts": [*turn.continued["parts"], *answer["parts"]]}
    try:
        with anyio.CancelScope(shield=True):  # the answer is whole: keep it if the client left
            await gateway.conversations.save_turn(
                turn.user_id,
                turn.chat_id,
                turn.incoming,
                answer,
                regenerate=turn.regenerate,
                regenerated_id=turn.regenerated_id,
            )
    except Exception as exc:
        log.exception("conversation_not_saved", chat_id=turn.chat_id)
        gateway.reporter.unhandled(exc, {"route": "/api/chat"})


# ---- the chat routes -------------------------------------------------------------------------


def _options(gateway: Components) -> Options:
    config = gateway.settings.config
    return Options(config.aisdk.default_model, config.server.max_output_tokens)


def _message_id(call: ChatCall, turn: Turn | None) -> str:
    if turn is not None and turn.continued is not None and turn.continued.get("id"):
        return str(turn.continued["id"])
    return "msg-" + call.request_id[4:]


async def _chat(request: Request, protocol: str) -> ASGIApp:
    gateway = components_of(request)
    call = gateway.pipeline.begin("aisdk", request.headers)
    try:
        principal = await authenticate_call(
            call, request, bearer_token(request.headers.get("authorization"))
        )
        raw = await read_body(request, gateway.settings.config.server.max_body_bytes)
        turn: Turn | None = None
        if protocol == "data" or (protocol == "text" and is_v4(raw)):
            _, chat = parse_v4(raw, _options(gateway))
        else:
            body, chat = parse_ui(raw, _options(gateway))
            turn = await _turn(gateway, principal, body)
        # Until the first token nothing is sent, so only ``receive`` tells that the client
        # left: then the attempt is cancelled and the upstream call with it.
        cache = cache_directive(request)  # the body has no field for it: the header only
        watch = ClientWatch(request.receive)
        reply = await watch.until_committed(call.stream(chat, cache))
        headers = call.headers()
        message_id = _message_id(call, turn)
        if protocol == "ui":
            version = parse_version(gateway.settings.config.aisdk.client_version)
            writer = UIMessageStreamWriter(message_id, finish_reason=version >= FINISH_REASON_SINCE)
            return StreamReply(
                _ui_body(gateway, reply, writer, turn),
                reply,
                watch,
                SSE,
                {**UI_STREAM_HEADERS, **headers},
                opening=1,
            )
        if protocol == "data":
            return StreamReply(
                _data_body(reply, DataStreamWriter(message_id)),
                reply,
                watch,
                PLAIN_TEXT,
                {**DATA_STREAM_HEADERS, **headers},
                opening=1,
            )
        # The text stream has no error message: a failure after the first byte cuts it.
        return StreamReply(
            _text_body(gateway, reply, turn, message_id),
            reply,
            watch,
            PLAIN_TEXT,
            {**TEXT_STREAM_HEADERS, **headers},
            opening=0,
        )
    except InterlockError as error:
        call.failed(error)
        return aisdk_error_response(error, call.headers())
    except (ClientGone, ClientDisconnect):
        call.client_left()
        return Response(status_code=CLIENT_CLOSED_REQUEST)


async def _ui_body(
    gateway: Components, reply: Reply, writer: UIMessageStreamWriter, turn: Turn | None
) -> AsyncGenerator[bytes, None]:
    try:
        yield writer.start()
        async for event in reply.events():
            chunk = writer.event(event)
            if chunk:
                yield chunk
        closing = writer.end()  # completes the message: the tool calls' inputs
        if turn is not None:
            # Stored before the last chunks go out: when the client's ``onFinish`` runs, the
            # conversation already holds this answer.
            await _save(gateway, turn, writer.message())
        yield closing
    except InterlockError as error:
        yield writer.error(error.message)


async def _data_body(reply: Reply, writer: DataStreamWriter) -> AsyncGenerator[bytes, None]:
    try:
        yield writer.start()
        async for event in reply.events():
            chunk = writer.event(event)
            if chunk:
                yield chunk
        yield writer.end()
    except InterlockError as error:
        yield writer.error(error.message)


async def _text_body(
    gateway: Components, reply: Reply, turn: Turn | None, message_id: str
) -> AsyncGenerator[bytes, None]:
    # The UI writer only builds the message to store; its bytes are not sent.
    shadow = UIMessageStreamWriter(message_id, finish_reason=False)
    try:
        async for event in reply.events():
            shadow.event(event)
            chunk = TextStreamWriter.event(event)
            if chunk:
                yield chunk
        shadow.end()
        if turn is not None:
            await _save(gateway, turn, shadow.message())
    except InterlockError as error:
        log.info("text_stream_cut", code=error.code)
        raise StreamCut(error.code) from error


async def ui_chat(request: Request) -> ASGIApp:
    return await _chat(request, "ui")


async def data_chat(request: Request) -> ASGIApp:
    return await _chat(request, "data")


async def text_chat(request: Request) -> ASGIApp:
    return await _chat(request, "text")


async def resume_stream(request: Request) -> Response:
    """``useChat({resume: true})`` asks on every load; 204 says there is nothing to resume."""
    try:
        await authenticate_request(request, bearer_token(request.headers.get("authorization")))
    except InterlockError as error:
        return aisdk_error_response(error)
    return Response(status_code=204)


# ---- conversations ---------------------------------------------------------------------------


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def summary_json(summary: ConversationSummary) -> dict[str, Any]:
    return {
        "object": "conversation",
        "id": summary.id,
        "title": summary.title,
        "message_count": summary.message_count,
        "size_bytes": summary.size_bytes,
        "created_at": _timestamp(summary.created_at),
        "updated_at": _timestamp(summary.updated_at),
    }


def conversation_not_found() -> NotFound:
    return NotFound("No conversation with this id.")


def _chat_id(request: Request) -> str:
    chat_id: str = request.path_params["chat_id"]
    if not chat_id or len(chat_id) > MAX_CHAT_ID:
        raise conversation_not_found()
    return chat_id


MAX_PAGE = 100


async def list_conversations(
    request: Request, gateway: Components, principal: Principal
) -> Response:
    limit = query_int(request, "limit", 20, 1, MAX_PAGE)
    offset = query_int(request, "offset", 0, 0, 1_000_000)
    if not _stores_conversations(principal):
        return json_response({**list_json([]), "has_more": False})
    found = await gateway.conversations.list(principal.user_id, limit=limit + 1, offset=offset)
    page = [summary_json(summary) for summary in found[:limit]]
    return json_response({**list_json(page), "has_more": len(found) > limit})


async def get_conversation(request: Request, gateway: Components, principal: Principal) -> Response:
    chat_id = _chat_id(request)
    record = await gateway.conversations.get(principal.user_id, chat_id)
    if record is None:
        raise conversation_not_found()
    return json_response({**summary_json(record.summary), "messages": record.messages})


async def delete_conversation(
    request: Request, gateway: Components, principal: Principal
) -> Response:
    chat_id = _chat_id(request)
    if not await gateway.conversations.delete(principal.user_id, chat_id):
        raise conversation_not_found()
    return json_response({"object": "conversation", "id": chat_id, "deleted": True})


routes = [
    Route("/api/chat", ui_chat, methods=["POST"]),
    Route("/api/chat/v4", data_chat, methods=["POST"]),
    Route("/api/chat/text", text_chat, methods=["POST"]),
    Route("/api/chat/{chat_id}/stream", resume_stream, methods=["GET"]),
    Route("/api/conversations", authenticated(list_conversations), methods=["GET"]),
    Route("/api/conversations/{chat_id}", authenticated(get_conversation), methods=["GET"]),
    Route("/api/conversations/{chat_id}", authenticated(delete_conversation), methods=["DELETE"]),
]
