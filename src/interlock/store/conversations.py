"""``ConversationStore``: each user's AI SDK chats, as ``UIMessage`` lists in JSON.

A turn is stored when its answer is complete, in one transaction: the request's messages (the
client's history, with the new user message, or an assistant message the client added tool
results to) and the answer are merged into what is stored by message id (``merge_turn``); a
regenerated answer replaces the assistant message it regenerates. Every read and write is
scoped to its owner: another user's chat id is simply not found. Turns of one conversation are
written one at a time across instances.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from interlock.store.database import Database, begin_exclusive
from interlock.store.models import Conversation, utc_now

UIMessage = dict[str, Any]
TITLE_LENGTH = 100


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    id: str
    title: str
    message_count: int
    size_bytes: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    summary: ConversationSummary
    messages: list[UIMessage]


def json_size(messages: list[UIMessage]) -> int:
    """The size of ``messages`` as stored (compact JSON), in bytes."""
    return len(msgspec.json.encode(messages))


def _upsert(messages: list[UIMessage], message: UIMessage) -> None:
    """Replace the message with ``message``'s id in place, or append it."""
    message_id = message.get("id")
    if message_id:
        for index, existing in enumerate(messages):
            if existing.get("id") == message_id:
                messages[index] = message
                return
    messages.append(message)


def merge_turn(
    stored: list[UIMessage],
    incoming: Sequence[UIMessage],
    answer: UIMessage | None,
    *,
    regenerate: bool = False,
    regenerated_id: str | None = None,
) -> list[UIMessage]:
    """What a conversation holds after a turn.

    ``regenerate`` drops the assistant message being regenerated (``regenerated_id``, or the
    last message if it is an assistant's) and everything after it. Then each of the request's
    messages, and the answer, takes the place of the stored message with the same id, or is
    appended.
    """
    messages = list(stored)
    if regenerate:
        ids = [message.get("id") for message in messages]
        if regenerated_id is not None and regenerated_id in ids:
            del messages[ids.index(regenerated_id) :]
        elif messages and messages[-1].get("role") == "assistant":
            messages.pop()
    for message in incoming:
        _upsert(messages, message)
    if answer is not None:
        _upsert(messages, answer)
    return messages


def title_of(messages: list[UIMessage]) -> str:
    """The first user text, shortened: what a chat list shows."""
    for message in messages:
        if message.get("role") != "user":
            continue
        for part in message.get("parts") or ():
            if isinstance(part, dict) and part.get("type") == "text":
                text = " ".join(str(part.get("text", "")).split())
                if text:
                    return text if len(text) <= TITLE_LENGTH else text[: TITLE_LENGTH - 1] + "…"
    return ""


def _lock_id(user_id: str, chat_id: str) -> int:
    """A 64-bit advisory lock number for one conversation (PostgreSQL takes it signed)."""
    digest = hashlib.blake2b(f"conversation\0{user_id}\0{chat_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _summary(row: Conversation) -> ConversationSummary:
    return ConversationSummary(
        id=row.id,
        title=row.title,
        message_count=row.message_count,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


_SUMMARY_COLUMNS = (
    Conversation.id,
    Conversation.title,
    Conversation.message_count,
    Conversation.size_bytes,
    Conversation.created_at,
    Conversation.updated_at,
)


class ConversationStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def get(self, user_id: str, chat_id: str) -> ConversationRecord | None:
        async with self._database.session() as session:
            row = await session.get(Conversation, (user_id, chat_id))
            if row is None:
                return None
            return ConversationRecord(_summary(row), list(row.messages))

    async def list(self, user_id: str, *, limit: int, offset: int = 0) -> list[ConversationSummary]:
        """The user's conversations, the most recently updated first."""
        query = (
            select(*_SUMMARY_COLUMNS)
            .where(Conversation.user_id == user_id)
            .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
            .limit(limit)
            .offset(offset)
        )
        async with self._database.session() as session:
            rows = (await session.execute(query)).all()
        return [ConversationSummary(*row) for row in rows]

    async def delete(self, user_id: str, chat_id: str) -> bool:
        """Delete one conversation; False if the user has none with this id."""
        statement = delete(Conversation).where(
            Conversation.user_id == user_id, Conversation.id == chat_id
        )
        async with self._database.session() as session, session.begin():
            result = await session.execute(statement)
        return bool(getattr(result, "rowcount", 0))

    async def save_turn(
        self,
        user_id: str,
        chat_id: str,
        incoming: Sequence[UIMessage],
        answer: UIMessage,
        *,
        regenerate: bool = False,
        regenerated_id: str | None = None,
    ) -> ConversationRecord:
        """Merge one finished turn into the conversation (created on its first turn)."""
        async with self._database.session() as session, session.begin():
            await self._lock(session, user_id, chat_id)
            row = await session.get(Conversation, (user_id, chat_id), populate_existing=True)
            stored = list(row.messages) if row is not None else []
            messages = merge_turn(
                stored, incoming, answer, regenerate=regenerate, regenerated_id=regenerated_id
            )
            now = utc_now()
            if row is None:
                row = Conversation(user_id=user_id, id=chat_id, created_at=now)
                session.add(row)
            row.messages = messages
            row.title = title_of(messages)
            row.message_count = len(messages)
            row.size_bytes = json_size(messages)
            row.updated_at = now
        return ConversationRecord(_summary(row), messages)

    async def _lock(self, session: AsyncSession, user_id: str, chat_id: str) -> None:
        connection = await session.connection()
        await begin_exclusive(connection, _lock_id(user_id, chat_id))
