"""OpenAI Chat Completions request body, as msgspec structs, and its translation to the
canonical ``ChatRequest``.

msgspec validates types and bounds while it decodes (one pass, in C); what types cannot say
(roles that need fields, one choice only) is checked in ``to_chat_request``. Unknown fields
are ignored, as OpenAI's own API does for fields it does not use.
"""

from __future__ import annotations

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

NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class TextContent(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class ImageURL(msgspec.Struct):
    url: str
    detail: str | None = None


class ImageContent(msgspec.Struct, tag="image_url", tag_field="type"):
    image_url: ImageURL


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str = ""


class ToolCallIn(msgspec.Struct):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class MessageIn(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContent | ImageContent] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolIn(msgspec.Struct):
    function: FunctionDefinition
    type: Literal["function"] = "function"


class NamedFunction(msgspec.Struct):
    name: str


class NamedToolChoice(msgspec.Struct):
    function: NamedFunction
    type: Literal["function"] = "function"


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class InterlockOptions(msgspec.Struct):
    """The body's ``interlock`` extension object (ignored by OpenAI's own API)."""

    cache: bool | str | None = None  # see docs/cache.md


class ChatCompletionRequest(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    messages: list[MessageIn]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    n: PositiveInt | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[ToolIn] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None
    interlock: InterlockOptions | None = None


decoder = msgspec.json.Decoder(ChatCompletionRequest)

_ROLES = {"developer": "system"}


def _content(message: MessageIn, where: str) -> list[ContentPart]:
    content = message.content
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[ContentPart] = []
    for part in content:
        if isinstance(part, TextContent):
            parts.append(TextPart(part.text))
        else:
            if message.role != "user":
                raise InvalidRequest(
                    f"Image content is only allowed in user messages ({where}).",
                    param=f"{where}.content",
                )
            parts.append(ImagePart(part.image_url.url, part.image_url.detail))
    return parts


def to_chat_request(body: ChatCompletionRequest, max_output_tokens: int) -> ChatRequest:
    """Check what the types cannot, and build the canonical request."""
    if not body.messages:
        raise InvalidRequest("`messages` must contain at least one message.", param="messages")
    if body.n is not None and body.n != 1:
        raise InvalidRequest("Only `n: 1` is supported.", param="n", code="unsupported_value")
    messages: list[Message] = []
    for index, raw in enumerate(body.messages):
        where = f"messages[{index}]"
        if raw.role == "tool" and not raw.tool_call_id:
            raise InvalidRequest(
                f"A tool message needs `tool_call_id` ({where}).", param=f"{where}.tool_call_id"
            )
        if raw.tool_calls and raw.role != "assistant":
            raise InvalidRequest(
                f"Only assistant messages may carry `tool_calls` ({where}).",
                param=f"{where}.tool_calls",
            )
        if raw.content is None and not raw.tool_calls:
            raise InvalidRequest(
                f"A {raw.role} message needs `content` ({where}).", param=f"{where}.content"
            )
        role = _ROLES.get(raw.role, raw.role)
        messages.append(
            Message(
                role=role,  # type: ignore[arg-type]
                content=_content(raw, where),
                tool_calls=[
                    ToolCall(call.id, call.function.name, call.function.arguments)
                    for call in raw.tool_calls or ()
                ],
                tool_call_id=raw.tool_call_id,
                name=raw.name,
            )
        )
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is not None and max_tokens > max_output_tokens:
        raise InvalidRequest(
            f"`max_tokens` is too large: at most {max_output_tokens} is allowed.",
            param="max_completion_tokens" if body.max_completion_tokens else "max_tokens",
            code="invalid_value",
        )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
    if len(stop) > 4:
        raise InvalidRequest("At most 4 stop sequences are allowed.", param="stop")
    tool_choice: str | None
    if isinstance(body.tool_choice, NamedToolChoice):
        tool_choice = body.tool_choice.function.name
    else:
        tool_choice = body.tool_choice
    tools = [
        Tool(tool.function.name, tool.function.description, tool.function.parameters)
        for tool in body.tools or ()
    ]
    if isinstance(body.tool_choice, NamedToolChoice) and tool_choice not in {
        tool.name for tool in tools
    }:
        raise InvalidRequest(
            "`tool_choice` names a tool that is not in `tools`.", param="tool_choice"
        )
    return ChatRequest(
        model=body.model,
        messages=messages,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop,
        seed=body.seed,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=body.response_format,
        user=body.user,
    )


def parse(raw: bytes, max_output_tokens: int) -> tuple[ChatCompletionRequest, ChatRequest]:
    """Decode and validate a request body; raise ``InvalidRequest`` naming what is wrong."""
    try:
        body = decoder.decode(raw)
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
    return body, to_chat_request(body, max_output_tokens)
