"""Usage over HTTP: ``/v1/usage`` and ``/admin/usage`` in process (SQLite and PostgreSQL), and
the whole path end to end — chat requests through a real gateway on loopback, in front of the
fake upstream, each leaving exactly one usage row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

from interlock.app import create_app
from interlock.components import Components
from interlock.store.database import Database
from interlock.store.keys import KeyStore
from interlock.store.migrate import prepare
from interlock.telemetry.ledger import UsageLedger
from interlock.telemetry.usage_record import UsageRecord
from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.fixtures.postgres import postgres_server, postgres_url  # noqa: F401
from tests.support.gateway import (
    ADMIN_KEY,
    SECRET,
    RunningGateway,
    make_settings,
    serve,
    usage_rows,
)

NOWHERE = "http://127.0.0.1:9/v1"  # the in-process tests never call a provider
TODAY = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def deployment(base_url: str, model: str, provider: str = "openai", **extra: Any) -> dict[str, Any]:
    return {
        "provider": provider,
        "model": model,
        "base_url": base_url,
        "api_key_env": "FAKE_PROVIDER_KEY",
        "name": extra.pop("name", f"{provider}-{model}"),
        **extra,
    }


# --- the reports, in process --------------------------------------------------------------


@dataclass
class Setup:
    client: httpx.AsyncClient
    components: Components
    member_key: str
    member_id: str
    other_key: str
    other_id: str
    admin_id: str


@pytest.fixture(params=["sqlite", "postgresql"])
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    env = {}
    if request.param == "postgresql":
        env["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    config = {"models.smart": {"deployments": [deployment(NOWHERE, "gpt-4o")]}}
    app = create_app(make_settings(tmp_path, config, env), announce=None)
    async with app.started() as components:
        keys = KeyStore(components.database, SECRET.encode())
        member = await keys.create_user("member", tier="free")
        other = await keys.create_user("other", tier="premium")
        _, member_key = await keys.create_key(member.id)
        _, other_key = await keys.create_key(other.id)
        admin = await keys.find_by_key(ADMIN_KEY)
        assert admin is not None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Setup(
                client, components, member_key, member.id, other_key, other.id, admin.user_id
            )


def usage_row(number: int, user_id: str, **changes: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req_api_{number:04d}",
        "created_at": TODAY,
        "user_id": user_id,
        "key_id": None,
        "tier": "free",
        "model": "smart",
        "provider": "openai",
        "deployment": "openai-gpt-4o",
        "input_tokens": 100,
        "output_tokens": 20,
        "cached_tokens": 0,
        "cost": Decimal("0.00045"),
        "latency_ms": 300,
        "ttft_ms": 80,
        "status": 200,
        "error": None,
        "attempts": 1,
        "streaming": False,
        "usage_source": "provider",
        "partial": False,
    }
    values.update(changes)
    return UsageRecord(**values)


def seed(setup: Setup) -> None:
    """Rows for two members, recorded but not yet flushed: the report must see them."""
    ledger = setup.components.ledger
    ledger.record(usage_row(1, setup.member_id))
    ledger.record(usage_row(2, setup.member_id, model="fast", cost=Decimal("0.001")))
    yesterday = TODAY - timedelta(days=1)
    ledger.record(usage_row(3, setup.member_id, created_at=yesterday, status=502, error="x"))
    ledger.record(usage_row(4, setup.other_id, tier="premium", input_tokens=7))
    ledger.record(usage_row(5, setup.other_id, tier="premium", created_at=yesterday))


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.anyio
async def test_own_usage_covers_only_the_caller(setup: Setup) -> None:
    seed(setup)
    response = await setup.client.get("/v1/usage", headers=auth(setup.member_key))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    today = TODAY.date()
    assert body["start"] == (today - timedelta(days=29)).isoformat()
    assert body["end"] == today.isoformat()
    assert (body["group_by"], body["currency"]) == ("day", "USD")
    yesterday = (today - timedelta(days=1)).isoformat()
    assert [(d["group"], d["requests"], d["errors"]) for d in body["data"]] == [
        (yesterday, 1, 1),
        (today.isoformat(), 2, 0),
    ]
    total = body["total"]
    assert (total["requests"], total["input_tokens"], total["output_tokens"]) == (3, 300, 60)
    assert Decimal(str(total["cost"])) == Decimal("0.0019")

    by_model = await setup.client.get(
        "/v1/usage", params={"group_by": "model"}, headers=auth(setup.other_key)
    )
    assert [(d["group"], d["requests"]) for d in by_model.json()["data"]] == [("smart", 2)]
    assert by_model.json()["total"]["input_tokens"] == 107


@pytest.mark.anyio
async def test_own_usage_for_one_day(setup: Setup) -> None:
    seed(setup)
    day = (TODAY.date() - timedelta(days=1)).isoformat()
    response = await setup.client.get(
        "/v1/usage", params={"start": day, "end": day}, headers=auth(setup.member_key)
    )
    assert response.json()["total"]["requests"] == 1


@pytest.mark.anyio
async def test_admins_see_everyone_and_can_filter(setup: Setup) -> None:
    seed(setup)
    admin = auth(ADMIN_KEY)
    by_user = await setup.client.get("/admin/usage", params={"group_by": "user"}, headers=admin)
    assert by_user.status_code == 200, by_user.text
    assert {d["group"]: d["requests"] for d in by_user.json()["data"]} == {
        setup.member_id: 3,
        setup.other_id: 2,
    }
    by_tier = await setup.client.get("/admin/usage", params={"group_by": "tier"}, headers=admin)
    assert {d["group"]: d["requests"] for d in by_tier.json()["data"]} == {"free": 3, "premium": 2}
    filtered = await setup.client.get(
        "/admin/usage",
        params={"user": setup.member_id, "model": "smart", "group_by": "model"},
        headers=admin,
    )
    body = filtered.json()
    assert (body["user"], body["model"]) == (setup.member_id, "smart")
    assert [(d["group"], d["requests"]) for d in body["data"]] == [("smart", 2)]
    nobody = await setup.client.get("/admin/usage", params={"user": "nobody"}, headers=admin)
    assert nobody.json()["data"] == [] and nobody.json()["total"]["requests"] == 0


@pytest.mark.anyio
async def test_members_may_not_see_everyones_usage(setup: Setup) -> None:
    response = await setup.client.get("/admin/usage", headers=auth(setup.member_key))
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "permission_denied")


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/v1/usage", "/admin/usage"])
@pytest.mark.parametrize("key", [None, "il_live_wrong", "x' OR '1'='1"])
async def test_usage_needs_a_valid_key(setup: Setup, path: str, key: str | None) -> None:
    headers = auth(key) if key is not None else {}
    response = await setup.client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/v1/usage", {"start": "2025-13-01"}, "start"),
        ("/v1/usage", {"end": "yesterday"}, "end"),
        ("/v1/usage", {"start": "2025-01-01T00:00:00"}, "start"),
        ("/v1/usage", {"start": "20250101"}, "start"),
        ("/v1/usage", {"start": "2025-02-01", "end": "2025-01-01"}, "start"),
        ("/v1/usage", {"group_by": "user"}, "group_by"),  # only admins group by user
        ("/v1/usage", {"group_by": "'; DROP TABLE usage_records; --"}, "group_by"),
        ("/admin/usage", {"group_by": "week"}, "group_by"),
        ("/admin/usage", {"user": "u" * 201}, "user"),
        ("/admin/usage", {"model": "bad\x00model"}, "model"),
        ("/admin/usage", {"end": "9999-99-99"}, "end"),
    ],
)
async def test_bad_parameters_are_a_400_naming_them(
    setup: Setup, path: str, params: dict[str, str], param: str
) -> None:
    response = await setup.client.get(path, params=params, headers=auth(ADMIN_KEY))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


@pytest.mark.anyio
async def test_a_database_failure_is_a_503_not_a_500(setup: Setup) -> None:
    await setup.components.database.aclose()
    setup.components.database.engine = Database("sqlite+aiosqlite:///:memory:").engine  # no table
    response = await setup.client.get("/v1/usage", headers=auth(ADMIN_KEY))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "service_unavailable"


# --- end to end ---------------------------------------------------------------------------

PRICED_IN, PRICED_OUT = Decimal("2"), Decimal("8")  # per million tokens, from interlock.toml
HAIKU_IN, HAIKU_OUT = Decimal("0.80"), Decimal("4.00")  # from the packaged price table


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    config = {
        "usage": {"flush_interval_ms": 20},
        "models.priced": {
            "deployments": [
                deployment(upstream.openai_base_url, "fake-model", input_price=2, output_price=8)
            ]
        },
        "models.haiku": {
            "deployments": [
                deployment(upstream.anthropic_base_url, "claude-3-5-haiku-20241022", "anthropic")
            ]
        },
        "models.broken": {"deployments": [deployment(upstream.openai_base_url, "broken")]},
    }
    with serve(make_settings(tmp_path_factory.mktemp("usage-gateway"), config)) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_upstream(request: pytest.FixtureRequest) -> None:
    if "upstream" in request.fixturenames:
        request.getfixturevalue("upstream").reset()


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.openai_base_url, api_key=ADMIN_KEY, max_retries=0) as c:
        yield c


HELLO = [{"role": "user", "content": "Say hello to the usage ledger"}]


def cost(input_tokens: int, output_tokens: int, in_price: Decimal, out_price: Decimal) -> Decimal:
    return (input_tokens * in_price + output_tokens * out_price) / 1_000_000


def test_a_complete_answer_leaves_one_row_with_the_provider_counts(
    client: openai.OpenAI, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="one two three four five")
    response = client.chat.completions.with_raw_response.create(model="priced", messages=HELLO)
    completion = response.parse()
    assert completion.usage is not None
    [row] = usage_rows(gateway, response.headers["x-request-id"])
    assert (row.input_tokens, row.output_tokens) == (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
    )
    assert row.cost == cost(row.input_tokens, row.output_tokens, PRICED_IN, PRICED_OUT) > 0
    assert (row.model, row.provider, row.deployment) == ("priced", "openai", "openai-fake-model")
    assert (row.status, row.error, row.partial, row.usage_source) == (200, None, False, "provider")
    assert (row.streaming, row.attempts, row.cache_hit) == (False, 1, False)
    assert row.tier  # the admin's
    assert row.key_id is not None and row.user_id is not None
    assert row.latency_ms >= 0 and row.ttft_ms is None


def test_a_complete_answer_without_provider_counts_leaves_an_estimate(
    client: openai.OpenAI, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    # The reply has no usage: the answer is read to its end and the counts estimated.
    upstream.default = Behavior(text="one two three four five", include_usage=False)
    response = client.chat.completions.with_raw_response.create(model="priced", messages=HELLO)
    assert response.parse().choices[0].message.content == "one two three four five"
    [row] = usage_rows(gateway, response.headers["x-request-id"])
    assert (row.status, row.error, row.partial, row.usage_source) == (200, None, False, "estimated")
    assert row.input_tokens > 0 and row.output_tokens > 0
    assert row.cost == cost(row.input_tokens, row.output_tokens, PRICED_IN, PRICED_OUT) > 0


def test_a_streamed_answer_priced_from_the_table(
    client: openai.OpenAI, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(text="streamed words for the ledger")
    response = client.chat.completions.with_raw_response.create(
        model="haiku", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(response.parse())
    usage = chunks[-1].usage
    assert usage is not None
    [row] = usage_rows(gateway, response.headers["x-request-id"])
    assert (row.input_tokens, row.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert row.cost == cost(row.input_tokens, row.output_tokens, HAIKU_IN, HAIKU_OUT) > 0
    assert (row.provider, row.streaming, row.partial, row.status) == ("anthropic", True, False, 200)
    assert row.ttft_ms is not None and 0 <= row.ttft_ms <= row.latency_ms


def test_a_failed_request_leaves_a_row_with_its_status_and_error(
    client: openai.OpenAI, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("broken", Behavior(status=401))  # the gateway's key is refused
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="broken", messages=HELLO)
    assert caught.value.status_code == 502
    [row] = usage_rows(gateway, caught.value.response.headers["x-request-id"])
    assert (row.status, row.error) == (502, "upstream_auth_failed")
    assert (row.input_tokens, row.output_tokens, row.cost) == (0, 0, 0)
    assert (row.partial, row.model) == (False, "broken")
    # The deployment tried is on the row, and so are the attempts (an auth failure: one).
    assert row.deployment and row.deployment == caught.value.response.headers.get(
        "x-interlock-deployment", row.deployment
    )
    assert row.attempts == 1


def test_a_request_for_an_unknown_model_leaves_a_row(
    gateway: RunningGateway, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HELLO)
    [row] = usage_rows(gateway, caught.value.response.headers["x-request-id"])
    assert (row.status, row.error, row.model, row.deployment) == (
        404,
        "model_not_found",
        "no-such-model",
        "",
    )


def test_an_unauthenticated_request_leaves_no_row(gateway: RunningGateway) -> None:
    response = httpx.post(
        f"{gateway.openai_base_url}/chat/completions",
        json={"model": "priced", "messages": HELLO},
        headers={"authorization": "Bearer not-a-key"},
    )
    assert response.status_code == 401
    assert usage_rows(gateway, response.headers["x-request-id"], wait=0.3) == []


def test_an_error_mid_stream_leaves_a_partial_row(
    client: openai.OpenAI, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(tokens=10, error_event_after=3)
    response = client.chat.completions.with_raw_response.create(
        model="priced", messages=HELLO, stream=True
    )
    received: list[str] = []

    def read_all() -> None:
        for chunk in response.parse():
            received.extend(c.delta.content or "" for c in chunk.choices)

    with pytest.raises(openai.APIError):
        read_all()
    delivered = "".join(received)
    assert delivered
    [row] = usage_rows(gateway, response.headers["x-request-id"])
    assert (row.status, row.partial, row.usage_source) == (200, True, "estimated")
    assert row.error is not None and row.error.startswith("upstream")
    assert row.output_tokens == (len(delivered) + 3) // 4 > 0
    assert row.input_tokens > 0
    assert row.cost == cost(row.input_tokens, row.output_tokens, PRICED_IN, PRICED_OUT)


def test_a_client_that_leaves_mid_stream_leaves_a_partial_row(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(tokens=400, token_delay=0.01)
    body = {"model": "priced", "messages": HELLO, "stream": True}
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST",
            f"{gateway.openai_base_url}/chat/completions",
            json=body,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        received = 0
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                received += 1
            if received >= 5:
                break  # and hang up, mid-answer
    [row] = usage_rows(gateway, request_id)
    assert (row.status, row.error, row.partial) == (499, "client_disconnected", True)
    assert row.usage_source == "estimated" and row.streaming
    assert 0 < row.output_tokens < 400  # what was delivered, not the whole answer
    assert row.cost == cost(row.input_tokens, row.output_tokens, PRICED_IN, PRICED_OUT)


def test_every_request_is_in_the_report(
    client: openai.OpenAI, gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.default = Behavior(tokens=3)
    before = httpx.get(
        f"{gateway.url}/admin/usage", params={"group_by": "model"}, headers=auth(ADMIN_KEY)
    ).json()
    requests_before = {d["group"]: d["requests"] for d in before["data"]}
    for _ in range(3):
        client.chat.completions.create(model="priced", messages=HELLO)
    after = httpx.get(
        f"{gateway.url}/admin/usage", params={"group_by": "model"}, headers=auth(ADMIN_KEY)
    ).json()
    requests_after = {d["group"]: d["requests"] for d in after["data"]}
    assert requests_after["priced"] == requests_before.get("priced", 0) + 3
    assert after["end"] == datetime.now(UTC).date().isoformat()


# --- the command --------------------------------------------------------------------------


def command_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTERLOCK_", "DATABASE_"))}
    env["INTERLOCK_DATA_DIR"] = str(data_dir)
    env["COLUMNS"] = "200"
    return env


async def run_usage(data_dir: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "interlock", "usage", *args]
    with anyio.fail_after(60):
        return await anyio.run_process(command, env=command_env(data_dir), check=False)


@pytest.mark.anyio
async def test_the_usage_command_prints_a_table_json_and_csv(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    database = Database(f"sqlite+aiosqlite:///{data_dir / 'interlock.db'}")
    try:
        await prepare(database)
        ledger = UsageLedger(database, outbox_dir=None)
        await ledger.start()
        ledger.record(usage_row(1, "ada", model="smart"))
        ledger.record(usage_row(2, "ada", model="fast", status=502, cost=Decimal("0.5")))
        ledger.record(usage_row(3, "bob", model="smart", cache_hit=True))
        ledger.record(usage_row(4, "bob", created_at=TODAY - timedelta(days=40)))  # too old
        await ledger.aclose()
    finally:
        await database.aclose()

    table = await run_usage(data_dir, "--by", "user")
    assert table.returncode == 0, table.stderr.decode()
    lines = table.stdout.decode().splitlines()
    [ada] = [line for line in lines if "│ ada " in line]
    assert ada.split("│")[2].strip() == "2" and "0.500450" in ada and "50.0%" in ada
    [total] = [line for line in lines if "total" in line]
    assert total.split("│")[2].strip() == "3"

    as_json = await run_usage(data_dir, "--by", "model", "--format", "json")
    body = json.loads(as_json.stdout)
    assert [(d["group"], d["requests"]) for d in body["data"]] == [("fast", 1), ("smart", 2)]
    assert body["total"]["error_rate"] == pytest.approx(0.3333)
    assert body["total"]["cache_hit_rate"] == pytest.approx(0.3333)
    assert Decimal(str(body["total"]["cost"])) == Decimal("0.5009")

    day = (TODAY - timedelta(days=40)).date().isoformat()
    as_csv = await run_usage(data_dir, "--since", day, "--until", day, "--format", "csv")
    assert as_csv.stdout.decode().splitlines() == [
        "day,requests,input_tokens,output_tokens,cached_tokens,cost,cache_hit_rate,error_rate,"
        "latency_p50_ms,latency_p95_ms",
        f"{day},1,100,20,0,0.00045,0.0,0.0,300.0,300.0",
        "total,1,100,20,0,0.00045,0.0,0.0,300.0,300.0",
    ]


@pytest.mark.anyio
async def test_the_usage_command_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    bad_date = await run_usage(tmp_path / "data", "--since", "2025-02-30")
    assert bad_date.returncode == 2
    assert bad_date.stderr.decode() == (
        "error: --since: expected a date, YYYY-MM-DD, got '2025-02-30'\n"
    )
    backwards = await run_usage(tmp_path / "data", "--since", "2025-02-02", "--until", "2025-02-01")
    assert backwards.returncode == 2 and b"--since: must not be after --until" in backwards.stderr
    empty = await run_usage(tmp_path / "data")  # no database yet: nothing to show
    assert empty.returncode == 2
    assert b"the database is empty" in empty.stderr and b"Traceback" not in empty.stderr
