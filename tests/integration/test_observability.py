"""Logs, Sentry reports and health probes of a real gateway on loopback, in front of fake
upstreams: the access lines as written, the envelopes the Sentry SDK really posts (to a tiny
HTTP receiver on 127.0.0.1), readiness after an upstream was stopped, and a canary secret
that never appears in any log line, Sentry envelope or error body."""

from __future__ import annotations

import gzip
import json
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sentry_sdk
import structlog

from interlock.errors import UpstreamOverloaded
from interlock.settings import SentrySettings
from interlock.telemetry.logging import configure_logging
from interlock.telemetry.sentry import sentry_reporting
from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve

HELLO = [{"role": "user", "content": "Say hello"}]
CANARY = "canary" + secrets.token_hex(12)


# --- what the test observes ------------------------------------------------------------------


class CapturedLines:
    """A stream for structlog that keeps every line written to it."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def access(self, request_id: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.records()
            if r.get("logger") == "interlock.access" and r.get("request_id") == request_id
        ]


class SentryReceiver:
    """What Sentry's ingest endpoint would receive: the envelopes the SDK posts."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                encoding = self.headers.get("content-encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli  # type: ignore[import-not-found]

                    body = brotli.decompress(body)
                receiver.bodies.append(body)
                receiver.paths.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self._server.server_address[1]}/1"

    def events(self) -> list[dict[str, Any]]:
        """The ``event`` items of every envelope received."""
        found = []
        for body in list(self.bodies):
            lines = body.split(b"\n")
            index = 1  # past the envelope header
            while index + 1 < len(lines):
                header = json.loads(lines[index])
                payload = lines[index + 1]
                if header.get("type") == "event":
                    found.append(json.loads(payload))
                index += 2
        return found

    def wait_for(self, match: Callable[[dict[str, Any]], bool], seconds: float = 10.0) -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for event in self.events():
                if match(event):
                    return event
            time.sleep(0.05)
        raise AssertionError(f"no such Sentry event; got {self.events()}")

    @property
    def text(self) -> str:
        return b"".join(self.bodies).decode("utf-8", "replace")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def eventually(check: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


# --- the gateway -----------------------------------------------------------------------------


def deployment(base_url: str, name: str, provider: str = "openai") -> dict[str, Any]:
    return {
        "provider": provider,
        "model": "fake-model",
        "base_url": base_url,
        "api_key_env": "FAKE_PROVIDER_KEY",
        "name": name,
    }


@pytest.fixture(scope="module")
def lines() -> Iterator[CapturedLines]:
    captured = CapturedLines()
    configure_logging("debug", "json", stream=captured)
    try:
        yield captured
    finally:
        structlog.reset_defaults()


@pytest.fixture(scope="module")
def sentry() -> Iterator[SentryReceiver]:
    receiver = SentryReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def doomed() -> Iterator[FakeUpstream]:
    """An upstream that a test stops while the gateway runs."""
    fake = FakeUpstream().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream,
    doomed: FakeUpstream,
    lines: CapturedLines,
    sentry: SentryReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    config = {
        "models.gpt-fake": {"deployments": [deployment(upstream.openai_base_url, "main-gpt")]},
        "models.claude-fake": {
            "deployments": [deployment(upstream.anthropic_base_url, "main-claude", "anthropic")]
        },
        "models.flaky": {"deployments": [deployment(upstream.openai_base_url, "flaky-gpt")]},
        "models.doomed": {"deployments": [deployment(doomed.openai_base_url, "doomed-gpt")]},
        "health": {"probe_interval": 0.2, "probe_timeout": 1.0},
        "logging": {"prompt_log_users": ["someone-else"]},
    }
    settings = make_settings(
        tmp_path_factory.mktemp("observe"),
        config,
        env={"SENTRY_DSN": sentry.dsn, "SENTRY_ENVIRONMENT": "test"},
    )
    with serve(settings) as running:
        yield running


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.openai_base_url, api_key=ADMIN_KEY, max_retries=0) as c:
        yield c


def admin_key_id(gateway: RunningGateway) -> str:
    response = httpx.get(f"{gateway.url}/v1/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert response.status_code == 200, response.text
    ids: list[str] = [key["id"] for key in response.json()["data"]]
    return ids[0]


def last_call(upstream: FakeUpstream) -> Any:
    """The last chat call the upstream served (the probes' GETs left out)."""
    return [r for r in upstream.ledger if r.method == "POST"][-1]


# --- access lines ------------------------------------------------------------------------------


def test_one_access_line_per_chat_request_with_its_numbers(
    client: openai.OpenAI, upstream: FakeUpstream, lines: CapturedLines, gateway: RunningGateway
) -> None:
    upstream.default = Behavior(text="Hello there friend")
    response = client.chat.completions.with_raw_response.create(
        model="gpt-fake", messages=HELLO, temperature=0
    )
    request_id = response.headers["x-request-id"]
    [line] = eventually(lambda: lines.access(request_id))
    assert line["event"] == "request" and line["level"] == "info"
    assert line["route"] == "/v1/chat/completions" and line["method"] == "POST"
    assert (line["status"], line["model"], line["deployment"]) == (200, "gpt-fake", "main-gpt")
    assert (line["attempts"], line["cache"], line["error"]) == (1, "miss", None)
    assert line["output_tokens"] == 3 and line["input_tokens"] > 0
    assert line["latency_ms"] >= 0 and line["ttft_ms"] is None
    assert line["user_id"] and line["key_id"] == admin_key_id(gateway)
    assert "cost" in line
    # The same id went upstream with the call.
    assert last_call(upstream).headers["x-request-id"] == request_id

    streamed = client.chat.completions.with_raw_response.create(
        model="claude-fake", messages=HELLO, stream=True
    )
    for _ in streamed.parse():
        pass
    stream_id = streamed.headers["x-request-id"]
    [line] = eventually(lambda: lines.access(stream_id))
    assert line["deployment"] == "main-claude" and line["streaming"] is True
    assert line["ttft_ms"] is not None and line["ttft_ms"] <= line["latency_ms"]
    assert last_call(upstream).headers["x-request-id"] == stream_id
    # Nothing of the conversation: not the prompt, not the answer.
    assert "Say hello" not in lines.text and "Hello there friend" not in lines.text


def test_other_routes_get_one_line_and_health_only_at_debug(
    gateway: RunningGateway, lines: CapturedLines
) -> None:
    response = httpx.get(
        f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {ADMIN_KEY}"}
    )
    request_id = response.headers["x-request-id"]
    [line] = eventually(lambda: lines.access(request_id))
    assert (line["route"], line["method"], line["status"]) == ("/v1/models", "GET", 200)
    assert line["key_id"] == admin_key_id(gateway) and line["level"] == "info"

    refused = httpx.get(
        f"{gateway.url}/admin/users/{'x' * 8}", headers={"authorization": "Bearer nope"}
    )
    assert refused.headers["x-request-id"].startswith("req_")  # made by the middleware
    [line] = eventually(lambda: lines.access(refused.headers["x-request-id"]))
    assert (line["route"], line["status"], line["key_id"]) == ("/admin/users/{user_id}", 401, None)

    for path in ("/health/live", "/metrics"):
        probe = httpx.get(f"{gateway.url}{path}")
        [line] = eventually(lambda: lines.access(probe.headers["x-request-id"]))  # noqa: B023
        assert (line["route"], line["status"], line["level"]) == (path, 200, "debug")


# --- the canary --------------------------------------------------------------------------------


def test_a_canary_secret_never_reaches_logs_sentry_or_error_bodies(
    gateway: RunningGateway,
    upstream: FakeUpstream,
    lines: CapturedLines,
    sentry: SentryReceiver,
) -> None:
    bodies: list[str] = []
    # As a wrong API key (in two shapes).
    for key in (CANARY, f"il_live_{CANARY}{CANARY}"):
        refused = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "gpt-fake", "messages": HELLO},
            headers={"authorization": f"Bearer {key}"},
        )
        assert refused.status_code == 401
        bodies.append(refused.text)
    # In the prompt.
    upstream.default = Behavior(text="fine thanks")
    answered = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gpt-fake", "messages": [{"role": "user", "content": f"My {CANARY}"}]},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    assert answered.status_code == 200
    # In a provider's error body, as URL credentials and query parameters.
    upstream.set_model_behavior(
        "fake-model",
        Behavior(
            status=503,
            error_message=(
                f"backend https://admin:{CANARY}@internal.example/v1?key={CANARY} failed; "
                f"api_key={CANARY}"
            ),
        ),
    )
    try:
        failed = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "flaky", "messages": [{"role": "user", "content": f"x {CANARY}"}]},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
    finally:
        upstream.set_model_behavior("fake-model", None)
    assert failed.status_code == 503
    bodies.append(failed.text)
    assert "internal.example" in failed.text and "***" in failed.text  # scrubbed, not dropped
    request_id = failed.headers["x-request-id"]
    eventually(lambda: lines.access(request_id))
    sentry.wait_for(lambda e: e.get("tags", {}).get("request_id") == request_id)

    for body in bodies:
        assert CANARY not in body
    assert CANARY not in lines.text
    assert CANARY not in sentry.text


# --- Sentry -------------------------------------------------------------------------------------


def test_upstream_failures_go_to_sentry_with_tags_and_breadcrumbs(
    gateway: RunningGateway, upstream: FakeUpstream, sentry: SentryReceiver
) -> None:
    upstream.set_model_behavior("fake-model", Behavior(status=503))
    try:
        failed = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "flaky", "messages": [{"role": "user", "content": "Say hello twice"}]},
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
    finally:
        upstream.set_model_behavior("fake-model", None)
    assert failed.status_code == 503
    request_id = failed.headers["x-request-id"]
    event = sentry.wait_for(lambda e: e.get("tags", {}).get("request_id") == request_id)
    assert event["level"] == "warning"
    assert event["environment"] == "test"
    tags = event["tags"]
    assert (tags["model"], tags["deployment"]) == ("flaky", "flaky-gpt")
    assert tags["error_code"] == "upstream_overloaded"
    assert tags["error_class"] == "UpstreamOverloaded"
    crumbs = {crumb["category"]: crumb for crumb in event["breadcrumbs"]["values"]}
    assert crumbs["ai.request"]["data"]["messages"] == 1
    assert crumbs["ai.request"]["data"]["input_chars"] == len("Say hello twice")
    assert crumbs["ai.response"]["data"]["status"] == 503
    assert crumbs["ai.response"]["data"]["attempts"] >= 1
    # Only this request's breadcrumbs, and no content.
    assert {c["data"].get("request_id") for c in event["breadcrumbs"]["values"]} == {request_id}
    assert "Say hello twice" not in json.dumps(event)
    assert "user" not in event and "request" not in event


def test_unhandled_errors_are_reported_scrubbed(tmp_path: Path) -> None:
    receiver = SentryReceiver()
    try:
        settings = SentrySettings(dsn=receiver.dsn, environment=None, traces_sample_rate=0.0)
        with sentry_reporting(settings) as reporter:
            assert reporter.enabled
            assert sentry_sdk.get_client().should_send_default_pii() is False
            try:
                raise RuntimeError(f"exploded near Bearer {CANARY} and sk-{CANARY}")
            except RuntimeError as exc:
                reporter.unhandled(exc, {"request_id": "req_1", "model": "m", "deployment": ""})
            reporter.upstream_failed(UpstreamOverloaded(), {"request_id": "req_2"})
        events = receiver.events()  # closing flushed them
    finally:
        receiver.close()
    crash = next(e for e in events if e["tags"]["request_id"] == "req_1")
    assert crash["level"] == "error" and crash["tags"]["error_code"] == "internal_error"
    assert crash["exception"]["values"][0]["type"] == "RuntimeError"
    assert "Bearer ***" in crash["exception"]["values"][0]["value"]
    assert "deployment" not in crash["tags"]  # empty tags are left out
    upstream = next(e for e in events if e["tags"]["request_id"] == "req_2")
    assert upstream["level"] == "warning"
    assert CANARY not in receiver.text


def test_an_exception_logged_in_the_background_is_reported(lines: CapturedLines) -> None:
    receiver = SentryReceiver()
    try:
        settings = SentrySettings(dsn=receiver.dsn, environment=None, traces_sample_rate=0.0)
        with sentry_reporting(settings):
            try:
                raise OSError(f"disk full near sk-{CANARY}")
            except OSError:
                structlog.get_logger("interlock.telemetry.ledger").exception("usage_flush_failed")
            structlog.get_logger("x").error("no exception here")  # not an event
        events = receiver.events()
    finally:
        receiver.close()
    [event] = events
    assert event["tags"]["log_event"] == "usage_flush_failed"
    assert event["exception"]["values"][0]["type"] == "OSError"
    assert CANARY not in receiver.text


def test_without_a_dsn_nothing_is_reported() -> None:
    with sentry_reporting(None) as reporter:
        assert not reporter.enabled
        reporter.unhandled(RuntimeError("x"), {})  # a no-op


# --- health --------------------------------------------------------------------------------------


def test_readiness_reports_a_stopped_upstream_from_the_background_probe(
    gateway: RunningGateway, upstream: FakeUpstream, doomed: FakeUpstream
) -> None:
    def deployments() -> dict[str, Any]:
        body = httpx.get(f"{gateway.url}/health/ready").json()
        found: dict[str, Any] = body["checks"]["models"]["deployments"]
        return found

    eventually(lambda: deployments()["doomed-gpt"]["status"] == "ok")
    probes_before = sum(1 for r in upstream.ledger if r.path == "/v1/models")
    doomed.stop()
    eventually(lambda: deployments()["doomed-gpt"]["status"] == "down")
    ready = httpx.get(f"{gateway.url}/health/ready")
    body = ready.json()
    assert ready.status_code == 200  # others are reachable: degraded, still ready
    assert body["status"] == "degraded"
    models = body["checks"]["models"]
    assert models["status"] == "degraded"
    assert models["deployments"]["doomed-gpt"] == {
        "status": "down",
        "provider": "openai",
        "reason": "connection failed",
        "checked_seconds_ago": models["deployments"]["doomed-gpt"]["checked_seconds_ago"],
    }
    assert models["deployments"]["main-gpt"]["status"] == "ok"
    assert models["deployments"]["main-claude"]["provider"] == "anthropic"
    assert body["checks"]["database"]["status"] == "ok"
    # No URL, port or key in the answer.
    assert "127.0.0.1" not in ready.text and "sk-" not in ready.text
    # Health requests call no provider: the probes are paced by the interval alone.
    # Three deployments live on ``upstream``: three probes a round, a round per 0.2 s.
    before = sum(1 for r in upstream.ledger if r.path == "/v1/models")
    started = time.monotonic()
    for _ in range(20):
        httpx.get(f"{gateway.url}/health/ready")
    elapsed = time.monotonic() - started
    after = sum(1 for r in upstream.ledger if r.path == "/v1/models")
    assert after - before <= 3 * (elapsed / 0.2 + 2)
    assert after - before < 20 * 3  # a probe per health request would be 60 at least
    assert before > probes_before  # but they do keep running


def test_readiness_fails_when_every_deployment_is_unreachable(tmp_path: Path) -> None:
    fake = FakeUpstream().start()
    config = {
        "models.only": {"deployments": [deployment(fake.openai_base_url, "only-gpt")]},
        "health": {"probe_interval": 0.2, "probe_timeout": 1.0},
    }
    with serve(make_settings(tmp_path, config)) as gateway:
        ok = eventually(lambda: httpx.get(f"{gateway.url}/health/ready").status_code == 200)
        assert ok
        fake.stop()
        eventually(lambda: httpx.get(f"{gateway.url}/health/ready").status_code == 503)
        body = httpx.get(f"{gateway.url}/health/ready").json()
        assert body["status"] == "unavailable"
        assert body["checks"]["models"]["status"] == "down"
        assert httpx.get(f"{gateway.url}/health/live").status_code == 200


def test_credentials_refused_by_the_provider_mark_a_deployment_down(tmp_path: Path) -> None:
    with FakeUpstream(require_key="sk-the-right-key") as fake:
        config = {
            "models.only": {"deployments": [deployment(fake.openai_base_url, "only-gpt")]},
            "health": {"probe_interval": 0.2, "probe_timeout": 1.0},
        }
        with serve(make_settings(tmp_path, config)) as gateway:
            eventually(lambda: httpx.get(f"{gateway.url}/health/ready").status_code == 503)
            models = httpx.get(f"{gateway.url}/health/ready").json()["checks"]["models"]
    assert models["deployments"]["only-gpt"]["reason"] == "credentials refused (HTTP 401)"


# --- the opt-in prompt log -----------------------------------------------------------------------


def test_prompts_are_logged_only_for_the_listed_users(
    tmp_path: Path, upstream: FakeUpstream, lines: CapturedLines, gateway: RunningGateway
) -> None:
    assert not [r for r in lines.records() if r.get("logger") == "interlock.prompts"]
    config = {
        "models.gpt-fake": {"deployments": [deployment(upstream.openai_base_url, "main-gpt")]},
        "logging": {"prompt_log_users": ["development"]},  # the insecure mode's user
    }
    upstream.default = Behavior(text="logged answer here")
    settings = make_settings(tmp_path, config, env={"INTERLOCK_INSECURE_NO_AUTH": "1"})
    with serve(settings) as listed:
        response = httpx.post(
            f"{listed.url}/v1/chat/completions",
            json={"model": "gpt-fake", "messages": [{"role": "user", "content": "log me"}]},
        )
        streamed = httpx.post(
            f"{listed.url}/v1/chat/completions",
            json={
                "model": "gpt-fake",
                "stream": True,
                "messages": [{"role": "user", "content": "log me too"}],
            },
        )
    assert response.status_code == streamed.status_code == 200

    def prompt_lines() -> list[dict[str, Any]]:
        return [r for r in lines.records() if r.get("logger") == "interlock.prompts"]

    logged = eventually(lambda: len(prompt_lines()) >= 2 and prompt_lines())
    by_id = {r["request_id"]: r for r in logged}
    first = by_id[response.headers["x-request-id"]]
    assert first["messages"] == [{"role": "user", "text": "log me"}]
    assert first["answer"] == "logged answer here" and first["user_id"] == "development"
    second = by_id[streamed.headers["x-request-id"]]
    assert second["answer"] == "logged answer here" and second["level"] == "info"
