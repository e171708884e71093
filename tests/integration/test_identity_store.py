"""Users and scoped keys in the database: every test runs on SQLite (a temp file) and on a
real PostgreSQL server (a fresh database per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from sqlalchemy import event, text

from interlock.auth.identity import open_identity
from interlock.auth.keys import hash_key
from interlock.auth.principal import Scope
from interlock.errors import InvalidRequest, NotFound
from interlock.settings import load_settings
from interlock.store.database import Database
from interlock.store.keys import KeyStore
from interlock.store.migrate import current_revision, head_revision, prepare
from interlock.store.users import UserStore
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401

pytestmark = pytest.mark.anyio

SECRET = b"test-server-secret-0123456789abcdef"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'interlock.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    await prepare(database)
    try:
        yield database
    finally:
        await database.aclose()


@pytest.fixture
def users(db: Database) -> UserStore:
    return UserStore(db)


@pytest.fixture
def keys(db: Database) -> KeyStore:
    return KeyStore(db, SECRET)


async def test_the_database_is_migrated_to_the_head(db: Database) -> None:
    assert await current_revision(db) == head_revision()


async def test_a_users_own_budgets_are_stored_and_cleared(users: UserStore) -> None:
    ada = await users.create("Ada", daily_budget=Decimal("2.5"))
    assert (ada.daily_budget, ada.monthly_budget) == (Decimal("2.5"), None)
    changed = await users.update(ada.id, monthly_budget=Decimal("100.000001"))
    assert (changed.daily_budget, changed.monthly_budget) == (Decimal("2.5"), Decimal("100.000001"))
    cleared = await users.update(ada.id, daily_budget=None)
    assert cleared.daily_budget is None
    found = await users.get(ada.id)
    assert found is not None and found.monthly_budget == Decimal("100.000001")


# --- users --------------------------------------------------------------------------------


async def test_users_are_created_listed_found_and_updated(users: UserStore) -> None:
    ada = await users.create("Ada", email="ada@example.com", tier="premium")
    bob = await users.create("Bob", role="admin", external_id="auth0|bob")
    assert (ada.role, ada.tier, ada.status, ada.external_id) == (
        "member",
        "premium",
        "active",
        None,
    )
    assert ada.created_at.tzinfo is not None and len(ada.id) == 32
    assert [u.id for u in await users.list_users()] == [ada.id, bob.id]
    assert [u.id for u in await users.list_users(limit=1, offset=1)] == [bob.id]
    assert await users.get(ada.id) == ada
    assert await users.get("0" * 32) is None
    assert await users.find_by_external_id("auth0|bob") == bob

    changed = await users.update(ada.id, tier="enterprise", email=None, name="Ada L.")
    assert (changed.tier, changed.email, changed.name, changed.role) == (
        "enterprise",
        None,
        "Ada L.",
        "member",
    )
    assert await users.get(ada.id) == changed
    with pytest.raises(NotFound):
        await users.update("0" * 32, name="ghost")


async def test_emails_and_external_ids_are_unique(users: UserStore) -> None:
    ada = await users.create("Ada", email="ada@example.com", external_id="sub-1")
    other = await users.create("Other")
    with pytest.raises(InvalidRequest) as caught:
        await users.create("Twin", email="ada@example.com")
    assert (caught.value.code, caught.value.param) == ("email_taken", "email")
    with pytest.raises(InvalidRequest) as caught:
        await users.create("Twin", external_id="sub-1")
    assert (caught.value.code, caught.value.param) == ("external_id_taken", "external_id")
    with pytest.raises(InvalidRequest) as caught:
        await users.update(other.id, email="ada@example.com")
    assert caught.value.code == "email_taken"
    with pytest.raises(InvalidRequest) as caught:
        await users.update(other.id, external_id="sub-1")
    assert caught.value.code == "external_id_taken"
    assert (await users.get(other.id)) == other  # nothing half-applied
    assert (await users.get(ada.id)) == ada


async def test_the_last_active_admin_stays(users: UserStore) -> None:
    first = await users.create("First", role="admin")
    for change in ({"role": "member"}, {"status": "disabled"}):
        with pytest.raises(InvalidRequest) as caught:
            await users.update(first.id, **change)  # type: ignore[arg-type]
        assert caught.value.code == "last_admin"
    second = await users.create("Second", role="admin")
    await users.update(first.id, status="disabled")
    with pytest.raises(InvalidRequest):
        await users.update(second.id, role="member")
    await users.update(first.id, status="active")
    assert (await users.update(second.id, role="member")).role == "member"


async def test_concurrent_demotions_leave_an_admin(users: UserStore) -> None:
    admins = [await users.create(f"admin {n}", role="admin") for n in range(3)]
    outcomes: list[str] = []

    async def demote(user_id: str) -> None:
        try:
            await users.update(user_id, role="member")
            outcomes.append("demoted")
        except InvalidRequest:
            outcomes.append("refused")

    async with anyio.create_task_group() as group:
        for admin in admins:
            group.start_soon(demote, admin.id)
    assert sorted(outcomes) == ["demoted", "demoted", "refused"]
    remaining = [u for u in await users.list_users() if u.role == "admin"]
    assert len(remaining) == 1


async def test_a_session_subject_is_created_once_even_when_raced(users: UserStore) -> None:
    made = []

    async def first_sight() -> None:
        made.append(await users.get_or_create_external("google|42", name="Ada", tier="free"))

    async with anyio.create_task_group() as group:
        for _ in range(5):
            group.start_soon(first_sight)
    assert len({user.id for user in made}) == 1
    assert len(await users.list_users()) == 1
    assert made[0].external_id == "google|42" and made[0].tier == "free"


# --- keys and their scope -------------------------------------------------------------------


SCOPE = Scope(
    models=frozenset({"gpt", "claude"}),
    rpm=60,
    tpm=10_000_000_000,
    max_concurrent=4,
    daily_budget=Decimal("0.123456"),
    monthly_budget=Decimal("999999999.999999"),
)


async def test_a_key_keeps_its_scope_exactly(users: UserStore, keys: KeyStore) -> None:
    user = await users.create("Ada")
    row, key = await keys.create_key(user.id, name="ci", scope=SCOPE)
    record = await keys.find_by_key(key)
    assert record is not None
    assert record.scope == SCOPE
    assert record.models == ("claude", "gpt")
    assert isinstance(record.daily_budget, Decimal)
    plain, _ = await keys.create_key(user.id)
    plain_record = await keys.get_key(plain.id)
    assert plain_record is not None and plain_record.scope == Scope()
    assert await keys.get_key(row.id) == record


async def test_keys_are_found_only_for_their_owner(users: UserStore, keys: KeyStore) -> None:
    ada, bob = await users.create("Ada"), await users.create("Bob")
    row, _ = await keys.create_key(ada.id)
    assert await keys.get_key(row.id, user_id=ada.id) is not None
    assert await keys.get_key(row.id, user_id=bob.id) is None
    assert await keys.revoke_key(row.id, user_id=bob.id) is False
    assert await keys.update_key(row.id, user_id=bob.id, name="stolen") is None
    assert await keys.rotate_key(row.id, user_id=bob.id) is None
    record = await keys.get_key(row.id)
    assert record is not None and record.revoked_at is None and record.name == ""
    assert await keys.revoke_key(row.id, user_id=ada.id) is True
    assert [k.key_id for k in await keys.list_keys(None)] == [row.id]
    assert await keys.list_keys(bob.id) == []


async def test_a_key_is_updated_field_by_field(users: UserStore, keys: KeyStore) -> None:
    user = await users.create("Ada")
    row, _ = await keys.create_key(user.id, name="old", scope=SCOPE)
    when = datetime.now(UTC) + timedelta(days=3)
    updated = await keys.update_key(row.id, name="new", expires_at=when)
    assert updated is not None
    assert (updated.name, updated.expires_at, updated.scope) == ("new", when, SCOPE)
    narrowed = await keys.update_key(row.id, scope=Scope(rpm=5))
    assert narrowed is not None and narrowed.scope == Scope(rpm=5) and narrowed.name == "new"
    cleared = await keys.update_key(row.id, expires_at=None)
    assert cleared is not None and cleared.expires_at is None


async def test_rotation_keeps_the_scope_and_revokes_the_old_key(
    users: UserStore, keys: KeyStore
) -> None:
    user = await users.create("Ada")
    expires = datetime.now(UTC) + timedelta(days=30)
    row, old_key = await keys.create_key(
        user.id, name="prod", scope=SCOPE, expires_at=expires, kind="test"
    )
    rotated = await keys.rotate_key(row.id)
    assert rotated is not None
    new, new_key = rotated
    assert new_key != old_key and new_key.startswith("il_test_")
    assert (new.name, new.scope, new.expires_at, new.user_id) == ("prod", SCOPE, expires, user.id)
    old = await keys.find_by_key(old_key)
    assert old is not None and old.revoked_at is not None
    found = await keys.find_by_key(new_key)
    assert found is not None and found.key_id == new.key_id and found.revoked_at is None
    with pytest.raises(InvalidRequest) as caught:
        await keys.rotate_key(row.id)
    assert caught.value.code == "key_revoked"


async def test_concurrent_rotations_make_one_new_key(users: UserStore, keys: KeyStore) -> None:
    user = await users.create("Ada")
    row, _ = await keys.create_key(user.id)
    results: list[str] = []

    async def rotate() -> None:
        try:
            rotated = await keys.rotate_key(row.id)
            results.append("rotated" if rotated else "missing")
        except InvalidRequest:
            results.append("refused")

    async with anyio.create_task_group() as group:
        for _ in range(4):
            group.start_soon(rotate)
    assert sorted(results) == ["refused", "refused", "refused", "rotated"]
    live = [k for k in await keys.list_keys(user.id) if k.revoked_at is None]
    assert len(live) == 1


async def test_an_expired_key_is_not_rotated(users: UserStore, keys: KeyStore) -> None:
    user = await users.create("Ada")
    row, _ = await keys.create_key(user.id)
    await keys.update_key(row.id, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(InvalidRequest) as caught:
        await keys.rotate_key(row.id)
    assert caught.value.code == "key_expired"


async def test_key_use_is_recorded_in_one_statement(
    users: UserStore, keys: KeyStore, db: Database
) -> None:
    user = await users.create("Ada")
    rows = [(await keys.create_key(user.id))[0] for _ in range(3)]
    statements: list[str] = []
    event.listen(
        db.engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: statements.append(statement),
    )
    when = datetime(2030, 1, 1, tzinfo=UTC)
    await keys.record_use({rows[0].id, rows[2].id}, when)
    assert len([s for s in statements if s.lstrip().upper().startswith("UPDATE")]) == 1
    used = {k.key_id: k.last_used_at for k in await keys.list_keys(user.id)}
    assert used == {rows[0].id: when, rows[1].id: None, rows[2].id: when}
    await keys.record_use(set(), when)


@pytest.mark.parametrize(
    "hostile",
    [
        "x' OR '1'='1",
        "\x00",
        "a\x00b",
        "é" * 40,
        "x" * 10_000,
        "\\",
        "%",
        "0" * 32,
    ],
)
async def test_hostile_ids_are_just_not_found(
    users: UserStore, keys: KeyStore, hostile: str
) -> None:
    """Ids arrive from URL paths; the HTTP layer refuses bad shapes before this, but the
    store stays safe anyway for every value that can reach the database."""
    user = await users.create("Victim")
    row, _ = await keys.create_key(user.id)
    if "\x00" in hostile:
        return  # PostgreSQL cannot even receive NUL: the API refuses it by shape (404)
    assert await users.get(hostile) is None
    assert await keys.get_key(hostile) is None
    assert await keys.revoke_key(hostile) is False
    assert await keys.list_keys(hostile) == []
    assert await users.find_by_external_id(hostile) is None
    assert await keys.get_key(row.id) is not None


async def test_keys_are_stored_as_hashes_with_the_scope_in_clear(
    users: UserStore, keys: KeyStore, db: Database
) -> None:
    user = await users.create("Ada")
    _, key = await keys.create_key(user.id, scope=Scope(models=frozenset({"gpt"})))
    async with db.engine.connect() as conn:
        row = (await conn.execute(text("SELECT key_hash, models FROM api_keys"))).one()
    assert bytes(row[0]) == hash_key(SECRET, key)
    assert "gpt" in str(row[1]) and key not in str(row[1])


async def test_key_use_is_written_when_the_app_stops(
    users: UserStore, keys: KeyStore, db: Database, tmp_path: Path
) -> None:
    settings = load_settings({"INTERLOCK_DATA_DIR": str(tmp_path), "INTERLOCK_SECRET": "s" * 40})
    user = await users.create("Ada")
    row, key = await keys.create_key(user.id)
    before = datetime.now(UTC)
    async with open_identity(settings, db, keys, SECRET) as identity:
        principal = await identity.authenticator.authenticate(key)
        assert principal.key_id == row.id and principal.tier == "free"
        assert principal.owner_scope == identity.tiers.scope("free")
        unused = await keys.get_key(row.id)
        assert unused is not None and unused.last_used_at is None  # off the hot path
    used = await keys.get_key(row.id)
    assert used is not None and used.last_used_at is not None and used.last_used_at >= before
