"""Anthropic's stop reasons and the canonical finish reasons, both ways.

Shared by the Anthropic provider adapter (wire → canonical) and the Anthropic Messages
inbound protocol (canonical → wire), so that the two sides cannot drift apart.
"""

from __future__ import annotations

from interlock.chat.types import FinishReason

FROM_ANTHROPIC: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "other",
}
"""Every stop reason of the Messages API; an unknown one is ``other``."""

TO_ANTHROPIC: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    # "other" has no counterpart (OpenAI's function_call, a paused turn…): the turn ended.
    "other": "end_turn",
}
