"""A user's export and erasure against real databases (SQLite and PostgreSQL): the export
holds the user's own data and nothing of anyone else's, is streamed in bounded memory, and
an erasure removes or anonymises everything of the user in one go, audited, idempotent."""

from __future__ import annotations

import gc
import io
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from interlock.errors import InvalidRequest, NotFound
from interlock.privacy.erasure import ERASED, erase_user
from interlock.privacy.export import sealed_export
from interlock.privacy.sealed import ScryptParams, open_export, passphrase_key
from interlock.store.conversations import ConversationStore
from interlock.store.database import Database
from interlock.store.keys import KeyStore
from interlock.store.migrate import prepare
from interlock.store.models import ApiKey, AuditEntry, Conversation, UsageRow, User
from interlock.store.users import UserStore
from tests.fixtures.databases import backend_fixture, database_url_fixture  # noqa: F401
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401

pytestmark = pytest.mark.anyio

SECRET = b"test-server-secret-0123456789abcdef"
PASSPHRASE = "a long enough passphrase"
FAST = ScryptParams(log2_n=10)
T0 = datetime(2030, 3, 1, tzinfo=UTC)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        await prepare(database)
        yield database
    finally:
        await database.aclose()


def usage_row(request_id: str, user_id: str | None, key_id: str | None, n: int) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "created_at": T0 + timedelta(seconds=n),
        "user_id": user_id,
        "key_id": key_id,
        "tier": "free",
        "model": "smart",
        "provider": "openai",
        "deployment": "openai:gpt",
        "input_tokens": 10 + n % 7,
        "output_tokens": 5,
        "cached_tokens": 0,
        "cost": Decimal("0.0012345"),
        "latency_ms": 100,
        "ttft_ms": 20,
        "status": 200,
        "error": None,
        "cache_hit": False,
        "attempts": 1,
        "streaming": True,
        "usage_source": "provider",
        "partial": False,
    }


async def add_usage(db: Database, rows: list[dict[str, Any]]) -> None:
    """Core executemany: fast enough for 100,000 rows."""
    async with db.engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            await conn.execute(insert(UsageRow), rows[start : start + 10_000])


async def twins(db: Database) -> tuple[dict[str, str], dict[str, str]]:
    """Two users with look-alike data: names, keys and usage rows."""
    users, keys, chats = UserStore(db), KeyStore(db, SECRET), ConversationStore(db)
    made = []
    for name in ("Ada Lovelace", "Ada Byron"):
        user = await users.create(name, email=f"{name.split()[1].lower()}@example.com")
        row, _plaintext = await keys.create_key(user.id, name="laptop")
        # the same chat id for both: a chat id is unique per user only
        question = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": f"I am {name}"}]}
        answer = {"id": "m2", "role": "assistant", "parts": [{"type": "text", "text": "Hello"}]}
        await chats.save_turn(user.id, "chat-1", [question], answer)
        await add_usage(db, [usage_row(f"{user.id[:8]}-{n}", user.id, row.id, n) for n in range(3)])
        made.append({"id": user.id, "key": row.id, "name": name})
    return made[0], made[1]


async def export_of(db: Database, user_id: str) -> dict[str, Any]:
    key = passphrase_key(PASSPHRASE, FAST)
    sealed = b"".join([piece async for piece in sealed_export(db, user_id, key, now=T0)])
    out = io.BytesIO()
    trailer = open_export(io.BytesIO(sealed), out, passphrase=PASSPHRASE)
    document: dict[str, Any] = json.loads(out.getvalue())
    assert trailer.user_id == user_id
    sections = ("keys", "conversations", "usage")
    assert trailer.counts == {name: len(document[name]) for name in sections} | {"profile": 1}
    return document


async def test_an_export_holds_the_users_data_and_nothing_of_anyone_else(db: Database) -> None:
    ada, byron = await twins(db)
    document = await export_of(db, ada["id"])
    assert (document["format"], document["version"], document["user_id"]) == (
        "interlock-export",
        1,
        ada["id"],
    )
    assert document["exported_at"] == T0.isoformat()
    assert document["profile"]["name"] == "Ada Lovelace"
    assert document["profile"]["email"] == "lovelace@example.com"
    [key] = document["keys"]
    assert (key["id"], key["name"]) == (ada["key"], "laptop")
    assert "key_hash" not in key and key["short_id"].startswith("il_")
    [chat] = document["conversations"]
    assert (chat["id"], chat["message_count"]) == ("chat-1", 2)
    assert chat["messages"][0]["parts"][0]["text"] == "I am Ada Lovelace"
    assert [row["request_id"] for row in document["usage"]] == [
        f"{ada['id'][:8]}-{n}" for n in range(3)
    ]
    assert {row["key_id"] for row in document["usage"]} == {ada["key"]}
    text = json.dumps(document)
    for foreign in (byron["id"], byron["key"], "Byron", "byron@"):
        assert foreign not in text


async def test_an_unknown_user_has_no_export(db: Database) -> None:
    key = passphrase_key(PASSPHRASE, FAST)
    with pytest.raises(NotFound):
        [piece async for piece in sealed_export(db, "0" * 32, key)]


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_100k_usage_rows_are_exported_in_bounded_memory(db: Database) -> None:
    user = await UserStore(db).create("Heavy User")
    total = 100_000
    for start in range(0, total, 10_000):  # never all the rows in memory here either
        rows = [usage_row(f"r{n:06d}", user.id, "k", n) for n in range(start, start + 10_000)]
        await add_usage(db, rows)
    del rows
    key = passphrase_key(PASSPHRASE, FAST)
    counts: dict[str, int] = {}
    sealed_bytes = 0
    gc.collect()
    before = peak = resident_bytes()
    async for piece in sealed_export(db, user.id, key, counts=counts):
        sealed_bytes += len(piece)  # sent on at once, as the HTTP route does
        peak = max(peak, resident_bytes())
    assert counts == {"profile": 1, "keys": 0, "conversations": 0, "usage": total}
    # The document is ~37 MB of JSON; the rows read at once take ~115 MB more here.
    assert peak - before < 30 * 1024 * 1024, f"grew by {(peak - before) / 1e6:.1f} MB"
    assert sealed_bytes > 100_000


async def test_erasure_removes_the_user_and_keeps_anonymous_totals(db: Database) -> None:
    ada, byron = await twins(db)
    erasure = await erase_user(db, ada["id"], actor="cli:test@host", now=T0)
    assert erasure.counts == {
        "keys_deleted": 1,
        "conversations_deleted": 1,
        "usage_rows_anonymised": 3,
    }
    assert not erasure.already
    async with db.engine.connect() as conn:
        assert await conn.scalar(select(User.id).where(User.id == ada["id"])) is None
        assert await conn.scalar(select(ApiKey.id).where(ApiKey.user_id == ada["id"])) is None
        owners = await conn.scalars(select(Conversation.user_id))
        assert list(owners) == [byron["id"]]
        anonymous = (
            await conn.execute(
                select(UsageRow.user_id, UsageRow.key_id, UsageRow.cost).where(
                    UsageRow.request_id.like(f"{ada['id'][:8]}-%")
                )
            )
        ).all()
        assert [(row.user_id, row.key_id) for row in anonymous] == [(ERASED, None)] * 3
        assert sum(row.cost for row in anonymous) == Decimal("0.0037035")  # the bill stays
        # the other user is untouched
        assert await conn.scalar(select(User.name).where(User.id == byron["id"])) == "Ada Byron"
        assert (
            await conn.scalar(
                select(func.count()).select_from(UsageRow).where(UsageRow.user_id == byron["id"])
            )
            == 3
        )
        [entry] = (await conn.execute(select(AuditEntry))).all()
    assert (entry.actor, entry.action, entry.subject) == ("cli:test@host", "user.erased", ada["id"])
    assert entry.at == T0
    assert entry.details == erasure.counts
    assert "Lovelace" not in json.dumps(entry.details) and "lovelace" not in entry.actor


async def test_erasure_is_idempotent_and_catches_late_usage_rows(db: Database) -> None:
    ada, _byron = await twins(db)
    first = await erase_user(db, ada["id"], actor="user:" + ada["id"])
    # a gateway's ledger writes a row of the erased user after the erasure
    await add_usage(db, [usage_row("late-1", ada["id"], ada["key"], 99)])
    again = await erase_user(db, ada["id"], actor="cli:retry")
    assert again.already and again.counts == first.counts and again.at == first.at
    async with db.engine.connect() as conn:
        late = (
            await conn.execute(
                select(UsageRow.user_id, UsageRow.key_id).where(UsageRow.request_id == "late-1")
            )
        ).one()
        audits = await conn.scalar(select(func.count()).select_from(AuditEntry))
    assert (late.user_id, late.key_id) == (ERASED, None)
    assert audits == 1
    with pytest.raises(NotFound):
        await erase_user(db, "f" * 32, actor="cli:test")


async def test_the_last_active_admin_cannot_be_erased(db: Database) -> None:
    users = UserStore(db)
    admin = await users.create("Root", role="admin")
    with pytest.raises(InvalidRequest) as refused:
        await erase_user(db, admin.id, actor="cli:test")
    assert refused.value.code == "last_admin"
    assert await users.get(admin.id) is not None
    other = await users.create("Second", role="admin")
    await erase_user(db, admin.id, actor="cli:test")
    assert await users.get(admin.id) is None
    assert await users.get(other.id) is not None


async def test_a_failed_step_changes_nothing(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from interlock.privacy import erasure as erasure_module

    ada, _byron = await twins(db)

    async def broken(conn: Any, user_id: str) -> int:
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(erasure_module, "STEPS", (*erasure_module.STEPS, ("broken", broken)))
    with pytest.raises(RuntimeError):
        await erase_user(db, ada["id"], actor="cli:test")
    async with db.engine.connect() as conn:
        assert await conn.scalar(select(User.id).where(User.id == ada["id"])) == ada["id"]
        assert await conn.scalar(select(ApiKey.id).where(ApiKey.user_id == ada["id"])) == ada["key"]
        assert (
            await conn.scalar(
                select(func.count()).select_from(UsageRow).where(UsageRow.user_id == ada["id"])
            )
            == 3
        )
        assert await conn.scalar(select(func.count()).select_from(AuditEntry)) == 0
        assert (
            await conn.scalar(select(Conversation.id).where(Conversation.user_id == ada["id"]))
            == "chat-1"
        )
