"""Cache keys: SHA-256 over the tenant and the whole normalized request.

The key covers everything that can change the answer: the model, every message with every
part (text, images, tool calls, tool results, names), the tools, ``tool_choice`` and every
sampling or output parameter. It is built from *all* the fields of ``ChatRequest`` except
those in ``IGNORED_FIELDS`` (who is asking, not what), so a field added to the request later
changes the key without anyone remembering to add it here. The transport's ``stream`` flag
is not part of ``ChatRequest`` at all: a streamed and a non-streamed request share an entry.

The serialization is canonical: msgspec's JSON with every mapping sorted by key (tool
schemas and ``response_format`` included), content parts tagged with their type, and
``temperature`` / ``top_p`` as floats (so ``0`` and ``0.0`` are one request).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec

from interlock.chat.types import ChatRequest, Message
from interlock.config_file import CacheScope

# Bumped whenever the canonical form changes, so old entries are simply never found again.
KEY_VERSION = 1

# Who is asking and how, not what: never part of the key.
IGNORED_FIELDS = frozenset({"user", "stream", "metadata"})

# Numbers that a client may write as 0 or 0.0 (msgspec keeps JSON integers as int).
_FLOAT_FIELDS = ("temperature", "top_p")


@dataclass(frozen=True, slots=True)
class Tenant:
    """Whose answers an entry may be served to: one user, one team, or everyone."""

    kind: CacheScope
    id: str

    @classmethod
    def resolve(cls, scope: CacheScope, *, user: str, team: str | None = None) -> Tenant:
        """The tenant of a request under the configured ``scope``.

        With ``scope = "team"`` a caller who belongs to no team is its own tenant: an entry
        is never shared more widely than the operator configured.
        """
        if scope == "shared":
            return cls("shared", "")
        if scope == "team" and team:
            return cls("team", team)
        return cls("user", user)


def _message(message: Message) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(message)
    # Tag each part with its type, so two part kinds with look-alike fields never collide.
    body["content"] = [[type(part).__name__, msgspec.to_builtins(part)] for part in message.content]
    return body


def canonical_request(request: ChatRequest) -> dict[str, Any]:
    """The request as plain data, without the ignored fields (see the module doc)."""
    body: dict[str, Any] = {}
    for name in request.__struct_fields__:
        if name in IGNORED_FIELDS:
            continue
        value = getattr(request, name)
        if name == "messages":
            body[name] = [_message(message) for message in value]
        elif name in _FLOAT_FIELDS and value is not None:
            body[name] = float(value)
        else:
            body[name] = msgspec.to_builtins(value)
    return body


def cache_key(request: ChatRequest, tenant: Tenant) -> str:
    """The entry's key: hex SHA-256 of the canonical ``[version, tenant, request]``."""
    payload = msgspec.json.encode(
        [KEY_VERSION, tenant.kind, tenant.id, canonical_request(request)], order="sorted"
    )
    return hashlib.sha256(payload).hexdigest()
