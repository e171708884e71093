"""A user's export and erasure over HTTP, against a real gateway on loopback (SQLite and
PostgreSQL) in front of the fake upstream: the export is a streamed download of the caller's
own data only; erasure needs its confirmation, is audited, and every refusal is a clear 4xx."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from interlock.privacy.sealed import open_export
from interlock.store.database import Database
from interlock.store.models import AuditEntry, UsageRow
from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401
from tests.support.aisdk import config as aisdk_config
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve

PASSPHRASE = "a long enough passphrase"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway(
    request: pytest.FixtureRequest, upstream: FakeUpstream, tmp_path: Path
) -> Iterator[RunningGateway]:
    env = {}
    if request.param == "postgresql":
        env["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    with serve(make_settings(tmp_path, aisdk_config(upstream), env)) as running:
        yield running


def call(
    gateway: RunningGateway, method: str, path: str, key: str | None, body: Any = None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{gateway.url}{path}", json=body, headers=headers, timeout=30)


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def member(gateway: RunningGateway, name: str) -> tuple[str, str]:
    """A new member with one key: their id and key."""
    user = call(
        gateway, "POST", "/admin/users", ADMIN_KEY, {"name": name, "email": f"{name}@x.org"}
    )
    assert user.status_code == 201, user.text
    user_id = user.json()["id"]
    key = call(gateway, "POST", f"/admin/users/{user_id}/keys", ADMIN_KEY, {"name": "laptop"})
    assert key.status_code == 201, key.text
    return user_id, key.json()["key"]


def chat(gateway: RunningGateway, key: str) -> None:
    client = openai.OpenAI(base_url=gateway.openai_base_url, api_key=key, max_retries=0)
    client.chat.completions.create(
        model="gpt-fake", messages=[{"role": "user", "content": "Say hello"}], temperature=0
    )


def ui_chat(gateway: RunningGateway, upstream: FakeUpstream, key: str, text: str) -> None:
    """One AI SDK turn in the chat "chat-1", stored as the caller's conversation."""
    upstream.push(Behavior(text="An answer"))
    message = {"id": "m1", "role": "user", "parts": [{"type": "text", "text": text}]}
    response = httpx.post(
        f"{gateway.url}/api/chat",
        json={"id": "chat-1", "messages": [message]},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


def twins(gateway: RunningGateway, upstream: FakeUpstream) -> list[tuple[str, str]]:
    """Ada and Bob, members with look-alike data: a key, a chat completion, and an AI SDK
    conversation with the same chat id. Their ids and keys."""
    made = []
    for name in ("Ada", "Bob"):
        user_id, key = member(gateway, name.lower())
        chat(gateway, key)
        ui_chat(gateway, upstream, key, f"{name}'s own question")
        made.append((user_id, key))
    return made


def download(gateway: RunningGateway, path: str, key: str, passphrase: str = PASSPHRASE) -> Any:
    """Stream the export and open it: the JSON document."""
    chunks = []
    with httpx.stream(
        "POST",
        f"{gateway.url}{path}",
        json={"passphrase": passphrase},
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["cache-control"] == "no-store"
        disposition = response.headers["content-disposition"]
        assert disposition.startswith('attachment; filename="interlock-export-')
        assert disposition.endswith('.ilexp"')
        assert "content-length" not in response.headers  # streamed, not buffered
        chunks.extend(response.iter_bytes())
    plain = io.BytesIO()
    open_export(io.BytesIO(b"".join(chunks)), plain, passphrase=passphrase)
    return json.loads(plain.getvalue())


def audit(gateway: RunningGateway) -> list[Any]:
    async def read() -> list[Any]:
        database = Database(gateway.settings.database_url)
        try:
            async with database.engine.connect() as conn:
                query = select(
                    AuditEntry.actor, AuditEntry.action, AuditEntry.subject, AuditEntry.details
                )
                return list((await conn.execute(query.order_by(AuditEntry.at))).all())
        finally:
            await database.aclose()

    return asyncio.run(read())


def usage_of(gateway: RunningGateway, request_user: str) -> list[Any]:
    async def read() -> list[Any]:
        database = Database(gateway.settings.database_url)
        try:
            async with database.engine.connect() as conn:
                query = select(UsageRow.user_id, UsageRow.key_id).where(
                    UsageRow.user_id == request_user
                )
                return list((await conn.execute(query)).all())
        finally:
            await database.aclose()

    return asyncio.run(read())


def test_a_member_exports_their_own_data_and_nobody_elses(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    (ada, ada_key), (bob, _bob_key) = twins(gateway, upstream)

    document = download(gateway, "/v1/me/export", ada_key)
    assert document["user_id"] == ada
    assert document["profile"]["email"] == "ada@x.org"
    [key] = document["keys"]
    assert key["name"] == "laptop" and "key_hash" not in key
    [chat_row, _ui_row] = document["usage"]  # the ledger was flushed first
    assert (chat_row["model"], chat_row["status"]) == ("gpt-fake", 200)
    [conversation] = document["conversations"]
    assert conversation["id"] == "chat-1"
    assert conversation["messages"][0]["parts"][0]["text"] == "Ada's own question"
    assert conversation["messages"][1]["role"] == "assistant"
    text = json.dumps(document)
    assert bob not in text and "bob@x.org" not in text

    # an admin may export anyone's
    assert download(gateway, f"/admin/users/{bob}/export", ADMIN_KEY)["user_id"] == bob
    # both are in the audit log: who, about whom, how the file is keyed
    entries = [
        (entry.actor.split(":")[0], entry.subject, entry.details) for entry in audit(gateway)
    ]
    assert entries == [
        ("user", ada, {"key": "passphrase"}),
        ("admin", bob, {"key": "passphrase"}),
    ]


def test_export_refusals_are_clear(gateway: RunningGateway) -> None:
    _ada, ada_key = member(gateway, "ada")
    bob, _bob_key = member(gateway, "bob")
    error = error_of(call(gateway, "POST", "/v1/me/export", ada_key, {}), 400)
    assert error["message"] == "Object missing required field `passphrase`."
    error = error_of(call(gateway, "POST", "/v1/me/export", ada_key, {"passphrase": "short"}), 400)
    assert (error["param"], error["message"]) == (
        "passphrase",
        "The passphrase must be 12 to 1024 characters long.",
    )
    body = {"passphrase": PASSPHRASE, "user_id": bob}
    error = error_of(call(gateway, "POST", "/v1/me/export", ada_key, body), 400)
    assert "user_id" in error["message"]
    error_of(call(gateway, "POST", "/v1/me/export", None, {"passphrase": PASSPHRASE}), 401)
    # another user's export is for admins only; an id that is no user is 404
    error = error_of(
        call(gateway, "POST", f"/admin/users/{bob}/export", ada_key, {"passphrase": PASSPHRASE}),
        403,
    )
    assert error["code"] == "permission_denied"
    for missing in ("0" * 32, "not-an-id"):
        error = error_of(
            call(
                gateway,
                "POST",
                f"/admin/users/{missing}/export",
                ADMIN_KEY,
                {"passphrase": PASSPHRASE},
            ),
            404,
        )
        assert error["message"] == "No user with this id."


def test_a_member_erases_their_account_with_confirmation(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    (ada, ada_key), (bob, bob_key) = twins(gateway, upstream)

    error = error_of(call(gateway, "DELETE", "/v1/me", ada_key), 400)
    assert (error["code"], error["param"]) == ("confirmation_required", "confirm")
    assert error["message"] == (
        'Erasing your account cannot be undone: send {"confirm": "delete my account"}.'
    )
    error_of(call(gateway, "DELETE", "/v1/me", ada_key, {"confirm": "yes"}), 400)
    error_of(call(gateway, "DELETE", "/v1/me", None, {"confirm": "delete my account"}), 401)

    erased = call(gateway, "DELETE", "/v1/me", ada_key, {"confirm": "delete my account"})
    assert erased.status_code == 200, erased.text
    summary = erased.json()
    assert summary["user_id"] == ada and not summary["already_erased"]
    counts = (summary["keys_deleted"], summary["conversations_deleted"])
    assert counts == (1, 1)
    assert summary["usage_rows_anonymised"] == 2
    assert summary["cache_forgotten"] is True

    # the key is gone at once, the user too, and nothing of bob changed
    error_of(call(gateway, "GET", "/v1/models", ada_key), 401)
    error_of(call(gateway, "GET", f"/admin/users/{ada}", ADMIN_KEY), 404)
    assert usage_of(gateway, ada) == []
    assert len(usage_of(gateway, "erased")) == 2
    assert len(usage_of(gateway, bob)) == 2
    assert call(gateway, "GET", "/v1/models", bob_key).status_code == 200
    kept = call(gateway, "GET", "/api/conversations/chat-1", bob_key).json()
    assert kept["messages"][0]["parts"][0]["text"] == "Bob's own question"
    [entry] = audit(gateway)
    assert (entry.actor, entry.subject) == (f"user:{ada}", ada)
    assert entry.details == {
        "keys_deleted": 1,
        "conversations_deleted": 1,
        "usage_rows_anonymised": 2,
    }
    assert "ada@x.org" not in json.dumps(entry.details)


def test_an_admin_erases_a_user_once_and_never_the_last_admin(gateway: RunningGateway) -> None:
    bob, bob_key = member(gateway, "bob")
    carol, carol_key = member(gateway, "carol")
    error = error_of(
        call(gateway, "DELETE", f"/admin/users/{bob}", carol_key, {"confirm": bob}), 403
    )
    assert error["code"] == "permission_denied"
    error = error_of(
        call(gateway, "DELETE", f"/admin/users/{bob}", ADMIN_KEY, {"confirm": carol}), 400
    )
    assert error["code"] == "confirmation_required"
    error_of(
        call(gateway, "DELETE", f"/admin/users/{'0' * 32}", ADMIN_KEY, {"confirm": "0" * 32}), 404
    )

    first = call(gateway, "DELETE", f"/admin/users/{bob}", ADMIN_KEY, {"confirm": bob})
    assert first.status_code == 200, first.text
    again = call(gateway, "DELETE", f"/admin/users/{bob}", ADMIN_KEY, {"confirm": bob})
    assert again.status_code == 200, again.text
    assert again.json()["already_erased"] is True
    assert again.json()["erased_at"] == first.json()["erased_at"]
    error_of(call(gateway, "GET", "/v1/models", bob_key), 401)
    assert [entry.actor.split(":")[0] for entry in audit(gateway)] == ["admin"]

    # the only admin cannot erase themselves
    error = error_of(
        call(gateway, "DELETE", "/v1/me", ADMIN_KEY, {"confirm": "delete my account"}), 400
    )
    assert error["code"] == "last_admin"
    assert call(gateway, "GET", "/v1/models", ADMIN_KEY).status_code == 200
    assert call(gateway, "GET", "/v1/models", carol_key).status_code == 200


@pytest.mark.anyio
async def test_exports_at_once_are_bounded_and_their_slots_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each export holds a database connection while it streams: a third one at once is
    told to come back (429), and a slot is free again once a download ends."""
    from interlock.api import privacy as privacy_api
    from interlock.app import create_app

    release, all_streaming = asyncio.Event(), asyncio.Event()
    streaming = 0

    async def slow_export(*args: Any, **kwargs: Any) -> AsyncIterator[bytes]:
        nonlocal streaming
        streaming += 1
        if streaming == privacy_api.MAX_CONCURRENT_EXPORTS:
            all_streaming.set()
        yield b"ILEXPORT"
        await release.wait()
        yield b"...the rest"

    monkeypatch.setattr(privacy_api, "sealed_export", slow_export)
    app = create_app(make_settings(tmp_path), announce=None)
    body = {"passphrase": PASSPHRASE}
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        app.started(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=30
        ) as client,
    ):
        downloads = [
            asyncio.create_task(client.post("/v1/me/export", json=body, headers=headers))
            for _ in range(privacy_api.MAX_CONCURRENT_EXPORTS)
        ]
        await asyncio.wait_for(all_streaming.wait(), 30)
        busy = await client.post("/v1/me/export", json=body, headers=headers)
        assert busy.status_code == 429, busy.text
        assert busy.json()["error"]["code"] == "export_busy"
        assert busy.headers["retry-after"] == "5"
        release.set()
        for download in downloads:
            assert (await download).content == b"ILEXPORT...the rest"
        again = await client.post("/v1/me/export", json=body, headers=headers)
        assert again.status_code == 200
