"""Test infrastructure that ships with Interlock, shared by the test suite and ``bench/``.

``FakeUpstream`` is a real HTTP server on loopback speaking OpenAI's and Anthropic's wire
formats, with scriptable per-request behaviours and faults and a ledger of what it served.
"""

from interlock.testing.fake_behavior import Behavior, ToolCallReply
from interlock.testing.fake_ledger import ServedRequest
from interlock.testing.fake_reply import (
    count_prompt_tokens,
    default_text,
    default_tokens,
    split_words,
)
from interlock.testing.fake_server import FakeUpstream

__all__ = [
    "Behavior",
    "FakeUpstream",
    "ServedRequest",
    "ToolCallReply",
    "count_prompt_tokens",
    "default_text",
    "default_tokens",
    "split_words",
]
