"""The canonical, provider-neutral chat model.

Every inbound protocol parses into a ``ChatRequest`` and renders a stream of ``Event``s; every
provider adapter translates a ``ChatRequest`` to its wire format and its wire stream back into
``Event``s. These types are created once per request and once per chunk: ``msgspec.Struct``s
(slotted records built in C, a few times cheaper to make than dataclasses), validated at
the protocol edge and never again.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import msgspec
from msgspec import field

Role: TypeAlias = Literal["system", "user", "assistant", "tool"]
FinishReason: TypeAlias = Literal["stop", "length", "tool_calls", "content_filter", "other"]


class TextPart(msgspec.Struct):
    text: str


class ImagePart(msgspec.Struct):
    """An image by URL (``https:`` or a ``data:`` URL)."""

    url: str
    detail: str | None = None


ContentPart: TypeAlias = TextPart | ImagePart


class ToolCall(msgspec.Struct):
    id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


class Message(msgspec.Struct):
    role: Role
    content: list[ContentPart] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None  # for role "tool": which call this answers
    name: str | None = None

    def text(self) -> str:
        """The message's text parts joined, for providers that take plain strings."""
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


class Tool(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # JSON Schema


class ChatRequest(msgspec.Struct):
    """One chat call, whatever protocol it came in on.

    ``model`` is the public model name the caller asked for; routing maps it to deployments.
    ``tool_choice`` is "auto", "none", "required" or a tool name.
    ``response_format`` keeps OpenAI's shape ({"type": "json_object"} or a json_schema).
    """

    model: str
    messages: list[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # Anthropic's; providers without it leave it out
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    tools: list[Tool] = field(default_factory=list)
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


# ---- stream events -------------------------------------------------------------------------


class TextDelta(msgspec.Struct):
    text: str


class ReasoningDelta(msgspec.Struct):
    text: str


class ToolCallDelta(msgspec.Struct):
    """A piece of a tool call. The first delta of a call carries ``id`` and ``name``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False  # True when the provider reported nothing and we counted

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Finish(msgspec.Struct):
    """How the answer ended. ``stop_sequence`` is the caller's stop sequence that ended it,
    when the provider says which (Anthropic does; OpenAI does not)."""

    reason: FinishReason
    stop_sequence: str | None = None


Event: TypeAlias = TextDelta | ReasoningDelta | ToolCallDelta | Usage | Finish
"""A provider stream is a sequence of these. Failures are raised as ``UpstreamError``s.

A well-formed stream holds any number of deltas, at most one ``Usage`` (it may come before or
after ``Finish``), and exactly one ``Finish``. A stream that ends without ``Finish`` was cut.
"""

CONTENT_EVENTS = (TextDelta, ReasoningDelta, ToolCallDelta)


def is_content(event: Event) -> bool:
    """True for events that carry something the caller sees (the stream commits on these)."""
    if isinstance(event, TextDelta | ReasoningDelta):
        return bool(event.text)
    return isinstance(event, ToolCallDelta)


class ChatResult(msgspec.Struct):
    """A whole answer: a stream collected to the end (non-streaming is one code path)."""

    text: str
    reasoning: str
    tool_calls: list[ToolCall]
    finish_reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None  # see ``Finish``
