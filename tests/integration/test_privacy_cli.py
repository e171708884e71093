"""``interlock users export``, ``interlock export open`` and ``interlock users delete`` as an
operator uses them, on SQLite and a real PostgreSQL: private files, one-line errors with
their exit status, nothing left behind by a failure."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from interlock.cache.key import Tenant
from interlock.cache.store import EntryStore
from interlock.state import build_state
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401
from tests.fixtures.redis import redis_server_fixture, redis_url_fixture  # noqa: F401
from tests.support.cli import command_env, failed, ok
from tests.support.gateway import free_port

PASSPHRASE = "a long enough passphrase"


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return command_env(
        request, tmp_path, EXPORT_PASSPHRASE=PASSPHRASE, SHORT_PASSPHRASE="too short"
    )


@pytest.fixture(autouse=True)
def default_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def new_user(env: dict[str, str], name: str, *options: str) -> str:
    [user] = json.loads(ok(env, "users", "create", name, *options, "--format", "json"))
    user_id: str = user["id"]
    ok(env, "keys", "create", user_id, "--name", f"{name}'s key")
    return user_id


def document(path: Path) -> Any:
    return json.loads(path.read_text())


def test_export_then_open_with_the_passphrase(env: dict[str, str], tmp_path: Path) -> None:
    ada = new_user(env, "Ada", "--email", "ada@example.com")
    bob = new_user(env, "Bob", "--email", "bob@example.com")
    sealed = tmp_path / "ada.ilexp"
    out = ok(
        env, "users", "export", ada, "--out", str(sealed), "--passphrase-env", "EXPORT_PASSPHRASE"
    )
    # plain progress lines outside a terminal, then what was exported
    assert "exporting usage (0 rows)..." in out
    assert out.strip().endswith(
        f"exported user {ada} to {sealed} (1 profile, 1 keys, 0 conversations, 0 usage)"
    )
    assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
    assert b"ada@example.com" not in sealed.read_bytes()

    opened = ok(env, "export", "open", str(sealed), "--passphrase-env", "EXPORT_PASSPHRASE")
    plain = tmp_path / "ada.json"
    assert f"wrote {plain}: the data of user {ada}" in opened
    assert stat.S_IMODE(plain.stat().st_mode) == 0o600
    data = document(plain)
    assert data["profile"]["email"] == "ada@example.com"
    assert [key["name"] for key in data["keys"]] == ["Ada's key"]
    assert bob not in plain.read_text() and "Bob" not in plain.read_text()

    # never overwritten
    line = failed(env, 2, "export", "open", str(sealed), "--passphrase-env", "EXPORT_PASSPHRASE")
    assert line == f"error: {plain} exists: choose another --out"

    [entry] = json.loads(ok(env, "audit", "list", "--format", "json"))
    assert (entry["action"], entry["subject"], entry["details"]) == (
        "user.exported",
        ada,
        {"key": "passphrase"},
    )


def test_a_wrong_passphrase_or_a_damaged_file_leaves_no_output(
    env: dict[str, str], tmp_path: Path
) -> None:
    ada = new_user(env, "Ada")
    sealed = tmp_path / "ada.ilexp"
    ok(env, "users", "export", ada, "--out", str(sealed), "--passphrase-env", "EXPORT_PASSPHRASE")
    env = {**env, "OTHER_PASSPHRASE": "not the right passphrase"}
    line = failed(env, 3, "export", "open", str(sealed), "--passphrase-env", "OTHER_PASSPHRASE")
    assert line == "error: wrong passphrase for this export; no file was written"
    assert not (tmp_path / "ada.json").exists()

    cut = tmp_path / "cut.ilexp"
    cut.write_bytes(sealed.read_bytes()[:-10])
    line = failed(env, 3, "export", "open", str(cut), "--passphrase-env", "EXPORT_PASSPHRASE")
    assert line.startswith("error: the export is truncated")
    assert not (tmp_path / "cut.json").exists()

    junk = tmp_path / "junk.ilexp"
    junk.write_bytes(b"hello")
    assert failed(env, 3, "export", "open", str(junk)) == "error: not an Interlock export"


def test_a_server_key_export_opens_where_that_key_is(env: dict[str, str], tmp_path: Path) -> None:
    ada = new_user(env, "Ada")
    sealed = tmp_path / "ada.ilexp"
    ok(env, "users", "export", ada, "--out", str(sealed), "--server-key")
    ok(env, "export", "open", str(sealed), "--out", str(tmp_path / "plain.json"))
    assert document(tmp_path / "plain.json")["profile"]["name"] == "Ada"
    elsewhere = {**env, "INTERLOCK_SECRET": "another-secret-0123456789abcdef0123456789"}
    line = failed(elsewhere, 3, "export", "open", str(sealed), "--out", str(tmp_path / "x.json"))
    assert "encrypted with the server's backup key" in line
    assert not (tmp_path / "x.json").exists()


def test_export_usage_errors(env: dict[str, str], tmp_path: Path) -> None:
    ada = new_user(env, "Ada")
    out = str(tmp_path / "a.ilexp")
    assert failed(env, 2, "users", "export", ada, "--out", out) == (
        "error: give the passphrase with --passphrase-env VAR (or use --server-key)"
    )
    assert failed(env, 2, "users", "export", ada, "--out", out, "--passphrase-env", "NOPE") == (
        "error: --passphrase-env: $NOPE is not set"
    )
    line = failed(
        env, 2, "users", "export", ada, "--out", out, "--passphrase-env", "SHORT_PASSPHRASE"
    )
    assert line == "error: --passphrase-env: the passphrase must be 12 to 1024 characters long"
    line = failed(
        env, 2, "users", "export", ada, "--server-key", "--passphrase-env", "EXPORT_PASSPHRASE"
    )
    assert line == "error: give either --passphrase-env or --server-key, not both"
    assert failed(env, 1, "users", "export", "f" * 32, "--out", out, "--server-key") == (
        "error: No user with this id."
    )
    assert not Path(out).exists()  # the file of a failed export is removed
    assert failed(env, 1, "users", "export", "not-an-id", "--server-key") == (
        "error: no user with this id"
    )


def test_delete_erases_once_and_says_so_again(env: dict[str, str], tmp_path: Path) -> None:
    new_user(env, "Root", "--role", "admin")
    ada = new_user(env, "Ada", "--email", "ada@example.com")
    assert failed(env, 2, "users", "delete", ada) == (
        "error: erasing a user cannot be undone: add --yes to go ahead"
    )
    out = ok(env, "users", "delete", ada, "--yes")
    assert out.startswith(f"user {ada} erased at ")
    assert "keys deleted: 1, conversations deleted: 0, usage rows anonymised: 0" in out
    assert ada not in ok(env, "users", "list")
    again = ok(env, "users", "delete", ada, "--yes")
    assert again.startswith(f"user {ada} was already erased at ")
    assert failed(env, 1, "users", "delete", "e" * 32, "--yes") == "error: No user with this id."


def test_the_last_admin_is_not_deleted(env: dict[str, str]) -> None:
    root = new_user(env, "Root", "--role", "admin")
    assert failed(env, 2, "users", "delete", root, "--yes") == (
        "error: This is the last active admin: make another user an admin first."
    )
    assert root in ok(env, "users", "list")


@pytest.fixture
def sqlite_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    return command_env(request, tmp_path, database="sqlite")


def test_delete_orphans_the_users_cached_answers_in_redis(
    sqlite_env: dict[str, str], redis_url: str
) -> None:
    env = {**sqlite_env, "REDIS_URL": redis_url}
    ada = new_user(env, "Ada")

    async def tenant() -> Tenant:
        state = build_state(redis_url)
        try:
            return await EntryStore(state.kv, max_entry_bytes=1024).current(Tenant("user", ada))
        finally:
            await state.aclose()

    assert asyncio.run(tenant()) == Tenant("user", ada)
    ok(env, "users", "delete", ada, "--yes")
    orphaned = asyncio.run(tenant())
    assert orphaned.id.startswith(f"{ada}~")


def test_delete_with_redis_down_says_to_run_it_again(sqlite_env: dict[str, str]) -> None:
    env = {**sqlite_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    ada = new_user(env, "Ada")
    line = failed(env, 1, "users", "delete", ada, "--yes")
    assert line.startswith(f"error: user {ada} was erased, but the shared cache could not be ")
    assert line.endswith(": run this command again")
    assert ada not in ok(env, "users", "list")


def test_the_audit_log_lists_erasures_without_personal_data(env: dict[str, str]) -> None:
    assert ok(env, "audit", "list").strip() == "No audit log entries."
    ada = new_user(env, "Ada Lovelace", "--email", "ada@example.com")
    bob = new_user(env, "Bob", "--email", "bob@example.com")
    ok(env, "users", "delete", ada, "--yes")
    ok(env, "users", "delete", bob, "--yes")
    entries = json.loads(ok(env, "audit", "list", "--format", "json"))
    assert [entry["subject"] for entry in entries] == [bob, ada]  # newest first
    assert {entry["action"] for entry in entries} == {"user.erased"}
    assert all(entry["actor"].startswith("cli:") for entry in entries)
    assert entries[1]["details"] == {
        "keys_deleted": 1,
        "conversations_deleted": 0,
        "usage_rows_anonymised": 0,
    }
    table = ok(env, "audit", "list", "--user", ada)
    assert f"user.erased {ada} by cli:" in table and bob not in table
    assert "Lovelace" not in table + json.dumps(entries) and "example.com" not in table
    assert failed(env, 1, "audit", "list", "--user", "nope") == "error: no user with this id"
