"""Backups end to end on SQLite and a real PostgreSQL: data written through a running
gateway, backed up while the gateway keeps writing, the database wiped, restored, and what
the API returns compared; and an archive of an older schema migrated after its restore."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from alembic import command
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from interlock.backup.service import create_backup, list_backups, restore_backup
from interlock.settings import Settings
from interlock.store.database import Database
from interlock.store.migrate import alembic_config, current_revision, head_revision, upgrade
from interlock.testing.fake_upstream import FakeUpstream
from tests.fixtures.postgres import PostgresServer, postgres_server, postgres_url  # noqa: F401
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
HELLO = [{"role": "user", "content": "hello, backups"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(params=["sqlite", "postgresql"])
def database_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    return {"DATABASE_URL": request.getfixturevalue("postgres_url")}


def gateway_settings(tmp_path: Path, upstream: FakeUpstream, env: dict[str, str]) -> Settings:
    config = {
        "usage": {"flush_interval_ms": 20},
        "models.chat": {
            "deployments": [
                {
                    "provider": "openai",
                    "model": "fake-model",
                    "base_url": upstream.openai_base_url,
                    "api_key_env": "FAKE_PROVIDER_KEY",
                    "name": "fake",
                }
            ]
        },
    }
    return make_settings(tmp_path, config, env)


@dataclass
class Written:
    user_id: str
    key: str


def write_one(gateway: RunningGateway, http: httpx.Client, number: int) -> Written:
    """A user, a key of theirs, and a chat with it — all through the API."""
    user = http.post(
        "/admin/users",
        json={"name": f"user {number}", "email": f"u{number}@example.com", "tier": "enterprise"},
    )
    assert user.status_code in (200, 201), user.text
    user_id = user.json()["id"]
    key = http.post(f"/admin/users/{user_id}/keys", json={"name": f"key {number}"})
    assert key.status_code in (200, 201), key.text
    plaintext = key.json()["key"]
    with openai.OpenAI(
        base_url=gateway.openai_base_url, api_key=plaintext, max_retries=0
    ) as client:
        reply = client.chat.completions.create(model="chat", messages=HELLO)  # type: ignore[arg-type]
    assert reply.choices[0].message.content
    return Written(user_id, plaintext)


def api_state(gateway: RunningGateway) -> dict[str, Any]:
    """Everything the admin API shows of users, keys and usage (minus what moves on its own:
    when a key was last used)."""
    with httpx.Client(base_url=gateway.url, headers=ADMIN, timeout=30) as http:
        users = http.get("/admin/users", params={"limit": 1000}).json()["data"]
        keys = {}
        for user in users:
            listed = http.get(f"/admin/users/{user['id']}/keys").json()["data"]
            keys[user["id"]] = [
                {k: v for k, v in key.items() if k != "last_used_at"} for key in listed
            ]
        usage = http.get("/admin/usage", params={"group_by": "user"}).json()
    return {"users": users, "keys": keys, "usage": usage}


def wipe(settings: Settings, postgres: PostgresServer | None) -> None:
    """Lose the database, as a disk or an operator would."""
    url = make_url(settings.database_url)
    if postgres is None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{url.database}{suffix}").unlink(missing_ok=True)
    else:
        assert url.database
        postgres.psql("DROP SCHEMA public CASCADE; CREATE SCHEMA public", database=url.database)


def test_a_backup_taken_while_writing_restores_exactly_its_snapshot(
    tmp_path: Path,
    upstream: FakeUpstream,
    database_env: dict[str, str],
    request: pytest.FixtureRequest,
) -> None:
    settings = gateway_settings(tmp_path, upstream, database_env)
    postgres = request.getfixturevalue("postgres_server") if database_env else None
    written: list[Written] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def keep_writing(gateway: RunningGateway) -> None:
        try:
            with httpx.Client(base_url=gateway.url, headers=ADMIN, timeout=30) as http:
                while not stop.is_set():
                    written.append(write_one(gateway, http, 100 + len(written)))
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 60
        while len(written) < count and not failures:
            assert time.monotonic() < deadline, "the writer stalled"
            time.sleep(0.01)

    with serve(settings) as gateway:
        with httpx.Client(base_url=gateway.url, headers=ADMIN, timeout=30) as http:
            seeded = [write_one(gateway, http, number) for number in range(3)]
        before = api_state(gateway)
        writer = threading.Thread(target=keep_writing, args=(gateway,))
        writer.start()
        try:
            wait_for(2)
            listing = asyncio.run(create_backup(settings))
            wait_for(len(written) + 2)  # the gateway kept writing after the snapshot
        finally:
            stop.set()
            writer.join(timeout=60)
        assert not failures, failures
        full = api_state(gateway)

    wipe(settings, postgres)
    restored = asyncio.run(restore_backup(settings, "latest"))
    assert restored.manifest == listing.manifest
    assert restored.revision == head_revision()

    with serve(settings) as gateway:
        after = api_state(gateway)
        with openai.OpenAI(
            base_url=gateway.openai_base_url, api_key=seeded[0].key, max_retries=0
        ) as client:  # keys restored with their hashes: the seeded key still works
            assert client.chat.completions.create(model="chat", messages=HELLO).choices  # type: ignore[arg-type]

    counts = listing.manifest.row_counts
    users = after["users"]
    # The restore is one consistent moment of the writing: every user up to it, none after.
    assert len(users) == counts["users"]
    assert users == full["users"][: len(users)]
    assert users[: len(before["users"])] == before["users"]
    assert len(before["users"]) < len(users) < len(full["users"])
    # The snapshot may fall between a user's creation and their key's: only the last user
    # may lack the key they got later.
    *settled, last = users
    assert {u["id"]: after["keys"][u["id"]] for u in settled} == {
        u["id"]: full["keys"][u["id"]] for u in settled
    }
    assert after["keys"][last["id"]] in ([], full["keys"][last["id"]])
    assert sum(len(keys) for keys in after["keys"].values()) == counts["api_keys"]
    assert after["usage"]["total"]["requests"] == counts["usage_records"]
    assert after["usage"]["total"]["requests"] >= before["usage"]["total"]["requests"]


def _migrate_to(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def _old_database(url: str) -> None:
    """A database at the first schema revision with one user in it."""
    database = Database(url)
    try:
        async with database.engine.begin() as conn:
            await conn.run_sync(_migrate_to, "0001")
        created: Any = datetime(2025, 5, 1, 12, tzinfo=UTC)
        if database.is_sqlite:
            created = "2025-05-01 12:00:00.000000"
        async with database.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO users (id, name, email, role, tier, status, created_at) "
                    "VALUES ('a' || :pad, 'Old Timer', 'old@example.com', 'member', 'free', "
                    "'active', :created)"
                ),
                {"pad": "0" * 31, "created": created},
            )
    finally:
        await database.aclose()


async def _revision_and_users(url: str) -> tuple[str | None, list[tuple[Any, ...]]]:
    database = Database(url)
    try:
        async with database.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT name, external_id FROM users"))).all()
        return await current_revision(database), [tuple(row) for row in rows]
    finally:
        await database.aclose()


def test_an_archive_of_an_older_schema_is_migrated_after_restore(
    tmp_path: Path, database_env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    settings = make_settings(tmp_path, None, database_env)
    postgres = request.getfixturevalue("postgres_server") if database_env else None
    asyncio.run(_old_database(settings.database_url))
    listing = asyncio.run(create_backup(settings))
    assert listing.manifest.schema_revision == "0001"
    assert "usage_records" not in listing.manifest.row_counts

    # The target is at head, with a table the archive does not have: it must not survive.
    wipe(settings, postgres)

    async def at_head() -> None:
        database = Database(settings.database_url)
        try:
            await upgrade(database)
        finally:
            await database.aclose()

    asyncio.run(at_head())
    restored = asyncio.run(restore_backup(settings, listing.manifest.name))
    assert restored.revision == head_revision() != "0001"
    assert asyncio.run(_revision_and_users(settings.database_url)) == (
        head_revision(),
        [("Old Timer", None)],
    )
    [entry] = asyncio.run(list_backups(settings))
    assert entry.listing == listing
