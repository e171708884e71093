"""Vercel AI SDK request bodies, and their translation to the canonical ``ChatRequest``.

Two shapes arrive (``shared/reference/wire-protocols.md`` §1.2, §1.5):

- ``ai`` 5 and later (``useChat`` with ``DefaultChatTransport``): ``{id, messages, trigger,
  messageId?, ...body}`` where each message is a ``UIMessage`` ``{id, role, parts[]}``;
- ``ai`` 4 (``useChat`` with the data or text stream protocol): ``{id, messages, ...body}``
  where each message has a ``content`` string and, from 4.2 on, ``parts``.

Extra body fields are how an app passes options (``sendMessage(_, {body})``): ``model``,
``temperature`` and ``maxOutputTokens`` are read; others are ignored. Parts are open-ended
(``data-*``, ``tool-*``, newer part types), so they are decoded as JSON objects and checked one
by one here: a known part type with wrong fields is a 400 naming it, a part the model cannot be
sent (sources, data, step markers, reasoning) is left out of the prompt, and a part type this
gateway does not know is ignored so that newer clients keep working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from interlock.chat.types import ChatRequest, ContentPart, ImagePart, Message, TextPart, ToolCall
from interlock.errors import InvalidRequest

ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
ChatId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
MessageId = Annotated[str, msgspec.Meta(max_length=128)]
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]

Trigger = Literal["submit-message", "regenerate-message"]


class UIMessageIn(msgspec.Struct):
    """A ``UIMessage`` of ``ai`` 5+: parts, no ``content``."""

    role: Literal["system", "user", "assistant"]
    parts: list[dict[str, Any]]
    id: MessageId = ""
    metadata: Any = None


class UIChatBody(msgspec.Struct):
    """The body ``DefaultChatTransport`` sends (plus the app's extra fields)."""

    messages: list[UIMessageIn]
    id: ChatId | None = None
    trigger: Trigger = "submit-message"
    messageId: MessageId | None = None
    model: ModelName | None = None
    temperature: Temperature | None = None
    maxOutputTokens: PositiveInt | None = None


class V4Attachment(msgspec.Struct):
    url: str
    contentType: str | None = None
    name: str | None = None


class V4MessageIn(msgspec.Struct):
    """A message of ``ai`` 4's ``useChat``: ``content``, and ``parts`` from 4.2 on."""

    role: Literal["system", "user", "assistant", "data"]
    content: str = ""
    parts: list[dict[str, Any]] | None = None
    experimental_attachments: list[V4Attachment] | None = None
    toolInvocations: list[dict[str, Any]] | None = None
    id: MessageId | None = None


class V4ChatBody(msgspec.Struct):
    messages: list[V4MessageIn]
    id: ChatId | None = None
    model: ModelName | None = None
    temperature: Temperature | None = None
    maxTokens: PositiveInt | None = None


@dataclass(slots=True)
class Options:
    """What the route supplies that the body may leave out."""

    default_model: str | None
    max_output_tokens: int


_ui_decoder = msgspec.json.Decoder(UIChatBody)
_v4_decoder = msgspec.json.Decoder(V4ChatBody)

# Parts that carry nothing a model can be sent again; left out of the prompt.
_SKIPPED_PARTS = frozenset(
    {"reasoning", "step-start", "source-url", "source-document", "reasoning-file", "custom"}
)
# Tool part states whose call has a result the model can be shown.
_ANSWERED = frozenset({"output-available", "output-error", "output-denied"})
_TOOL_STATES = frozenset(
    {
        "input-streaming",
        "input-available",
        "approval-requested",
        "approval-responded",
        *_ANSWERED,
    }
)


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        message = str(exc)
        param = None
        if " - at `$." in message:
            message, _, path = message.partition(" - at `$.")
            param = path.rstrip("`")
            message = f"{message} at `{param}`"
        raise InvalidRequest(f"Invalid request body: {message}.", param=param) from None
    except msgspec.DecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None


def _string(part: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = part.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(
            f"`{where}.{key}` must be a string.", param=f"{where}.{key}", code="invalid_value"
        )
    return value


def _part_type(part: dict[str, Any], where: str) -> str:
    kind = part.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidRequest(f"`{where}.type` must be a non-empty string.", param=f"{where}.type")
    return kind


def _image(url: str, media_type: str | None, where: str) -> ImagePart:
    """A file part as an image: the canonical model carries images only."""
    if media_type is None or not media_type.startswith("image/"):
        shown = media_type or "without a media type"
        raise InvalidRequest(
            f"Unsupported file {shown!s} at `{where}`: only images can be sent to models.",
            param=where,
            code="unsupported_file",
        )
    if not (url.startswith("data:") or url.startswith("https://") or url.startswith("http://")):
        raise InvalidRequest(
            f"`{where}.url` must be a data: or http(s): URL.", param=f"{where}.url"
        )
    return ImagePart(url)


def _json_text(value: Any) -> str:
    """A tool's input or output as the JSON text providers take."""
    if isinstance(value, str):
        return value
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):  # pragma: no cover - decoded JSON re-encodes
        return str(value)


class _Turns:
    """Builds canonical messages from one assistant UI message's parts.

    One UI message can hold several model steps (text, tool calls, then more text once the
    tools answered); each step becomes an assistant message followed by its tool results.
    """

    def __init__(self, out: list[Message]) -> None:
        self._out = out
        self._content: list[ContentPart] = []
        self._calls: list[ToolCall] = []
        self._results: list[Message] = []

    def text(self, text: str) -> None:
        if self._calls:
            self.flush()  # text after a tool call belongs to the next step
        if text:
            self._content.append(TextPart(text))

    def call(self, call: ToolCall, result: str) -> None:
        self._calls.append(call)
        self._results.append(Message(role="tool", content=[TextPart(result)], tool_call_id=call.id))

    def flush(self) -> None:
        if self._content or self._calls:
            self._out.append(
                Message(role="assistant", content=self._content, tool_calls=self._calls)
            )
            self._out.extend(self._results)
        self._content, self._calls, self._results = [], [], []


def _tool_result(part: dict[str, Any], state: str, where: str) -> str:
    if state == "output-available":
        return _json_text(part.get("output"))
    if state == "output-error":
        return _string(part, "errorText", where) or "The tool failed."
    return "The user denied this tool call."


def _ui_tool(part: dict[str, Any], kind: str, where: str, turns: _Turns) -> None:
    if kind == "dynamic-tool":
        name = _string(part, "toolName", where)
    else:
        name = kind.removeprefix("tool-")
    call_id = _string(part, "toolCallId", where)
    state = _string(part, "state", where)
    if state not in _TOOL_STATES:
        raise InvalidRequest(
            f"`{where}.state` is not a tool state: {state!r}.",
            param=f"{where}.state",
            code="invalid_value",
        )
    if not name or not call_id:
        raise InvalidRequest(f"A tool part needs a name and `toolCallId` ({where}).", param=where)
    if state not in _ANSWERED:
        return  # a call without its result cannot be shown to a model; it is left out
    turns.call(
        ToolCall(call_id, name, _json_text(part.get("input"))), _tool_result(part, state, where)
    )


def _ui_message(message: UIMessageIn, index: int, out: list[Message]) -> None:
    where = f"messages[{index}]"
    if message.role != "assistant":
        content: list[ContentPart] = []
        for number, part in enumerate(message.parts):
            at = f"{where}.parts[{number}]"
            kind = _part_type(part, at)
            if kind == "text":
                content.append(TextPart(_string(part, "text", at) or ""))
            elif kind == "file":
                if message.role != "user":
                    raise InvalidRequest(
                        f"File parts are only allowed in user messages ({at}).", param=at
                    )
                url = _string(part, "url", at) or ""
                content.append(_image(url, _string(part, "mediaType", at), at))
            elif kind.startswith("tool-") or kind == "dynamic-tool":
                raise InvalidRequest(
                    f"Tool parts are only allowed in assistant messages ({at}).", param=at
                )
        out.append(Message(role=message.role, content=content))
        return
    turns = _Turns(out)
    for number, part in enumerate(message.parts):
        at = f"{where}.parts[{number}]"
        kind = _part_type(part, at)
        if kind == "text":
            turns.text(_string(part, "text", at) or "")
        elif kind == "step-start":
            turns.flush()
        elif kind.startswith("tool-") or kind == "dynamic-tool":
            _ui_tool(part, kind, at, turns)
        # file parts of an assistant (generated images), sources, data and reasoning parts
        # cannot be sent back to a model: left out.
    turns.flush()


def _model(body_model: str | None, options: Options) -> str:
    model = body_model or options.default_model
    if not model:
        raise InvalidRequest(
            "No model: send `model` in the request body (useChat: the transport's `body` "
            "option), or configure `aisdk.default_model`.",
            param="model",
        )
    return model


def _max_tokens(value: int | None, options: Options, param: str) -> int | None:
    if value is not None and value > options.max_output_tokens:
        raise InvalidRequest(
            f"`{param}` is too large: at most {options.max_output_tokens} is allowed.",
            param=param,
            code="invalid_value",
        )
    return value


def _nonempty(messages: list[Message]) -> list[Message]:
    if not messages:
        raise InvalidRequest("`messages` must contain at least one message.", param="messages")
    return messages


def ui_to_chat_request(body: UIChatBody, options: Options) -> ChatRequest:
    """The canonical request for an ``ai`` 5+ body."""
    messages: list[Message] = []
    for index, message in enumerate(body.messages):
        _ui_message(message, index, messages)
    return ChatRequest(
        model=_model(body.model, options),
        messages=_nonempty(messages),
        max_tokens=_max_tokens(body.maxOutputTokens, options, "maxOutputTokens"),
        temperature=body.temperature,
    )


def parse_ui(raw: bytes, options: Options) -> tuple[UIChatBody, ChatRequest]:
    """Decode an ``ai`` 5+ body; raise ``InvalidRequest`` naming what is wrong."""
    body: UIChatBody = _decode(_ui_decoder, raw)
    return body, ui_to_chat_request(body, options)


# ---- ai 4 ---------------------------------------------------------------------------------


def _v4_invocation(invocation: Any, where: str, turns: _Turns) -> None:
    if not isinstance(invocation, dict):
        raise InvalidRequest(f"`{where}` must be an object.", param=where)
    state = _string(invocation, "state", where)
    if state not in ("partial-call", "call", "result"):
        raise InvalidRequest(
            f"`{where}.state` is not a tool invocation state: {state!r}.",
            param=f"{where}.state",
            code="invalid_value",
        )
    call_id = _string(invocation, "toolCallId", where) or ""
    name = _string(invocation, "toolName", where) or ""
    if state != "result":
        return  # no result yet: left out, as for ai 5
    call = ToolCall(call_id, name, _json_text(invocation.get("args")))
    turns.call(call, _json_text(invocation.get("result")))


def _v4_assistant(message: V4MessageIn, where: str, out: list[Message]) -> None:
    turns = _Turns(out)
    if message.parts is None:
        turns.text(message.content)
        for number, invocation in enumerate(message.toolInvocations or ()):
            _v4_invocation(invocation, f"{where}.toolInvocations[{number}]", turns)
        turns.flush()
        return
    for number, part in enumerate(message.parts):
        at = f"{where}.parts[{number}]"
        kind = _part_type(part, at)
        if kind == "text":
            turns.text(_string(part, "text", at) or "")
        elif kind == "step-start":
            turns.flush()
        elif kind == "tool-invocation":
            _v4_invocation(part.get("toolInvocation"), f"{at}.toolInvocation", turns)
    turns.flush()


def _v4_message(message: V4MessageIn, index: int, out: list[Message]) -> None:
    where = f"messages[{index}]"
    if message.role == "data":
        return  # ai 4's deprecated data messages are for the UI only
    if message.role == "assistant":
        _v4_assistant(message, where, out)
        return
    content: list[ContentPart] = []
    if message.parts is not None:
        for number, part in enumerate(message.parts):
            at = f"{where}.parts[{number}]"
            if _part_type(part, at) == "text":
                content.append(TextPart(_string(part, "text", at) or ""))
    else:
        content.append(TextPart(message.content))
    if message.experimental_attachments:
        if message.role != "user":
            raise InvalidRequest(
                f"Attachments are only allowed in user messages ({where}).",
                param=f"{where}.experimental_attachments",
            )
        for number, attachment in enumerate(message.experimental_attachments):
            at = f"{where}.experimental_attachments[{number}]"
            media_type = attachment.contentType
            if media_type is None and attachment.url.startswith("data:"):
                media_type = attachment.url[5:].partition(";")[0].partition(",")[0] or None
            content.append(_image(attachment.url, media_type, at))
    out.append(Message(role=message.role, content=content))


def v4_to_chat_request(body: V4ChatBody, options: Options) -> ChatRequest:
    """The canonical request for an ``ai`` 4 body."""
    messages: list[Message] = []
    for index, message in enumerate(body.messages):
        _v4_message(message, index, messages)
    return ChatRequest(
        model=_model(body.model, options),
        messages=_nonempty(messages),
        max_tokens=_max_tokens(body.maxTokens, options, "maxTokens"),
        temperature=body.temperature,
    )


def parse_v4(raw: bytes, options: Options) -> tuple[V4ChatBody, ChatRequest]:
    """Decode an ``ai`` 4 body; raise ``InvalidRequest`` naming what is wrong."""
    body: V4ChatBody = _decode(_v4_decoder, raw)
    return body, v4_to_chat_request(body, options)


class _Shape(msgspec.Struct):
    messages: list[dict[str, Any]]


def is_v4(raw: bytes) -> bool:
    """Whether a body is ``ai`` 4's: its messages carry ``content``, which ``ai`` 5+ never
    sends. (The text stream protocol is spoken by both; only the body tells them apart.)"""
    try:
        shape = msgspec.json.decode(raw, type=_Shape)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return False  # let the ai 5 decoder report what is wrong
    return any("content" in message for message in shape.messages)
