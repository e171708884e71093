"""What the fake upstream answers, independent of the wire protocol.

The reply is deterministic so that tests can predict it:

* By default it is ``tokens`` word tokens cycling through ``"Hello", " from", " the",
  " fake", " upstream"`` (then ``" Hello"`` again…): 5 tokens read
  ``"Hello from the fake upstream"``; see ``default_text``.
* ``Behavior.text`` is split into word tokens, each word with the whitespace before it
  (``"a b"`` → ``["a", " b"]``); ``Behavior.echo`` does the same with the text of the last user
  message.
* A request's ``max_tokens`` / ``max_completion_tokens`` caps the text tokens, and the finish
  reason becomes ``length``.
* Tool-call arguments stream in fragments of ``TOOL_FRAGMENT_CHARS`` characters.
* ``prompt_tokens`` is the sum, over the request's messages (plus Anthropic's ``system``, which
  counts as one message), of 1 + the number of whitespace-separated words in the message's
  text (a string content, or the ``text`` of its parts and of tool results' contents).
  ``completion_tokens`` is the number of content chunks: text tokens + argument fragments.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from interlock.testing.fake_behavior import Behavior, ToolCallReply
from interlock.testing.fake_ledger import ProtocolName

TOOL_FRAGMENT_CHARS = 8
_WORD = re.compile(r"\s*\S+")
_DEFAULT_CYCLE = (" Hello", " from", " the", " fake", " upstream")

Headers = list[tuple[bytes, bytes]]


@functools.lru_cache(maxsize=128)
def default_tokens(count: int) -> tuple[str, ...]:
    """The default reply of ``count`` word tokens."""
    tokens = [_DEFAULT_CYCLE[i % len(_DEFAULT_CYCLE)] for i in range(count)]
    if tokens:
        tokens[0] = tokens[0].lstrip()
    return tuple(tokens)


def default_text(count: int = 5) -> str:
    """The text of the default reply of ``count`` tokens (``"Hello from the fake upstream"``)."""
    return "".join(default_tokens(count))


def split_words(text: str) -> list[str]:
    """Split text into word tokens, each carrying the whitespace before it."""
    return _WORD.findall(text)


def text_of(content: Any) -> str:
    """The plain text of a message content in either protocol (string or list of parts)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    pieces: list[str] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            pieces.append(text)
        elif "content" in part:  # Anthropic tool_result blocks nest their own content
            pieces.append(text_of(part["content"]))
    return " ".join(pieces)


def count_prompt_tokens(messages: Any, system: Any = None) -> int:
    """The fake's documented prompt-token count (see the module docstring)."""
    total = 0
    if system is not None:
        total += 1 + len(text_of(system).split())
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            total += 1 + len(text_of(content).split())
    return total


def last_user_text(messages: Any) -> str:
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return text_of(message.get("content"))
    return ""


def tool_fragments(arguments: str) -> list[str]:
    step = TOOL_FRAGMENT_CHARS
    return [arguments[i : i + step] for i in range(0, len(arguments), step)] or [""]


def find_header(headers: Headers, name: bytes) -> bytes | None:
    """The value of a header (names are lowercase in ASGI scopes)."""
    for key, value in headers:
        if key == name:
            return value
    return None


class BadRequest(Exception):
    """The request cannot be answered: the fake replies 400 in the protocol's shape."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(slots=True)
class ChatView:
    """The facts of a chat request that the reply depends on, read by the protocol's parser."""

    model: str
    stream: bool
    stream_usage: bool  # OpenAI: stream_options.include_usage; Anthropic: always
    max_tokens: int | None
    messages: Any
    system: Any = None
    stop_sequences: Any = None  # Anthropic's, to name the one that "stopped" the reply


@dataclass(slots=True)
class Reply:
    """The planned reply: what to say, why it ends, and the usage to report."""

    tokens: Sequence[str]
    tool_call: ToolCallReply | None
    fragments: Sequence[str]  # the tool call's arguments, in streaming fragments
    finish_reason: str  # OpenAI vocabulary; the Anthropic wire maps it
    prompt_tokens: int
    include_usage: bool

    @property
    def chunk_count(self) -> int:
        """Number of content chunks, which is also the completion-token count."""
        return len(self.tokens) + len(self.fragments)

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def plan_reply(behavior: Behavior, view: ChatView) -> Reply:
    """Decide the reply to ``view`` under ``behavior``."""
    tokens: Sequence[str]
    if behavior.echo:
        tokens = split_words(last_user_text(view.messages))
    elif behavior.text is not None:
        tokens = split_words(behavior.text)
    elif behavior.tool_call is not None:
        tokens = ()
    else:
        tokens = default_tokens(behavior.tokens)
    finish_reason = "stop"
    if view.max_tokens is not None and len(tokens) > view.max_tokens:
        tokens = tokens[: view.max_tokens]
        finish_reason = "length"
    tool_call = behavior.tool_call
    fragments: Sequence[str] = ()
    if tool_call is not None:
        fragments = tool_fragments(tool_call.arguments)
        finish_reason = "tool_calls"
    return Reply(
        tokens=tokens,
        tool_call=tool_call,
        fragments=fragments,
        finish_reason=behavior.finish_reason or finish_reason,
        prompt_tokens=(
            count_prompt_tokens(view.messages, view.system) if behavior.include_usage else 0
        ),
        include_usage=behavior.include_usage,
    )


@dataclass(slots=True)
class RenderedStream:
    """A streaming reply as wire bytes: sent as preamble, one write per step, closing."""

    preamble: bytes
    steps: list[bytes]
    closing: bytes


class Wire(Protocol):
    """One provider's wire format, as the fake upstream speaks it."""

    name: ProtocolName
    request_id_header: bytes

    def parse(self, doc: Any, headers: Headers) -> ChatView:
        """Read a decoded request body; raise ``BadRequest`` when it is not acceptable."""
        ...

    def key_matches(self, headers: Headers, key: str) -> bool: ...

    def error_body(
        self,
        status: int,
        request_id: str,
        *,
        error_type: str | None = None,
        message: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> bytes:
        """An error body for ``status``, with the provider's usual type and message unless
        overridden (``code`` and ``param`` exist in OpenAI's shape only)."""
        ...

    def response_body(self, view: ChatView, reply: Reply, seq: int) -> bytes: ...

    def render_stream(self, view: ChatView, reply: Reply, seq: int) -> RenderedStream: ...

    def stream_error(self, behavior: Behavior) -> bytes: ...

    def malformed_event(self) -> bytes: ...

    def models_body(self, models: Sequence[str]) -> bytes: ...
