"""Anthropic Messages request body, as msgspec structs, and its translation to the canonical
``ChatRequest``.

msgspec validates types, bounds and block tags while it decodes; what types cannot say
(which blocks a role may carry, a ``tool_result`` answering a call that was made, a
``tool_choice`` naming a declared tool) is checked in ``to_chat_request``. Unknown fields
(``cache_control``, ``citations``, ``service_tier``…) are ignored.

The translation:

- ``system`` (a string or text blocks) becomes the first message, role ``system``;
- a user turn's ``tool_result`` blocks become ``tool`` messages (in order, before the rest of
  the turn's text and images, which become one ``user`` message);
- an assistant turn's ``tool_use`` blocks become its ``tool_calls`` (``input`` as JSON
  text); ``thinking`` and ``redacted_thinking`` blocks are dropped (they are the model's
  own notes, which no other provider can take back);
- ``image`` blocks become image parts (base64 sources as ``data:`` URLs);
- ``tool_choice`` ``auto`` / ``any`` / ``none`` / ``tool`` become ``auto`` / ``required`` /
  ``none`` / the tool's name, and ``disable_parallel_tool_use`` turns parallel calls off;
- ``metadata.user_id`` becomes ``user``; ``stop_sequences`` become ``stop``.

Not carried, because the canonical model has no such field: ``thinking`` (accepted and
ignored), ``is_error`` on tool results, ``document`` blocks and server tools (refused with
a 400 that says so).

``anthropic-version``: both the old ``2023-06-01`` and the current ``2026-10-21`` (and any
other date) are accepted, and a missing header means the old one. From ``2026-10-21`` on the
API no longer takes ``temperature``, ``top_p`` or ``top_k``; a request with that version
sending them is refused as Anthropic refuses it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from interlock.chat.types import (
    ChatRequest,
    ContentPart,
    ImagePart,
    Message,
    TextPart,
    Tool,
    ToolCall,
)
from interlock.errors import InvalidRequest

DEFAULT_VERSION = "2023-06-01"
SAMPLING_REMOVED_IN = "2026-10-21"
"""The API version from which ``temperature``, ``top_p`` and ``top_k`` are refused."""

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")

NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


# ---- content blocks --------------------------------------------------------------------------


class TextBlock(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class Base64Source(msgspec.Struct, tag="base64", tag_field="type"):
    media_type: str
    data: str


class URLSource(msgspec.Struct, tag="url", tag_field="type"):
    url: NonEmptyStr


class ImageBlock(msgspec.Struct, tag="image", tag_field="type"):
    source: Base64Source | URLSource


class DocumentBlock(msgspec.Struct, tag="document", tag_field="type"):
    """Accepted by the decoder only to be refused with a clear message."""


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: NonEmptyStr
    name: NonEmptyStr
    input: dict[str, Any]


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: NonEmptyStr
    content: str | list[TextBlock | ImageBlock] | None = None
    is_error: bool = False


class ThinkingBlock(msgspec.Struct, tag="thinking", tag_field="type"):
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(msgspec.Struct, tag="redacted_thinking", tag_field="type"):
    data: str = ""


Block = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
)


class MessageParam(msgspec.Struct):
    role: Literal["user", "assistant"]
    content: str | list[Block]


# ---- tools -----------------------------------------------------------------------------------


class ToolParam(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # "custom", or a server tool such as "web_search_20250305"


class ToolChoiceAuto(msgspec.Struct, tag="auto", tag_field="type"):
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(msgspec.Struct, tag="any", tag_field="type"):
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(msgspec.Struct, tag="tool", tag_field="type"):
    name: NonEmptyStr
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(msgspec.Struct, tag="none", tag_field="type"):
    pass


ToolChoice = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class Metadata(msgspec.Struct):
    user_id: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class ThinkingEnabled(msgspec.Struct, tag="enabled", tag_field="type"):
    budget_tokens: PositiveInt


class ThinkingDisabled(msgspec.Struct, tag="disabled", tag_field="type"):
    pass


class ThinkingAdaptive(msgspec.Struct, tag="adaptive", tag_field="type"):
    pass


class MessagesRequest(msgspec.Struct):
    """The body of ``POST /v1/messages`` (and of ``count_tokens``, which has no
    ``max_tokens`` and no ``stream``: both are optional here and checked by ``parse``)."""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: list[MessageParam]
    max_tokens: PositiveInt | None = None
    system: str | list[TextBlock] | None = None
    stop_sequences: list[NonEmptyStr] | None = None
    stream: bool = False
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, msgspec.Meta(ge=0)] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    thinking: ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive | None = None


decoder = msgspec.json.Decoder(MessagesRequest)


# ---- translation -----------------------------------------------------------------------------


def check_version(value: str | None) -> str:
    """The request's API version: the header's date, or the old default when it is absent."""
    if value is None or not value.strip():
        return DEFAULT_VERSION
    version = value.strip()
    if not _VERSION.fullmatch(version):
        raise InvalidRequest(
            f"anthropic-version: {version[:40]!r} is not a valid version "
            f"(use a date such as {DEFAULT_VERSION!r}).",
            param="anthropic-version",
        )
    return version


def _image(block: ImageBlock, where: str) -> ImagePart:
    source = block.source
    if isinstance(source, URLSource):
        if not source.url.startswith(("https://", "http://")):
            raise InvalidRequest(
                f"{where}.source.url: an image URL must start with https:// or http://.",
                param=f"{where}.source.url",
            )
        return ImagePart(source.url)
    if source.media_type not in IMAGE_MEDIA_TYPES:
        allowed = ", ".join(sorted(IMAGE_MEDIA_TYPES))
        raise InvalidRequest(
            f"{where}.source.media_type: {source.media_type[:40]!r} is not supported "
            f"(use one of {allowed}).",
            param=f"{where}.source.media_type",
        )
    if not source.data:
        raise InvalidRequest(
            f"{where}.source.data: the image data is empty.", param=f"{where}.source.data"
        )
    return ImagePart(f"data:{source.media_type};base64,{source.data}")


def _tool_result(block: ToolResultBlock, where: str) -> Message:
    parts: list[ContentPart] = []
    if isinstance(block.content, str):
        parts.append(TextPart(block.content))
    else:
        for index, item in enumerate(block.content or ()):
            if isinstance(item, TextBlock):
                parts.append(TextPart(item.text))
            else:
                parts.append(_image(item, f"{where}.content[{index}]"))
    return Message(role="tool", content=parts, tool_call_id=block.tool_use_id)


def _refuse_block(role: str, kind: str, where: str) -> InvalidRequest:
    return InvalidRequest(
        f"{where}.type: a {role} message cannot contain a `{kind}` block.",
        param=f"{where}.type",
    )


def _user_turn(message: MessageParam, where: str, open_calls: set[str], out: list[Message]) -> None:
    if isinstance(message.content, str):
        out.append(Message(role="user", content=[TextPart(message.content)]))
        return
    parts: list[ContentPart] = []
    for index, block in enumerate(message.content):
        at = f"{where}.content[{index}]"
        if isinstance(block, TextBlock):
            parts.append(TextPart(block.text))
        elif isinstance(block, ImageBlock):
            parts.append(_image(block, at))
        elif isinstance(block, ToolResultBlock):
            if block.tool_use_id not in open_calls:
                raise InvalidRequest(
                    f"{at}.tool_use_id: {block.tool_use_id[:64]!r} does not answer a "
                    "`tool_use` block of the previous assistant message.",
                    param=f"{at}.tool_use_id",
                )
            out.append(_tool_result(block, at))
        elif isinstance(block, DocumentBlock):
            raise InvalidRequest(
                f"{at}.type: `document` blocks are not supported; send the text as a `text` block.",
                param=f"{at}.type",
            )
        elif isinstance(block, ToolUseBlock):
            raise _refuse_block("user", "tool_use", at)
        # thinking blocks in a user turn carry nothing the model can use: dropped.
    if parts:
        out.append(Message(role="user", content=parts))


def _assistant_turn(message: MessageParam, where: str, out: list[Message]) -> set[str]:
    """Append the turn; return the ids of the tool calls it made."""
    if isinstance(message.content, str):
        out.append(Message(role="assistant", content=[TextPart(message.content)]))
        return set()
    parts: list[ContentPart] = []
    calls: list[ToolCall] = []
    for index, block in enumerate(message.content):
        at = f"{where}.content[{index}]"
        if isinstance(block, TextBlock):
            parts.append(TextPart(block.text))
        elif isinstance(block, ToolUseBlock):
            calls.append(ToolCall(block.id, block.name, msgspec.json.encode(block.input).decode()))
        elif isinstance(block, ImageBlock):
            raise _refuse_block("assistant", "image", at)
        elif isinstance(block, ToolResultBlock):
            raise _refuse_block("assistant", "tool_result", at)
        elif isinstance(block, DocumentBlock):
            raise _refuse_block("assistant", "document", at)
        # thinking / redacted_thinking: dropped (see the module docstring).
    out.append(Message(role="assistant", content=parts, tool_calls=calls))
    return {call.id for call in calls}


def _system(system: str | list[TextBlock] | None) -> list[Message]:
    if system is None:
        return []
    if isinstance(system, str):
        return [Message(role="system", content=[TextPart(system)])] if system else []
    parts: list[ContentPart] = [TextPart(block.text) for block in system if block.text]
    return [Message(role="system", content=parts)] if parts else []


def _tools(tools: list[ToolParam] | None) -> list[Tool]:
    out: list[Tool] = []
    for index, tool in enumerate(tools or ()):
        where = f"tools[{index}]"
        if tool.type is not None and tool.type != "custom":
            raise InvalidRequest(
                f"{where}.type: server tools such as {tool.type[:64]!r} are not supported; "
                "declare a custom tool with `name` and `input_schema`.",
                param=f"{where}.type",
            )
        if tool.input_schema is None:
            raise InvalidRequest(
                f"{where}.input_schema: Field required.", param=f"{where}.input_schema"
            )
        out.append(Tool(tool.name, tool.description, tool.input_schema))
    return out


def _tool_choice(choice: ToolChoice | None, tools: list[Tool]) -> tuple[str | None, bool | None]:
    """The canonical ``tool_choice`` and ``parallel_tool_calls``."""
    if choice is None:
        return None, None
    if isinstance(choice, ToolChoiceNone):
        return ("none" if tools else None), None
    parallel = False if choice.disable_parallel_tool_use else None
    if isinstance(choice, ToolChoiceAuto):
        return ("auto" if tools else None), parallel
    if not tools:
        raise InvalidRequest(
            "tool_choice: a tool must be used, but `tools` is empty.", param="tool_choice"
        )
    if isinstance(choice, ToolChoiceAny):
        return "required", parallel
    if choice.name not in {tool.name for tool in tools}:
        raise InvalidRequest(
            f"tool_choice.name: {choice.name[:128]!r} is not one of the `tools`.",
            param="tool_choice.name",
        )
    return choice.name, parallel


def to_chat_request(
    body: MessagesRequest,
    max_output_tokens: int,
    *,
    version: str = DEFAULT_VERSION,
    require_max_tokens: bool = True,
) -> ChatRequest:
    """Check what the types cannot, and build the canonical request."""
    if not body.messages:
        raise InvalidRequest("messages: at least one message is required.", param="messages")
    if body.max_tokens is None and require_max_tokens:
        raise InvalidRequest("max_tokens: Field required.", param="max_tokens")
    if body.max_tokens is not None and body.max_tokens > max_output_tokens:
        raise InvalidRequest(
            f"max_tokens: {body.max_tokens} is too large: at most {max_output_tokens} is allowed.",
            param="max_tokens",
        )
    if version >= SAMPLING_REMOVED_IN:
        for name in ("temperature", "top_p", "top_k"):
            if getattr(body, name) is not None:
                raise InvalidRequest(
                    f"{name}: not supported with anthropic-version {version}; "
                    f"send anthropic-version {DEFAULT_VERSION} to use it.",
                    param=name,
                )
    messages = _system(body.system)
    open_calls: set[str] = set()
    for index, raw in enumerate(body.messages):
        where = f"messages[{index}]"
        if isinstance(raw.content, list) and not raw.content:
            raise InvalidRequest(
                f"{where}.content: a message needs at least one content block.",
                param=f"{where}.content",
            )
        if raw.role == "user":
            _user_turn(raw, where, open_calls, messages)
            open_calls = set()
        else:
            open_calls = _assistant_turn(raw, where, messages)
    tools = _tools(body.tools)
    tool_choice, parallel = _tool_choice(body.tool_choice, tools)
    return ChatRequest(
        model=body.model,
        messages=messages,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=list(body.stop_sequences or ()),
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        user=body.metadata.user_id if body.metadata is not None else None,
    )


def _validation_error(exc: msgspec.ValidationError) -> InvalidRequest:
    """msgspec's message, rewritten to name the field first, as Anthropic's errors do."""
    message = str(exc)
    problem, _, path = message.partition(" - at `$")
    path = path.rstrip("`").lstrip(".")
    missing = re.fullmatch(r"Object missing required field `(.+)`", problem)
    if missing:
        path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        problem = "Field required"
    if not path:
        return InvalidRequest(f"Invalid request body: {problem}.")
    return InvalidRequest(f"{path}: {problem}.", param=path)


def parse(
    raw: bytes,
    max_output_tokens: int,
    *,
    version: str = DEFAULT_VERSION,
    require_max_tokens: bool = True,
) -> tuple[MessagesRequest, ChatRequest]:
    """Decode and validate a request body; raise ``InvalidRequest`` naming what is wrong."""
    try:
        body = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _validation_error(exc) from None
    except msgspec.DecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
    chat = to_chat_request(
        body, max_output_tokens, version=version, require_max_tokens=require_max_tokens
    )
    return body, chat
