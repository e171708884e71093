"""The conversation store on SQLite and a real PostgreSQL server: turns merged in place,
regenerated answers replacing the old one, lists newest first, and every access scoped to the
conversation's owner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from interlock.store.conversations import ConversationStore, json_size, merge_turn, title_of
from interlock.store.database import Database
from interlock.store.migrate import prepare
from interlock.store.models import Base
from interlock.store.users import UserStore
from tests.fixtures.databases import backend_fixture, database_url_fixture  # noqa: F401
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def message(id: str, role: str, text: str) -> dict[str, Any]:
    return {"id": id, "role": role, "parts": [{"type": "text", "text": text}]}


U1, A1 = message("u1", "user", "Hello"), message("a1", "assistant", "Hi!")
U2, A2 = message("u2", "user", "More"), message("a2", "assistant", "Sure.")


# ---- the merge rules, without a database ---------------------------------------------------


def test_a_submitted_turn_appends_the_user_message_and_the_answer() -> None:
    assert merge_turn([], [U1], A1) == [U1, A1]
    assert merge_turn([U1, A1], [U2], A2) == [U1, A1, U2, A2]


def test_the_clients_whole_history_is_merged_by_id() -> None:
    assert merge_turn([], [U1, A1, U2], A2) == [U1, A1, U2, A2]
    assert merge_turn([U1, A1], [U1, A1, U2], A2) == [U1, A1, U2, A2]
    # the regenerated answer is gone from the client's history; the server drops it too
    new = message("a3", "assistant", "Hello!")
    assert merge_turn([U1, A1], [U1], new, regenerate=True) == [U1, new]


def test_a_resent_message_replaces_the_stored_one_with_its_id() -> None:
    edited = message("u1", "user", "Hello again")
    assert merge_turn([U1, A1], [edited], None) == [edited, A1]
    # an assistant message the client added tool results to, continued by the answer
    continued = message("a1", "assistant", "Hi! And more.")
    assert merge_turn([U1, A1], [A1], continued) == [U1, continued]


def test_regenerate_replaces_the_last_assistant_message() -> None:
    new = message("a3", "assistant", "Hello!")
    assert merge_turn([U1, A1], [U1], new, regenerate=True) == [U1, new]
    assert merge_turn([U1, A1, U2, A2], [U2], new, regenerate=True) == [U1, A1, U2, new]


def test_regenerate_with_a_message_id_drops_it_and_what_follows() -> None:
    new = message("a3", "assistant", "Hello!")
    stored = [U1, A1, U2, A2]
    assert merge_turn(stored, [U1], new, regenerate=True, regenerated_id="a1") == [U1, new]


def test_regenerate_after_a_user_message_keeps_it() -> None:
    assert merge_turn([U1], [U1], A1, regenerate=True) == [U1, A1]


def test_title_is_the_first_user_text_shortened() -> None:
    assert title_of([A1, message("u", "user", "  What   is\nthis? ")]) == "What is this?"
    long = title_of([message("u", "user", "x" * 500)])
    assert len(long) == 100 and long.endswith("…")
    assert title_of([A1]) == ""


# ---- against the databases -----------------------------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await prepare(database)
    try:
        yield database
    finally:
        await database.aclose()


@pytest.fixture
def store(db: Database) -> ConversationStore:
    return ConversationStore(db)


@pytest.fixture
async def owners(db: Database) -> tuple[str, str]:
    users = UserStore(db)
    return (await users.create("ada")).id, (await users.create("bob")).id


@pytest.mark.anyio
async def test_the_conversations_table_matches_its_migration(db: Database) -> None:
    def differences(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with db.engine.connect() as conn:
        assert await conn.run_sync(differences) == []


@pytest.mark.anyio
async def test_turns_are_stored_and_read_back(
    store: ConversationStore, owners: tuple[str, str]
) -> None:
    ada, _ = owners
    first = await store.save_turn(ada, "chat-1", [U1], A1)
    assert first.messages == [U1, A1]
    assert first.summary.title == "Hello"
    second = await store.save_turn(ada, "chat-1", [U2], A2)
    assert second.summary.created_at == first.summary.created_at
    assert second.summary.updated_at >= first.summary.updated_at
    record = await store.get(ada, "chat-1")
    assert record is not None
    assert record.messages == [U1, A1, U2, A2]
    assert record.summary.message_count == 4
    assert record.summary.size_bytes == json_size([U1, A1, U2, A2])
    regenerated = message("a9", "assistant", "Of course.")
    await store.save_turn(ada, "chat-1", [U2], regenerated, regenerate=True)
    record = await store.get(ada, "chat-1")
    assert record is not None and record.messages == [U1, A1, U2, regenerated]


@pytest.mark.anyio
async def test_another_users_conversation_does_not_exist_for_them(
    store: ConversationStore, owners: tuple[str, str]
) -> None:
    ada, bob = owners
    await store.save_turn(ada, "shared-id", [U1], A1)
    assert await store.get(bob, "shared-id") is None
    assert await store.list(bob, limit=10) == []
    assert await store.delete(bob, "shared-id") is False
    # the same chat id is a different conversation of bob's
    await store.save_turn(bob, "shared-id", [U2], A2)
    ada_record = await store.get(ada, "shared-id")
    bob_record = await store.get(bob, "shared-id")
    assert ada_record is not None and ada_record.messages == [U1, A1]
    assert bob_record is not None and bob_record.messages == [U2, A2]
    assert await store.delete(ada, "shared-id") is True
    assert await store.get(ada, "shared-id") is None
    assert await store.get(bob, "shared-id") is not None


@pytest.mark.anyio
async def test_lists_are_newest_first_and_paginated(
    store: ConversationStore, owners: tuple[str, str]
) -> None:
    ada, _ = owners
    for name in ("one", "two", "three"):
        await store.save_turn(ada, name, [message(f"u-{name}", "user", name)], A1)
    await store.save_turn(ada, "one", [U2], A2)  # updated last: now the newest
    listed = await store.list(ada, limit=10)
    assert [item.id for item in listed] == ["one", "three", "two"]
    assert [item.title for item in listed] == ["one", "three", "two"]
    assert [item.id for item in await store.list(ada, limit=2, offset=1)] == ["three", "two"]
    assert await store.list(ada, limit=2, offset=3) == []


@pytest.mark.anyio
async def test_concurrent_turns_of_one_conversation_lose_nothing(
    store: ConversationStore, owners: tuple[str, str]
) -> None:
    ada, _ = owners

    async def turn(number: int) -> None:
        user = message(f"u{number}", "user", f"q{number}")
        await store.save_turn(ada, "busy", [user], message(f"a{number}", "assistant", "a"))

    async with anyio.create_task_group() as group:
        for number in range(6):
            group.start_soon(turn, number)
    record = await store.get(ada, "busy")
    assert record is not None
    assert sorted(m["id"] for m in record.messages) == sorted(
        [f"u{n}" for n in range(6)] + [f"a{n}" for n in range(6)]
    )


@pytest.mark.anyio
async def test_a_users_conversations_go_with_the_user(
    db: Database, store: ConversationStore, owners: tuple[str, str]
) -> None:
    ada, _ = owners
    await store.save_turn(ada, "c", [U1], A1)
    async with db.engine.begin() as conn:
        await conn.execute(text("DELETE FROM users WHERE id = :id"), {"id": ada})
    assert await store.get(ada, "c") is None
