"""Identity over HTTP against a real gateway on loopback, in front of the fake upstream: the
admin API, members' own keys, model access by scope (with the official ``openai`` client),
session tokens, hostile credentials, and logs that never show a key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from interlock.store.database import Database
from interlock.store.keys import KeyStore
from interlock.store.users import UserStore
from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.support.gateway import (
    ADMIN_KEY,
    SECRET,
    RunningGateway,
    free_port,
    make_settings,
    serve,
    write_config,
)

JWT_SECRET = "a-nextauth-style-shared-secret-0123456789abcdef"
HELLO = [{"role": "user", "content": "Say hello"}]


def deployment(base_url: str, model: str, provider: str = "openai") -> dict[str, Any]:
    return {
        "provider": provider,
        "model": model,
        "base_url": base_url,
        "api_key_env": "FAKE_PROVIDER_KEY",
        "name": f"{provider}-{model}",
    }


def gateway_config(upstream: FakeUpstream) -> dict[str, dict[str, Any]]:
    return {
        "models.gpt-fake": {"deployments": [deployment(upstream.openai_base_url, "fake-model")]},
        "models.claude-fake": {
            "deployments": [deployment(upstream.anthropic_base_url, "claude-fake", "anthropic")]
        },
        "models.with-fallback": {
            "deployments": [deployment(upstream.openai_base_url, "broken")],
            "fallbacks": ["claude-fake"],
        },
        # Generous rates: these tests are about scopes, not about the rate limiter.
        "tiers.free": {"models": ["gpt-fake"], "rpm": 100_000},
        "tiers.basic": {
            "models": ["gpt-fake", "with-fallback"],
            "rpm": 100_000,
            "tpm": 1_000_000,
            "daily_budget": 5,
            "monthly_budget": 50,
        },
        # This module sends hundreds of bad credentials from one address on purpose; the
        # failed-authentication throttle has its own tests (test_rate_limits_api.py).
        "limits": {"failed_auth_per_minute": 100_000},
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("identity")
    env = {"INTERLOCK_JWT_SECRET": JWT_SECRET, "INTERLOCK_JWT_CREATE_USERS": "true"}
    with serve(make_settings(tmp, gateway_config(upstream), env)) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()


@dataclass
class Api:
    """httpx against the gateway, with a credential."""

    gateway: RunningGateway
    credential: str | None = ADMIN_KEY

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if self.credential is not None:
            headers["authorization"] = f"Bearer {self.credential}"
        return httpx.request(
            method, f"{self.gateway.url}{path}", json=body, headers=headers, **kwargs
        )

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = self.call(method, path, body)
        assert response.status_code == status, response.text
        return response.json()

    def error(self, method: str, path: str, body: Any, status: int) -> dict[str, Any]:
        response = self.call(method, path, body)
        assert response.status_code == status, response.text
        error: dict[str, Any] = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        return error


@pytest.fixture
def admin(gateway: RunningGateway) -> Api:
    return Api(gateway)


def new_member(admin: Api, tier: str = "basic", **key: Any) -> tuple[dict[str, Any], str, Api]:
    """A new member of ``tier`` with one key (of scope ``key``): the user, the key, an Api."""
    user = admin.ok("POST", "/admin/users", {"name": "member", "tier": tier}, status=201)
    created = admin.ok("POST", f"/admin/users/{user['id']}/keys", key, status=201)
    return user, created["key"], Api(admin.gateway, created["key"])


def client(gateway: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)


# --- users ----------------------------------------------------------------------------------


def test_an_admin_manages_users(admin: Api) -> None:
    created = admin.ok(
        "POST", "/admin/users", {"name": "Ada", "email": "ada@example.com"}, status=201
    )
    assert created["object"] == "user"
    assert (created["role"], created["tier"], created["status"]) == ("member", "free", "active")
    assert admin.ok("GET", f"/admin/users/{created['id']}") == created
    listed = admin.ok("GET", "/admin/users?limit=1000")
    assert listed["object"] == "list" and created in listed["data"]
    assert len(admin.ok("GET", "/admin/users?limit=1")["data"]) == 1

    changed = admin.ok(
        "PATCH", f"/admin/users/{created['id']}", {"tier": "basic", "name": "Ada L."}
    )
    assert (changed["tier"], changed["name"], changed["email"]) == (
        "basic",
        "Ada L.",
        "ada@example.com",
    )
    cleared = admin.ok("PATCH", f"/admin/users/{created['id']}", {"email": None})
    assert cleared["email"] is None
    disabled = admin.ok("POST", f"/admin/users/{created['id']}/disable")
    assert disabled["status"] == "disabled"


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"name": "x", "tier": "gold"}, "tier", "unknown_tier"),
        ({"name": "x", "spend": 0}, "spend", "unknown_field"),
        ({"name": "x", "budget": 100}, "budget", "unknown_field"),
        ({"name": "x", "id": "0" * 32}, "id", "unknown_field"),
        ({"name": "x", "role": "superuser"}, "role", "invalid_request"),
        ({"name": ""}, "name", "invalid_request"),
        ({"name": "x" * 201}, "name", "invalid_request"),
        ({"name": "nul\x00byte"}, "name", "invalid_request"),
        ({"name": "x", "email": "not-an-email"}, "email", "invalid_request"),
        ({"name": "x", "email": "a b@example.com"}, "email", "invalid_request"),
        ({"name": 42}, "name", "invalid_request"),
        ({}, None, "invalid_request"),
    ],
)
def test_user_bodies_are_validated_field_by_field(
    admin: Api, body: dict[str, Any], param: str | None, code: str
) -> None:
    error = admin.error("POST", "/admin/users", body, 400)
    assert (error["param"], error["code"]) == (param, code)
    assert "superuser" not in error["message"]


def test_malformed_bodies_are_400(admin: Api) -> None:
    for content in (b"{", b"[]", b"null", b'"x"', b"\xff\xfe"):
        response = admin.call(
            "POST", "/admin/users", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, content
    big = {"name": "x", "email": "a" * 100_000}
    assert admin.call("POST", "/admin/users", big).status_code == 413


def test_user_updates_are_validated(admin: Api) -> None:
    user = admin.ok("POST", "/admin/users", {"name": "Bob"}, status=201)
    path = f"/admin/users/{user['id']}"
    assert admin.error("PATCH", path, {"tier": "gold"}, 400)["code"] == "unknown_tier"
    assert admin.error("PATCH", path, {"spend": 1}, 400)["param"] == "spend"
    assert admin.error("PATCH", path, {"status": "deleted"}, 400)["param"] == "status"
    assert admin.error("PATCH", path, {"name": None}, 400)["param"] == "name"
    assert admin.ok("GET", path) == user  # nothing was changed


def test_emails_collide_with_a_clear_400(admin: Api) -> None:
    admin.ok("POST", "/admin/users", {"name": "A", "email": "same@example.org"}, status=201)
    error = admin.error("POST", "/admin/users", {"name": "B", "email": "same@example.org"}, 400)
    assert (error["code"], error["param"]) == ("email_taken", "email")


@pytest.mark.parametrize(
    "user_id", ["0" * 32, "nope", "..%2F..%2Fetc", "%00", "x" * 5000, "%27%20OR%201=1"]
)
def test_unknown_or_malformed_user_ids_are_404(admin: Api, user_id: str) -> None:
    for method, path in (
        ("GET", f"/admin/users/{user_id}"),
        ("PATCH", f"/admin/users/{user_id}"),
        ("POST", f"/admin/users/{user_id}/disable"),
        ("GET", f"/admin/users/{user_id}/keys"),
        ("POST", f"/admin/users/{user_id}/keys"),
    ):
        response = admin.call(method, path, {"name": "x"} if method != "GET" else None)
        assert response.status_code == 404, (method, path, response.text)


def test_the_last_admin_cannot_be_demoted_or_disabled(admin: Api) -> None:
    me = admin.ok("GET", "/v1/keys")["data"][0]["user_id"]
    for user in admin.ok("GET", "/admin/users?limit=1000")["data"]:
        if user["role"] == "admin" and user["id"] != me:
            admin.ok("PATCH", f"/admin/users/{user['id']}", {"role": "member"})
    for change in ({"role": "member"}, {"status": "disabled"}):
        error = admin.error("PATCH", f"/admin/users/{me}", change, 400)
        assert error["code"] == "last_admin"
    assert admin.error("POST", f"/admin/users/{me}/disable", None, 400)["code"] == "last_admin"
    assert admin.ok("GET", f"/admin/users/{me}")["role"] == "admin"


# --- keys: creation, scope, revocation, rotation -------------------------------------------


def test_a_key_is_shown_once_and_listed_without_it(admin: Api) -> None:
    user, key, _ = new_member(admin, name="laptop", models=["gpt-fake"], rpm=10)
    assert key.startswith("il_live_") and len(key) == 46
    [listed] = admin.ok("GET", f"/admin/users/{user['id']}/keys")["data"]
    assert "key" not in listed and key not in json.dumps(listed)
    assert (listed["name"], listed["models"], listed["rpm"], listed["status"]) == (
        "laptop",
        ["gpt-fake"],
        10,
        "active",
    )
    assert listed["short_id"] == key[:16] and listed["daily_budget"] is None
    response = admin.call("GET", f"/admin/users/{user['id']}/keys")
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("scope", "param", "code"),
    [
        ({"models": ["claude-fake"]}, "models", "scope_too_wide"),
        ({"models": ["gpt-fake", "nonexistent"]}, "models", "scope_too_wide"),
        ({"rpm": 100_001}, "rpm", "scope_too_wide"),
        ({"tpm": 2_000_000}, "tpm", "scope_too_wide"),
        ({"daily_budget": 5.01}, "daily_budget", "scope_too_wide"),
        ({"monthly_budget": "51"}, "monthly_budget", "scope_too_wide"),
        ({"daily_budget": -1}, "daily_budget", "invalid_request"),
        ({"daily_budget": "NaN"}, "daily_budget", "invalid_request"),
        ({"daily_budget": "Infinity"}, "daily_budget", "invalid_request"),
        ({"daily_budget": 1e300}, "daily_budget", "invalid_request"),
        ({"daily_budget": 0.0000001}, "daily_budget", "invalid_request"),
        ({"monthly_budget": "lots"}, "monthly_budget", "invalid_request"),
        ({"rpm": 0}, "rpm", "invalid_request"),
        ({"rpm": -5}, "rpm", "invalid_request"),
        ({"rpm": 1.5}, "rpm", "invalid_request"),
        ({"rpm": "10"}, "rpm", "invalid_request"),
        ({"rpm": True}, "rpm", "invalid_request"),
        ({"rpm": 10**30}, "rpm", "invalid_request"),
        ({"max_concurrent": 10**7}, "max_concurrent", "invalid_request"),
        ({"models": "gpt-fake"}, "models", "invalid_request"),
        ({"models": ["x" * 201]}, "models", "invalid_request"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at", "invalid_request"),
        ({"expires_at": "2099-01-01T00:00:00"}, "expires_at", "invalid_request"),
        ({"expires_at": "tomorrow"}, "expires_at", "invalid_request"),
        ({"name": "tab\tname"}, "name", "invalid_request"),
        ({"user_id": "0" * 32}, "user_id", "unknown_field"),
        ({"spend": 0}, "spend", "unknown_field"),
        ({"tier": "enterprise"}, "tier", "unknown_field"),
    ],
)
def test_a_key_scope_only_narrows_the_tier(
    admin: Api, scope: dict[str, Any], param: str, code: str
) -> None:
    user = admin.ok("POST", "/admin/users", {"name": "m", "tier": "basic"}, status=201)
    error = admin.error("POST", f"/admin/users/{user['id']}/keys", scope, 400)
    assert (error["param"], error["code"]) == (param, code)
    assert admin.ok("GET", f"/admin/users/{user['id']}/keys")["data"] == []


def test_budgets_keep_their_decimals(admin: Api) -> None:
    user = admin.ok("POST", "/admin/users", {"name": "m", "tier": "basic"}, status=201)
    created = admin.ok(
        "POST",
        f"/admin/users/{user['id']}/keys",
        {"daily_budget": "0.100001", "monthly_budget": 12.5},
        status=201,
    )
    assert (created["daily_budget"], created["monthly_budget"]) == (0.100001, 12.5)


def test_a_scoped_key_sees_and_uses_only_its_models(
    gateway: RunningGateway, admin: Api, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="hi")
    _, key, _ = new_member(admin, "basic", models=["gpt-fake"])
    with client(gateway, key) as member:
        assert [m.id for m in member.models.list()] == ["gpt-fake"]
        answer = member.chat.completions.create(model="gpt-fake", messages=HELLO)
        assert answer.choices[0].message.content == "hi"
        with pytest.raises(openai.NotFoundError) as hidden:
            member.chat.completions.create(model="with-fallback", messages=HELLO)
        with pytest.raises(openai.NotFoundError) as forbidden:
            member.chat.completions.create(model="claude-fake", messages=HELLO, stream=True)
        with pytest.raises(openai.NotFoundError) as unknown:
            member.chat.completions.create(model="no-such-model", messages=HELLO)
    assert hidden.value.body == {
        "message": "The model 'with-fallback' does not exist.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert forbidden.value.body["message"] == "The model 'claude-fake' does not exist."  # type: ignore[index]
    assert unknown.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert [r.model for r in upstream.ledger] == ["fake-model"]


def test_the_tier_bounds_a_key_without_its_own_models(gateway: RunningGateway, admin: Api) -> None:
    _, key, _ = new_member(admin, "basic")
    with client(gateway, key) as member:
        assert sorted(m.id for m in member.models.list()) == ["gpt-fake", "with-fallback"]
    with client(gateway, ADMIN_KEY) as enterprise:
        assert sorted(m.id for m in enterprise.models.list()) == [
            "claude-fake",
            "gpt-fake",
            "with-fallback",
        ]


def test_fallback_models_outside_the_tier_are_never_used(
    gateway: RunningGateway, admin: Api, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("broken", Behavior(status=503))
    upstream.set_model_behavior("claude-fake", Behavior(text="fallback answer"))
    _, key, _ = new_member(admin, "basic")
    with client(gateway, key) as member, pytest.raises(openai.APIStatusError) as failed:
        member.chat.completions.create(model="with-fallback", messages=HELLO)
    assert failed.value.status_code >= 500
    assert all(r.model != "claude-fake" for r in upstream.ledger), upstream.ledger
    with client(gateway, ADMIN_KEY) as enterprise:
        answer = enterprise.chat.completions.create(model="with-fallback", messages=HELLO)
    assert answer.choices[0].message.content == "fallback answer"


def test_revocation_takes_effect_at_once_on_this_instance(
    gateway: RunningGateway, admin: Api
) -> None:
    _, _, member = new_member(admin, "basic")
    [own] = member.ok("GET", "/v1/keys")["data"]
    assert member.call("GET", "/v1/models").status_code == 200  # now cached
    revoked = admin.ok("POST", f"/admin/keys/{own['id']}/revoke")
    assert revoked["status"] == "revoked" and revoked["revoked_at"] is not None
    assert member.call("GET", "/v1/models").status_code == 401
    assert admin.ok("POST", f"/admin/keys/{own['id']}/revoke")["status"] == "revoked"


def test_rotation_gives_a_new_key_with_the_same_scope(admin: Api) -> None:
    _, key, member = new_member(admin, "basic", name="ci", models=["gpt-fake"], rpm=7)
    [old] = member.ok("GET", "/v1/keys")["data"]
    assert member.call("GET", "/v1/models").status_code == 200
    rotated = admin.ok("POST", f"/admin/keys/{old['id']}/rotate", status=201)
    assert rotated["key"] != key and rotated["id"] != old["id"]
    assert (rotated["name"], rotated["models"], rotated["rpm"]) == ("ci", ["gpt-fake"], 7)
    assert member.call("GET", "/v1/models").status_code == 401
    renewed = Api(admin.gateway, rotated["key"])
    assert [m["id"] for m in renewed.ok("GET", "/v1/models")["data"]] == ["gpt-fake"]
    error = admin.error("POST", f"/admin/keys/{old['id']}/rotate", None, 400)
    assert error["code"] == "key_revoked"


def test_a_key_scope_can_be_changed_within_the_tier(admin: Api) -> None:
    _, _, member = new_member(admin, "basic", models=["gpt-fake"])
    [own] = member.ok("GET", "/v1/keys")["data"]
    path = f"/admin/keys/{own['id']}"
    assert admin.error("PATCH", path, {"models": ["claude-fake"]}, 400)["code"] == (
        "scope_too_wide"
    )
    assert admin.error("PATCH", path, {"role": "admin"}, 400)["code"] == "unknown_field"
    widened = admin.ok("PATCH", path, {"models": None, "rpm": 3, "name": "renamed"})
    assert (widened["models"], widened["rpm"], widened["name"]) == (None, 3, "renamed")
    models = [m["id"] for m in member.ok("GET", "/v1/models")["data"]]
    assert sorted(models) == ["gpt-fake", "with-fallback"]  # at once on this instance


def test_disabling_a_user_stops_their_keys(admin: Api) -> None:
    user, _, member = new_member(admin, "basic")
    assert member.call("GET", "/v1/models").status_code == 200
    admin.ok("POST", f"/admin/users/{user['id']}/disable")
    assert member.call("GET", "/v1/models").status_code == 401
    admin.ok("PATCH", f"/admin/users/{user['id']}", {"status": "active"})
    assert member.call("GET", "/v1/models").status_code == 200


def test_a_tier_change_applies_at_once(admin: Api) -> None:
    user, _, member = new_member(admin, "free")
    assert [m["id"] for m in member.ok("GET", "/v1/models")["data"]] == ["gpt-fake"]
    admin.ok("PATCH", f"/admin/users/{user['id']}", {"tier": "enterprise"})
    assert len(member.ok("GET", "/v1/models")["data"]) == 3


# --- members ------------------------------------------------------------------------------


def test_members_manage_only_their_own_keys(admin: Api) -> None:
    alice, _, as_alice = new_member(admin, "basic")
    bob, _, as_bob = new_member(admin, "basic")
    [bobs_key] = as_bob.ok("GET", "/v1/keys")["data"]

    created = as_alice.ok("POST", "/v1/keys", {"name": "second", "models": ["gpt-fake"]}, 201)
    assert created["user_id"] == alice["id"] and created["key"].startswith("il_live_")
    assert len(as_alice.ok("GET", "/v1/keys")["data"]) == 2
    assert bobs_key["id"] not in {k["id"] for k in as_alice.ok("GET", "/v1/keys")["data"]}

    # Another user's key is not found, whatever the route.
    assert as_alice.error("DELETE", f"/v1/keys/{bobs_key['id']}", None, 404)["code"] == (
        "not_found"
    )
    for action in ("revoke", "rotate"):
        as_alice.error("POST", f"/admin/keys/{bobs_key['id']}/{action}", None, 404)
    as_alice.error("PATCH", f"/admin/keys/{bobs_key['id']}", {"name": "mine"}, 404)
    assert as_bob.ok("GET", "/v1/keys")["data"] == [bobs_key]

    # The admin API is closed to members, except their own keys.
    for method, path in (
        ("GET", "/admin/users"),
        ("POST", "/admin/users"),
        ("GET", f"/admin/users/{alice['id']}"),
        ("PATCH", f"/admin/users/{alice['id']}"),
        ("POST", f"/admin/users/{alice['id']}/disable"),
        ("GET", f"/admin/users/{bob['id']}/keys"),
        ("POST", f"/admin/users/{bob['id']}/keys"),
    ):
        error = as_alice.error(method, path, {"name": "x", "role": "admin"}, 403)
        assert error["code"] == "permission_denied", (method, path)
    assert len(as_alice.ok("GET", f"/admin/users/{alice['id']}/keys")["data"]) == 2

    # Their own key, deleted: it stops working at once.
    revoked = as_alice.ok("DELETE", f"/v1/keys/{created['id']}")
    assert revoked["status"] == "revoked"
    assert Api(admin.gateway, created["key"]).call("GET", "/v1/models").status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"role": "admin"},
        {"tier": "enterprise"},
        {"user_id": "0" * 32},
        {"spend": -100},
        {"budget": 1000},
        {"status": "active"},
        {"key": "il_live_chosen_by_me"},
    ],
)
def test_members_cannot_mass_assign(admin: Api, body: dict[str, Any]) -> None:
    user, _, member = new_member(admin, "free")
    error = member.error("POST", "/v1/keys", body, 400)
    assert error["code"] == "unknown_field" and error["param"] == next(iter(body))
    assert admin.ok("GET", f"/admin/users/{user['id']}")["role"] == "member"
    assert len(member.ok("GET", "/v1/keys")["data"]) == 1


def test_a_member_key_cannot_widen_the_tier(admin: Api) -> None:
    _, _, member = new_member(admin, "free")
    error = member.error("POST", "/v1/keys", {"models": ["claude-fake"]}, 400)
    assert (error["code"], error["param"]) == ("scope_too_wide", "models")


def test_an_unconfigured_tier_is_403_not_a_crash(gateway: RunningGateway, admin: Api) -> None:
    async def make() -> str:
        database = Database(gateway.settings.database_url)
        try:
            user = await UserStore(database).create("lost", tier="platinum")
            _, key = await KeyStore(database, SECRET.encode()).create_key(user.id)
            return key
        finally:
            await database.aclose()

    lost = Api(gateway, asyncio.run(make()))
    for path in ("/v1/models", "/v1/chat/completions"):
        method = "GET" if path == "/v1/models" else "POST"
        error = lost.error(method, path, {"model": "gpt-fake", "messages": HELLO}, 403)
        assert error["code"] == "unknown_tier"
        assert "'platinum' is not configured" in error["message"]
    assert lost.error("POST", "/v1/keys", {}, 400)["code"] == "unknown_tier"


# --- sessions ------------------------------------------------------------------------------


def session_token(sub: str, **extra: Any) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": sub, "exp": now + 300, "iat": now, "name": "Web User", **extra},
        JWT_SECRET,
        algorithm="HS256",
    )


def test_a_session_creates_its_user_once_and_acts_as_them(
    gateway: RunningGateway, admin: Api
) -> None:
    subject = f"nextauth|{time.time_ns()}"
    token = session_token(subject)
    with client(gateway, token) as browser:
        assert [m.id for m in browser.models.list()] == ["gpt-fake"]  # the default tier: free
    session = Api(gateway, token)
    created = session.ok("POST", "/v1/keys", {"name": "from the browser"}, 201)
    users = admin.ok("GET", "/admin/users?limit=1000")["data"]
    [user] = [u for u in users if u["external_id"] == subject]
    assert (user["name"], user["tier"], user["role"]) == ("Web User", "free", "member")
    assert created["user_id"] == user["id"]
    assert len(session.ok("GET", "/v1/keys")["data"]) == 1
    admin.ok("POST", f"/admin/users/{user['id']}/disable")
    assert session.call("GET", "/v1/models").status_code == 401
    assert session.error("GET", "/admin/users", None, 401)["code"] == "invalid_api_key"


def test_an_admin_session_reaches_the_admin_api(gateway: RunningGateway, admin: Api) -> None:
    subject = f"oidc|admin-{time.time_ns()}"
    admin.ok("POST", "/admin/users", {"name": "Ops", "role": "admin", "external_id": subject}, 201)
    assert Api(gateway, session_token(subject)).ok("GET", "/admin/users?limit=5")["data"]


class JwksApp:
    """A tiny identity provider's key set, served by uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.body = json.dumps(jwks).encode()
        self.requests = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


@pytest.fixture(scope="module")
def provider_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_an_oidc_session_verifies_against_the_providers_jwks(
    upstream: FakeUpstream, tmp_path: Path, provider_key: rsa.RSAPrivateKey
) -> None:
    jwk = {**RSAAlgorithm.to_jwk(provider_key.public_key(), as_dict=True), "kid": "k1"}
    jwks = JwksApp({"keys": [jwk]})
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(jwks, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.01)
        env = {
            "INTERLOCK_JWKS_URL": f"http://127.0.0.1:{port}/.well-known/jwks.json",
            "INTERLOCK_JWT_AUDIENCE": "interlock",
            "INTERLOCK_JWT_ISSUER": "https://id.example.com/",
        }
        settings = make_settings(tmp_path, gateway_config(upstream), env)
        with serve(settings) as gateway:
            admin = Api(gateway)
            admin.ok("POST", "/admin/users", {"name": "Oidc", "external_id": "oidc|7"}, 201)
            now = int(time.time())
            claims = {
                "sub": "oidc|7",
                "aud": "interlock",
                "iss": "https://id.example.com/",
                "exp": now + 300,
            }
            token = jwt.encode(claims, provider_key, "RS256", headers={"kid": "k1"})
            with client(gateway, token) as browser:
                assert [m.id for m in browser.models.list()] == ["gpt-fake"]
            unknown = jwt.encode({**claims, "sub": "oidc|8"}, provider_key, "RS256", {"kid": "k1"})
            assert Api(gateway, unknown).call("GET", "/v1/models").status_code == 401
            wrong_aud = jwt.encode({**claims, "aud": "x"}, provider_key, "RS256", {"kid": "k1"})
            assert Api(gateway, wrong_aud).call("GET", "/v1/models").status_code == 401
            hs = jwt.encode(claims, JWT_SECRET, "HS256")
            assert Api(gateway, hs).call("GET", "/v1/models").status_code == 401
            assert jwks.requests == 1
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged_tokens() -> list[str]:
    now = int(time.time())
    header = b64(b'{"alg":"HS256","typ":"JWT"}')
    payload = b64(json.dumps({"sub": "admin", "exp": now + 300}).encode())
    unsigned = b64(b'{"alg":"none","typ":"JWT"}') + "." + payload + "."
    signing_input = f"{header}.{payload}".encode()
    confused = b64(hmac.new(b"-----BEGIN PUBLIC KEY-----", signing_input, hashlib.sha256).digest())
    return [
        unsigned,
        f"{header}.{payload}.{confused}",
        session_token("expired-user", exp=now - 3600),
        session_token("early-user", nbf=now + 3600),
        session_token("aud-user", aud="someone-else"),
        jwt.encode(
            {"sub": "x", "exp": now + 60}, "another-secret-of-sufficient-length-xyz", "HS256"
        ),
        f"{header}.{payload}.!!!!",
        "a.b.c",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.",
        f"{header}.{b64(b'not json')}.{confused}",
    ]


HOSTILE = [
    '"',
    "'",
    "' OR '1'='1",
    '"; DROP TABLE users; --',
    "\\",
    "\\\\'\\\"",
    "x" * 10_240,
    "il_live_" + "A" * 38,
    "il_live_" + "A" * 10_000,
    "%00",
    "Basic dXNlcjpwYXNz",
    "${jndi:ldap://127.0.0.1/a}",
]


@pytest.mark.parametrize("credential", HOSTILE + forged_tokens())
def test_hostile_credentials_are_401_never_500(gateway: RunningGateway, credential: str) -> None:
    for path in ("/v1/models", "/v1/keys", "/admin/users"):
        response = httpx.get(
            f"{gateway.url}{path}", headers={"authorization": f"Bearer {credential}"}
        )
        assert response.status_code == 401, (path, response.text)
        body = response.json()["error"]
        assert body["code"] == "invalid_api_key"
        assert credential not in body["message"] or len(credential) < 3


@pytest.mark.parametrize(
    "raw",
    [
        "Bearer ключ-администратора".encode(),
        b"Bearer \xff\xfe\xfd",
        "Bearer é.é.é".encode(),
        b"Bearer " + b"x" * 10_240,
        b"Bearer",
        b"bearer    two words",
        b"Token abc",
    ],
)
def test_non_ascii_and_odd_headers_are_401(gateway: RunningGateway, raw: bytes) -> None:
    response = httpx.get(f"{gateway.url}/v1/models", headers=[(b"authorization", raw)])
    assert response.status_code == 401, response.text


# --- logs -----------------------------------------------------------------------------------


def test_no_key_or_token_is_ever_logged(tmp_path: Path) -> None:
    """A real ``interlock serve`` at debug level: keys, tokens and the admin key go through
    every path (created, used, rotated, revoked, refused), and none appears in its output."""
    with FakeUpstream() as upstream:
        config = write_config(tmp_path / "interlock.toml", gateway_config(upstream))
        admin_key = "canary-admin-key-AAAA-0123456789abcdef"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INTERLOCK_", "DATABASE_"))}
        env |= {
            "INTERLOCK_DATA_DIR": str(tmp_path / "data"),
            "INTERLOCK_CONFIG": str(config),
            "INTERLOCK_ADMIN_KEY": admin_key,
            "INTERLOCK_JWT_SECRET": JWT_SECRET,
            "INTERLOCK_JWT_CREATE_USERS": "true",
            "INTERLOCK_LOG_LEVEL": "debug",
            "INTERLOCK_LOG_FORMAT": "json",
            "FAKE_PROVIDER_KEY": "sk-canary-provider-key",
        }
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [sys.executable, "-m", "interlock", "serve", "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        canaries = [admin_key, JWT_SECRET, "sk-canary-provider-key"]
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/health/live").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, "no start"
                time.sleep(0.05)
            gateway = RunningGateway(make_settings(tmp_path / "unused", None), url)
            admin = Api(gateway, admin_key)
            upstream.default = Behavior(text="fine")
            _, key, member = new_member(admin, "basic")
            token = session_token("canary-subject")
            canaries += [key, key[16:], token, token.split(".")[2]]
            with client(gateway, key) as c:
                c.chat.completions.create(model="gpt-fake", messages=HELLO)
            Api(gateway, token).ok("GET", "/v1/models")
            [own] = member.ok("GET", "/v1/keys")["data"]
            rotated = admin.ok("POST", f"/admin/keys/{own['id']}/rotate", status=201)["key"]
            canaries.append(rotated)
            for bad in (key, key[:-1] + "x", token[:-2] + "xx", "canary-wrong-key-0123"):
                canaries.append(bad)
                assert Api(gateway, bad).call("GET", "/v1/models").status_code == 401
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
    assert "Interlock listening" in output
    for canary in canaries:
        assert canary not in output, f"a secret appears in the output: {canary[:12]}…"
