"""``interlock users`` and ``interlock keys``: the same operations as the admin API, straight
in the database (SQLite, and a real PostgreSQL), with the same validation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from interlock.testing.fake_upstream import FakeUpstream
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401
from tests.support.cli import cli, failed, ok
from tests.support.gateway import SECRET, make_settings, serve

KEY_LINE = re.compile(r"^\s+(il_(?:live|test)_\w{38})$", re.MULTILINE)


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    values = {
        "INTERLOCK_DATA_DIR": str(tmp_path / "data"),
        "INTERLOCK_SECRET": SECRET,
        "INTERLOCK_CONFIG": str(tmp_path / "interlock.toml"),
        "DATABASE_URL": "",
    }
    (tmp_path / "interlock.toml").write_text(
        '[models.local]\ndeployments = [{ provider = "local" }]\n'
        '[models.other]\ndeployments = [{ provider = "local", name = "other" }]\n'
        '[tiers.basic]\nmodels = ["local"]\nrpm = 100\ndaily_budget = 2\n'
    )
    if request.param == "postgresql":
        values["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return values


def as_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(ok(env, *args, "--format", "json"))


def test_users_are_created_listed_updated_and_disabled(env: dict[str, str]) -> None:
    [ada] = as_json(env, "users", "create", "Ada", "--email", "ada@example.com")
    assert (ada["tier"], ada["role"], ada["status"]) == ("free", "member", "active")
    [ops] = as_json(env, "users", "create", "Ops", "--role", "admin", "--tier", "enterprise")
    listed = as_json(env, "users", "list")
    assert [u["id"] for u in listed] == [ada["id"], ops["id"]]
    assert [u["id"] for u in as_json(env, "users", "list", "--limit", "1", "--offset", "1")] == [
        ops["id"]
    ]
    [changed] = as_json(
        env, "users", "update", ada["id"], "--tier", "basic", "--email", "", "--name", "Ada L."
    )
    assert (changed["tier"], changed["email"], changed["name"]) == ("basic", None, "Ada L.")
    assert "disabled user" in ok(env, "users", "disable", ada["id"])
    assert as_json(env, "users", "list")[0]["status"] == "disabled"
    table = ok(env, "users", "list")
    assert ada["id"] in table and "Ada L." in table and "disabled" in table


def test_user_input_is_validated_in_one_line(env: dict[str, str]) -> None:
    assert "unknown_tier" not in failed(env, 2, "users", "create", "X", "--tier", "gold")
    assert "tier: No tier 'gold'" in failed(env, 2, "users", "create", "X", "--tier", "gold")
    assert "--email" in failed(env, 2, "users", "create", "X", "--email", "nope")
    assert "--name" in failed(env, 2, "users", "create", "tab\there")
    assert "--role" in cli(env, "users", "create", "X", "--role", "root").stderr
    ok(env, "users", "create", "A", "--email", "a@example.com")
    assert "email: A user with this email" in failed(
        env, 2, "users", "create", "B", "--email", "a@example.com"
    )
    [user] = as_json(env, "users", "create", "C")
    assert "nothing to change" in failed(env, 2, "users", "update", user["id"])
    assert failed(env, 1, "users", "update", "0" * 32, "--name", "x") == (
        "error: No user with this id."
    )
    assert "no user with this id" in failed(env, 1, "users", "disable", "x'; DROP TABLE users")


def test_a_users_own_budget_is_set_shown_and_cleared(env: dict[str, str]) -> None:
    [ada] = as_json(env, "users", "create", "Ada", "--tier", "basic", "--daily-budget", "10")
    assert (ada["daily_budget"], ada["monthly_budget"]) == (10, None)
    # A key may now go past the tier's budget of 2, up to the user's own.
    assert "il_" in ok(env, "keys", "create", ada["id"], "--daily-budget", "5")
    assert "daily_budget: At most 10" in failed(
        env, 2, "keys", "create", ada["id"], "--daily-budget", "11"
    )
    [changed] = as_json(env, "users", "update", ada["id"], "--monthly-budget", "100.5")
    assert (changed["daily_budget"], changed["monthly_budget"]) == (10, 100.5)
    assert "daily 10" in ok(env, "users", "list")
    [cleared] = as_json(env, "users", "update", ada["id"], "--daily-budget", "")
    assert cleared["daily_budget"] is None
    assert "--daily-budget: Must be an amount" in failed(
        env, 2, "users", "update", ada["id"], "--daily-budget", "-1"
    )
    assert "--monthly-budget: not an amount" in failed(
        env, 2, "users", "create", "Bo", "--monthly-budget", "lots"
    )


def test_the_last_admin_cannot_be_disabled(env: dict[str, str]) -> None:
    [admin] = as_json(env, "users", "create", "Root", "--role", "admin")
    assert "last active admin" in failed(env, 2, "users", "disable", admin["id"])
    assert "last active admin" in failed(env, 2, "users", "update", admin["id"], "--role", "member")


def test_keys_are_created_once_listed_rotated_and_revoked(env: dict[str, str]) -> None:
    [user] = as_json(env, "users", "create", "Ada", "--tier", "basic")
    out = ok(
        env,
        "keys",
        "create",
        user["id"],
        "--name",
        "laptop",
        "--model",
        "local",
        "--rpm",
        "10",
        "--daily-budget",
        "1.5",
        "--expires-in-days",
        "30",
    )
    assert "shown ONCE" in out
    [key] = KEY_LINE.findall(out)
    [listed] = as_json(env, "keys", "list", "--user", user["id"])
    assert (listed["name"], listed["models"], listed["rpm"], listed["daily_budget"]) == (
        "laptop",
        ["local"],
        10,
        1.5,
    )
    assert listed["short_id"] == key[:16] and listed["expires_at"] is not None
    everything = ok(env, "keys", "list")
    assert key not in everything and listed["id"] in everything

    rotated = ok(env, "keys", "rotate", listed["id"])
    [new_key] = KEY_LINE.findall(rotated)
    assert new_key != key
    keys = as_json(env, "keys", "list", "--user", user["id"])
    assert [k["status"] for k in keys] == ["revoked", "active"]
    assert keys[1]["models"] == ["local"] and keys[1]["rpm"] == 10
    assert "revoked key" in ok(env, "keys", "revoke", keys[1]["id"])
    assert "already revoked" in ok(env, "keys", "revoke", keys[1]["id"])
    assert "key_revoked" not in failed(env, 2, "keys", "rotate", keys[1]["id"])
    test_out = ok(env, "keys", "create", user["id"], "--test")
    assert KEY_LINE.findall(test_out)[0].startswith("il_test_")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "other"], "models: The model 'other' is not one the owner's tier"),
        (["--rpm", "101"], "rpm: At most 100"),
        (["--rpm", "0"], "rpm: Must be between 1"),
        (["--daily-budget", "2.01"], "daily_budget: At most 2"),
        (["--daily-budget", "-1"], "--daily-budget: Must be an amount"),
        (["--daily-budget", "NaN"], "--daily-budget: Must be an amount"),
        (["--monthly-budget", "lots"], "--monthly-budget: not an amount"),
        (["--monthly-budget", "1e20"], "--monthly-budget: Must be an amount"),
        (["--expires-at", "2020-01-01T00:00:00+00:00"], "--expires-at: must be in the future"),
        (["--expires-at", "2099-01-01T00:00:00"], "--expires-at: give a time zone"),
        (["--expires-at", "soon"], "--expires-at: expected an ISO 8601 time"),
    ],
)
def test_a_key_scope_only_narrows_the_tier(
    env: dict[str, str], args: list[str], expected: str
) -> None:
    [user] = as_json(env, "users", "create", "Ada", "--tier", "basic")
    line = failed(env, 2, "keys", "create", user["id"], *args)
    assert line.startswith(f"error: {expected}"), line
    assert as_json(env, "keys", "list", "--user", user["id"]) == []


def test_unknown_keys_and_users_exit_1(env: dict[str, str]) -> None:
    assert failed(env, 1, "keys", "create", "0" * 32) == "error: No user with this id."
    assert failed(env, 1, "keys", "revoke", "0" * 32) == "error: No API key with this id."
    assert failed(env, 1, "keys", "rotate", "not-an-id") == "error: no key with this id"
    assert failed(env, 1, "keys", "list", "--user", "\x00") == "error: no user with this id"


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


def test_a_key_made_by_the_cli_works_on_a_running_gateway(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    """The real command, in its own process, against the database of a running gateway."""
    fake = {
        "provider": "openai",
        "model": "m",
        "base_url": upstream.openai_base_url,
        "api_key_env": "FAKE_PROVIDER_KEY",
    }
    settings = make_settings(tmp_path, {"models.fake": {"deployments": [fake]}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTERLOCK_", "DATABASE_"))}
    env |= {
        "INTERLOCK_DATA_DIR": str(settings.data_dir),
        "INTERLOCK_SECRET": SECRET,
        "INTERLOCK_CONFIG": str(settings.config_path),
        "FAKE_PROVIDER_KEY": "sk-fake",
    }
    with serve(settings) as gateway:

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "interlock", *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        created = run("users", "create", "Ada", "--format", "json")
        assert created.returncode == 0, created.stderr
        user_id = json.loads(created.stdout)[0]["id"]
        made = run("keys", "create", user_id)
        assert made.returncode == 0, made.stderr
        [key] = KEY_LINE.findall(made.stdout)
        headers = {"authorization": f"Bearer {key}"}
        models = httpx.get(f"{gateway.url}/v1/models", headers=headers)
        assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["fake"]
        key_id = json.loads(run("keys", "list", "--format", "json").stdout)[-1]["id"]
        assert run("keys", "revoke", key_id).returncode == 0
        # Another process changed it: this instance notices within its one-second cache.
        deadline = 1.5
        started = time.monotonic()
        while httpx.get(f"{gateway.url}/v1/models", headers=headers).status_code != 401:
            assert time.monotonic() - started < deadline, "the revocation took over a second"
            time.sleep(0.05)
