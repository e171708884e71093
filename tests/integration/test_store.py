"""The storage layer against real databases: every database test runs on SQLite (a temp
file) and on a real PostgreSQL server (a fresh database per test)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from anyio.streams.buffered import BufferedByteReceiveStream
from sqlalchemy import Connection, delete, event, inspect, select, text

from interlock.auth.keys import generate_key, has_valid_checksum
from interlock.errors import InvalidRequest, NotFound
from interlock.settings import ConfigError
from interlock.store.database import Database, DatabaseUnavailable
from interlock.store.keys import AdminKeyError, KeyStore
from interlock.store.migrate import (
    SchemaTooNew,
    current_revision,
    head_revision,
    prepare,
    upgrade,
)
from interlock.store.models import ApiKey, Base, User
from interlock.store.secret import load_or_create_secret, resolve_secret
from tests.fixtures.databases import backend_fixture, database_url_fixture  # noqa: F401
from tests.fixtures.postgres import PostgresServer, postgres_server, postgres_url  # noqa: F401

pytestmark = pytest.mark.anyio

SECRET = b"test-server-secret-0123456789abcdef"
ADMIN_KEY = "operator-chosen-admin-key-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.aclose()


@pytest.fixture
async def store(db: Database) -> KeyStore:
    await prepare(db)
    return KeyStore(db, SECRET)


class StatementCounter:
    def __init__(self, db: Database) -> None:
        self.statements: list[str] = []
        event.listen(db.engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements.append(statement)


async def raw_rows(db: Database, table: str) -> list[tuple[Any, ...]]:
    async with db.engine.connect() as conn:
        return [tuple(row) for row in await conn.execute(text(f"SELECT * FROM {table}"))]


# --- migrations -------------------------------------------------------------------------


async def test_an_empty_database_is_migrated_to_head(db: Database) -> None:
    assert await current_revision(db) is None
    await prepare(db)
    assert await current_revision(db) == head_revision()
    async with db.engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    assert {"users", "api_keys", "alembic_version"} <= tables


async def test_models_and_migrated_schema_agree(db: Database) -> None:
    await prepare(db)

    def differences(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with db.engine.connect() as conn:
        assert await conn.run_sync(differences) == []


async def test_prepare_is_idempotent_and_keeps_data(store: KeyStore, db: Database) -> None:
    user = await store.create_user("kept")
    await prepare(db)
    await upgrade(db)
    assert await current_revision(db) == head_revision()
    assert [row[0] for row in await raw_rows(db, "users")] == [user.id]


# One Interlock instance: once ready, and told to go, prepare the database.
INSTANCE = """
import asyncio, sys
from interlock.store.database import Database
from interlock.store.migrate import prepare

async def main(url):
    db = Database(url)
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        await prepare(db)
    finally:
        await db.aclose()

asyncio.run(main(sys.argv[1]))
"""


async def test_instances_starting_together_migrate_once(database_url: str) -> None:
    command = [sys.executable, "-c", INSTANCE, database_url]
    processes = [await anyio.open_process(command, stderr=subprocess.PIPE) for _ in range(3)]
    try:
        with anyio.fail_after(60):
            for process in processes:  # every instance has imported everything
                assert process.stdout is not None
                line = await BufferedByteReceiveStream(process.stdout).receive_until(b"\n", 100)
                assert line == b"ready"
            for process in processes:  # and then they all start at once
                assert process.stdin is not None
                await process.stdin.send(b"go\n")
            for process in processes:
                assert process.stderr is not None
                errors = b"".join([chunk async for chunk in process.stderr])
                assert await process.wait() == 0, errors.decode()[-2000:]
    finally:
        for process in processes:
            await process.aclose()
    database = Database(database_url)
    try:
        assert await raw_rows(database, "alembic_version") == [(head_revision(),)]
    finally:
        await database.aclose()


# One process preparing several databases at once (in a process of its own, so that a
# deadlock fails the test instead of hanging it).
AT_ONCE = """
import asyncio, sys
import anyio
from interlock.store.database import Database
from interlock.store.migrate import current_revision, prepare

async def main(urls):
    databases = [Database(url) for url in urls]
    async with anyio.create_task_group() as group:
        for database in databases:
            group.start_soon(prepare, database)
    for database in databases:
        print(await current_revision(database))
        await database.aclose()

asyncio.run(main(sys.argv[1:]))
"""


async def test_databases_prepared_at_once_in_one_process(database_url: str, tmp_path: Path) -> None:
    # Alembic's globals would mix up two runs on one loop; the second database is another
    # SQLite file, so that it is independent of the backend's own lock.
    other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    command = [sys.executable, "-c", AT_ONCE, database_url, database_url, other, other]
    with anyio.fail_after(30):
        result = await anyio.run_process(command, check=False)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stdout.decode().split() == [head_revision()] * 4


async def test_a_database_from_a_newer_interlock_is_refused(db: Database) -> None:
    await prepare(db)
    async with db.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    with pytest.raises(SchemaTooNew) as caught:
        await prepare(db)
    assert caught.value.found == "0099_future"
    assert caught.value.head == head_revision()
    assert str(caught.value) == (
        f"the database is at revision 0099_future, newer than this Interlock "
        f"(head {head_revision()}): upgrade Interlock"
    )
    assert await current_revision(db) == "0099_future"  # left untouched


async def test_an_unreachable_database_is_reported_without_its_password(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        # A corrupt file, not an unopenable path: aiosqlite 0.22 leaves a stray callback
        # behind when sqlite3.connect itself fails (omnilib/aiosqlite#241).
        corrupt = tmp_path / "corrupt.db"
        corrupt.write_bytes(b"not a database, " * 512)
        url, password = f"sqlite+aiosqlite:///{corrupt}", None
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        password = "wrong-password-hunter2"
        url = server.url("postgres", password=password)
    database = Database(url)
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            await prepare(database)
    finally:
        await database.aclose()
    message = str(caught.value)
    assert message.startswith("cannot use the database at ")
    assert ("file is not a database" if backend == "sqlite" else "password") in message
    if password is not None:
        assert password not in message
        assert password not in repr(database)
        assert "***" in database.safe_url


# --- keys -------------------------------------------------------------------------------


async def test_a_key_is_created_found_listed_and_revoked(store: KeyStore) -> None:
    user = await store.create_user("ada", tier="pro", email="ada@example.com")
    assert (user.role, user.tier, user.status) == ("member", "pro", "active")
    row, key = await store.create_key(user.id, name="laptop")
    assert has_valid_checksum(key)
    assert row.short_id == key[:16]
    assert row.key_hash == hmac.new(SECRET, key.encode(), hashlib.sha256).digest()

    record = await store.find_by_key(key)
    assert record is not None
    assert (record.key_id, record.short_id, record.name) == (row.id, row.short_id, "laptop")
    assert (record.user_id, record.user_name, record.role, record.tier) == (
        user.id,
        "ada",
        "member",
        "pro",
    )
    assert record.user_status == "active"
    assert record.revoked_at is None and record.expires_at is None
    assert record.created_at.tzinfo is not None
    assert record.is_usable(datetime.now(UTC))

    second, _ = await store.create_key(user.id, name="server")
    assert [r.key_id for r in await store.list_keys(user.id)] == [row.id, second.id]
    assert await store.list_keys("no-such-user") == []

    assert await store.revoke_key(row.id) is True
    assert await store.revoke_key(row.id) is False
    assert await store.revoke_key("no-such-key") is False
    revoked = await store.find_by_key(key)
    assert revoked is not None and revoked.revoked_at is not None
    assert revoked.revoked_at.tzinfo is UTC
    assert not revoked.is_usable(datetime.now(UTC))
    assert (await store.find_by_key(generate_key())) is None  # well-formed but unknown


async def test_expiry_is_kept_as_utc(store: KeyStore) -> None:
    user = await store.create_user("grace")
    paris = timezone(timedelta(hours=2))
    expires = datetime(2030, 6, 1, 14, 0, 0, tzinfo=paris)
    _, key = await store.create_key(user.id, expires_at=expires)
    record = await store.find_by_key(key)
    assert record is not None and record.expires_at == expires
    assert record.expires_at.tzinfo is UTC and record.expires_at.hour == 12
    assert record.is_usable(datetime(2030, 6, 1, 11, 59, tzinfo=UTC))
    assert not record.is_usable(datetime(2030, 6, 1, 12, 0, tzinfo=UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.create_key(user.id, expires_at=datetime(2030, 1, 1))


async def test_a_key_needs_an_existing_user(store: KeyStore) -> None:
    with pytest.raises(NotFound):
        await store.create_key("no-such-user")


async def test_emails_are_unique(store: KeyStore) -> None:
    await store.create_user("one", email="same@example.com")
    with pytest.raises(InvalidRequest) as caught:
        await store.create_user("two", email="same@example.com")
    assert caught.value.code == "email_taken"
    await store.create_user("three")  # many users without an email are fine
    await store.create_user("four")


async def test_deleting_a_user_deletes_their_keys(store: KeyStore, db: Database) -> None:
    user = await store.create_user("leaving")
    _, key = await store.create_key(user.id)
    async with db.session() as session:
        await session.execute(delete(User).where(User.id == user.id))
        await session.commit()
    assert await store.find_by_key(key) is None
    assert await raw_rows(db, "api_keys") == []


async def test_only_hashes_reach_the_database(
    store: KeyStore, db: Database, backend: str, database_url: str
) -> None:
    user = await store.create_user("hashes")
    _, key = await store.create_key(user.id)
    await store.ensure_admin_key(ADMIN_KEY)
    generated_admin = await store.ensure_admin_key(None)
    assert generated_admin is None  # the explicit key counts as the admin's usable key
    secrets_in_play = [key, key[16:40], ADMIN_KEY]
    for table in ("users", "api_keys"):
        for row in await raw_rows(db, table):
            for value in row:
                as_text = value.hex() if isinstance(value, bytes) else str(value)
                raw = bytes(value) if isinstance(value, bytes | memoryview) else as_text.encode()
                for secret in secrets_in_play:
                    assert secret not in as_text
                    assert secret.encode() not in raw
    if backend == "sqlite":
        path = Path(database_url.removeprefix("sqlite+aiosqlite:///"))
        for file in (path, path.with_name(path.name + "-wal")):
            content = file.read_bytes() if file.exists() else b""
            for secret in secrets_in_play:
                assert secret.encode() not in content


@pytest.mark.parametrize(
    "hostile",
    [
        "",
        "'",
        "' OR '1'='1",
        "'; DROP TABLE api_keys; --",
        '" OR ""="',
        "\\",
        "\\'; SELECT 1; --",
        "x" * 10_240,
        "il_live_" + "a" * 10_000,
        "ключ-администратора-0123456789",
        "il_live_" + "é" * 38,
        "\x00",
        "operator-admin-key\x00-0123456789",
        "\ud800\udfff" * 20,
        "%_%_%_%_%_%_%_%_%_%_%_%_%",
        "il_live_0000000000000000000000000000000000000",
    ],
)
async def test_hostile_keys_are_unknown_never_an_error(
    store: KeyStore, db: Database, hostile: str
) -> None:
    user = await store.create_user("victim")
    _, key = await store.create_key(user.id)
    counter = StatementCounter(db)
    assert await store.find_by_key(hostile) is None
    plausible = hostile.isascii() and hostile.isprintable() and 0 < len(hostile) <= 512
    if not plausible or hostile.startswith("il_"):
        assert counter.statements == [], "garbage must be refused before the database"
    assert await store.find_by_key(key) is not None  # the table is intact


async def test_an_injection_attempt_of_plausible_length_is_just_a_miss(
    store: KeyStore, db: Database
) -> None:
    await store.create_user("someone")
    counter = StatementCounter(db)
    attempt = "x' OR 1=1; DROP TABLE users; --"
    assert await store.find_by_key(attempt) is None
    assert len(counter.statements) == 1
    assert attempt not in counter.statements[0]  # bound as a parameter, and hashed first
    assert len(await raw_rows(db, "users")) == 1


# --- the admin key ----------------------------------------------------------------------


async def test_the_first_start_makes_an_admin_key_once(store: KeyStore, db: Database) -> None:
    printed = await store.ensure_admin_key(None)
    assert printed is not None and has_valid_checksum(printed)
    record = await store.find_by_key(printed)
    assert record is not None and record.role == "admin" and record.user_name == "admin"
    assert await store.ensure_admin_key(None) is None
    restarted = KeyStore(db, SECRET)
    assert await restarted.ensure_admin_key(None) is None
    assert len(await raw_rows(db, "users")) == 1


async def test_a_new_admin_key_is_made_when_the_old_one_is_revoked(store: KeyStore) -> None:
    first = await store.ensure_admin_key(None)
    assert first is not None
    record = await store.find_by_key(first)
    assert record is not None
    await store.revoke_key(record.key_id)
    second = await store.ensure_admin_key(None)
    assert second is not None and second != first
    second_record = await store.find_by_key(second)
    assert second_record is not None and second_record.user_id == record.user_id


async def test_instances_starting_together_print_one_admin_key(
    db: Database, database_url: str
) -> None:
    await prepare(db)
    databases = [Database(database_url) for _ in range(4)]
    printed: list[str | None] = []

    async def start(database: Database) -> None:
        printed.append(await KeyStore(database, SECRET).ensure_admin_key(None))

    try:
        async with anyio.create_task_group() as group:
            for database in databases:
                group.start_soon(start, database)
    finally:
        for database in databases:
            await database.aclose()
    assert len([key for key in printed if key is not None]) == 1
    assert len(await raw_rows(db, "users")) == 1


async def test_an_explicit_admin_key_is_stored_once_and_replaced(
    store: KeyStore, db: Database
) -> None:
    assert await store.ensure_admin_key(ADMIN_KEY) is None
    record = await store.find_by_key(ADMIN_KEY)
    assert record is not None and record.role == "admin"
    assert record.short_id.startswith("env_") and ADMIN_KEY[:8] not in record.short_id

    assert await KeyStore(db, SECRET).ensure_admin_key(ADMIN_KEY) is None  # a restart
    assert len(await store.list_keys(record.user_id)) == 1
    assert await store.ensure_admin_key(None) is None  # the admin already has a usable key

    replacement = "another-operator-admin-key-987654321"
    assert await store.ensure_admin_key(replacement) is None
    old, new = await store.find_by_key(ADMIN_KEY), await store.find_by_key(replacement)
    assert old is not None and old.revoked_at is not None
    assert new is not None and new.revoked_at is None and new.user_id == record.user_id

    with pytest.raises(AdminKeyError, match="revoked"):
        await store.ensure_admin_key(ADMIN_KEY)  # a revoked key is never brought back


async def test_an_explicit_admin_key_goes_to_the_existing_admin(store: KeyStore) -> None:
    printed = await store.ensure_admin_key(None)
    assert printed is not None
    await store.ensure_admin_key(ADMIN_KEY)
    generated, explicit = await store.find_by_key(printed), await store.find_by_key(ADMIN_KEY)
    assert generated is not None and explicit is not None
    assert explicit.user_id == generated.user_id
    assert generated.revoked_at is None  # only earlier explicit keys are replaced


async def test_a_member_key_cannot_become_the_admin_key(store: KeyStore) -> None:
    user = await store.create_user("member")
    _, key = await store.create_key(user.id)
    with pytest.raises(AdminKeyError, match="not an admin"):
        await store.ensure_admin_key(key)


@pytest.mark.parametrize(
    "bad", ["too-short", "x" * 513, "non-ascii-admin-key-ключ-0123", "tab\tin-the-admin-key-0123"]
)
async def test_an_unusable_explicit_admin_key_is_refused(store: KeyStore, bad: str) -> None:
    with pytest.raises(AdminKeyError):
        await store.ensure_admin_key(bad)


async def test_a_mistyped_key_of_ours_as_admin_key_is_refused(store: KeyStore) -> None:
    key = generate_key()
    typo = key[:-1] + ("a" if key[-1] != "a" else "b")
    with pytest.raises(AdminKeyError, match="checksum"):
        await store.ensure_admin_key(typo)


# --- SQLite specifics -------------------------------------------------------------------


async def test_sqlite_connections_use_wal_and_enforce_foreign_keys(
    backend: str, db: Database, database_url: str
) -> None:
    if backend != "sqlite":
        assert db.engine.pool._pre_ping  # type: ignore[attr-defined]
        return
    assert Path(database_url.removeprefix("sqlite+aiosqlite:///")).parent.is_dir()
    async with db.engine.connect() as conn:
        values = {
            pragma: (await conn.exec_driver_sql(f"PRAGMA {pragma}")).scalar()
            for pragma in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")
        }
    assert values == {
        "journal_mode": "wal",
        "foreign_keys": 1,
        "busy_timeout": 5000,
        "synchronous": 1,
    }


async def test_orphan_keys_are_refused(store: KeyStore, db: Database) -> None:
    from sqlalchemy.exc import IntegrityError

    async with db.session() as session:
        session.add(ApiKey(short_id="il_live_orphan00", key_hash=b"\x00" * 32, user_id="ghost"))
        with pytest.raises(IntegrityError):
            await session.commit()
    async with db.session() as session:
        assert (await session.scalars(select(ApiKey))).all() == []


# --- the server secret ------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_secret_is_created_private_and_reused(tmp_path: Path, umask_022: None) -> None:
    data_dir = tmp_path / "data"
    secret = load_or_create_secret(data_dir)
    path = data_dir / "secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) == 64 and bytes.fromhex(secret.decode())  # 32 random bytes, as hex
    assert load_or_create_secret(data_dir) == secret
    assert load_or_create_secret(tmp_path / "other") != secret
    assert [p.name for p in data_dir.iterdir()] == ["secret"]  # no temporary file left


def test_the_secret_file_and_the_environment_are_interchangeable(tmp_path: Path) -> None:
    from_file = load_or_create_secret(tmp_path)
    copied = (tmp_path / "secret").read_text().strip()
    assert resolve_secret(copied, tmp_path / "elsewhere") == from_file
    assert resolve_secret(None, tmp_path) == from_file
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_a_readable_secret_file_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create_secret(tmp_path)
    (tmp_path / "secret").chmod(mode)
    with pytest.raises(ConfigError) as caught:
        load_or_create_secret(tmp_path)
    assert f"mode {mode:04o}" in str(caught.value)
    assert "chmod 600" in str(caught.value)


def test_a_secret_file_without_a_secret_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("short\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="does not hold a secret"):
        load_or_create_secret(tmp_path)


def test_a_symlinked_secret_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("a" * 64)
    target.chmod(0o600)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "secret").symlink_to(target)
    with pytest.raises(ConfigError):
        load_or_create_secret(tmp_path / "data")
