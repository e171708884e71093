"""Credential scrubbing (``interlock.redaction``), the log processor built on it, and the
observability settings read from the environment."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from interlock.providers.classify import classify_status, sanitize_message
from interlock.redaction import looks_secret, scrub
from interlock.settings import ConfigError, load_settings
from interlock.telemetry.logging import (
    access_lines_written,
    configure_logging,
    redact,
    write_access_line,
)

OUR_KEY = "il_live_3kTq9ZcXb1YwP0aLmN7sDfGh2JkR5tUv0h4Xy2"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJlLXBhcnQ"


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        (f"key {OUR_KEY} refused", OUR_KEY),
        ("test key il_test_ZZZZaaaa1111bbbb2222cccc3333dddd4444ee", "ZZZZaaaa1111"),
        ("Authorization: Bearer abc.def-123", "abc.def-123"),
        ("bad key sk-proj-0123456789abcdef", "0123456789abcdef"),
        (f"session {JWT}", "eyJzdWIiOiJhZGEifQ"),
        ("fetch https://user:hunter2@db.internal:5432/x failed", "hunter2"),
        ("GET /v1/models?key=AIzaSyD-secret-value&alt=json", "AIzaSyD-secret-value"),
        ('{"api_key": "shh-123456", "model": "m"}', "shh-123456"),
        ("password=p4ss; user=ada", "p4ss"),
        ("Cookie: session=abcdef123456", "abcdef123456"),
        ("Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
    ],
)
def test_credentials_are_masked(text: str, leaked: str) -> None:
    cleaned = scrub(text)
    assert leaked not in cleaned
    assert "***" in cleaned
    assert looks_secret(text)


@pytest.mark.parametrize(
    "text",
    [
        "The model is overloaded, try again later.",
        "key id il_live_AbCd1234 was revoked",  # a key's public id is not a secret
        "monkey business with a turkey",
        "cache_key_hits=3 tokenizer ok",
        "https://api.openai.com/v1/chat/completions",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert scrub(text) == text
    assert not looks_secret(text)


def test_the_secret_in_use_is_masked_whatever_it_looks_like() -> None:
    assert scrub("upstream said plainword-777 is wrong", "plainword-777") == (
        "upstream said *** is wrong"
    )


def test_provider_error_bodies_are_scrubbed_before_they_become_errors() -> None:
    body = json.dumps(
        {
            "error": {
                "message": "proxy https://admin:topsecret@10.1.2.3/v1?api_key=abc123 said no",
                "type": "server_error",
            }
        }
    ).encode()
    error = classify_status(503, {}, body)
    assert "topsecret" not in error.message and "abc123" not in error.message
    assert "10.1.2.3" in error.message  # what is not a credential stays, for diagnosis
    assert sanitize_message("x " * 500).endswith("…")


def test_the_log_processor_masks_sensitive_fields_and_values() -> None:
    event = {
        "event": f"refused {OUR_KEY}",
        "authorization": "anything at all",
        "Cookie": "a=b",
        "headers": {"x-api-key": "k", "accept": "json", "note": "Bearer zzz"},
        "items": ["sk-0123456789abcdef", 3],
        "count": 3,
    }
    cleaned = redact(None, "info", event)
    assert cleaned["event"] == "refused il_live_***"
    assert cleaned["authorization"] == cleaned["Cookie"] == "***"
    assert cleaned["headers"] == {"x-api-key": "***", "accept": "json", "note": "Bearer ***"}
    assert cleaned["items"] == ["sk-***", 3]
    assert cleaned["count"] == 3


def test_configured_logging_writes_redacted_json_lines() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    try:
        log = structlog.get_logger("test")
        log.debug("hidden")
        log.info("key_used", key=OUR_KEY, user_id="u1")
        try:
            raise RuntimeError(f"boom with {OUR_KEY}")
        except RuntimeError:
            log.exception("crashed")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["key_used", "crashed"]
    assert lines[0]["user_id"] == "u1" and lines[0]["level"] == "info"
    assert OUR_KEY not in stream.getvalue()
    assert "RuntimeError" in lines[1]["exception"]


@pytest.mark.parametrize(("level", "written"), [("info", True), ("warning", False)])
def test_access_lines_are_known_to_be_off_above_info(level: str, written: bool) -> None:
    stream = io.StringIO()
    configure_logging(level, "json", stream=stream)
    try:
        assert access_lines_written() is written
        write_access_line({"request_id": "req_1", "status": 200})
    finally:
        structlog.reset_defaults()
    assert bool(stream.getvalue()) is written
    assert access_lines_written()  # another configuration: structlog decides


# --- settings -------------------------------------------------------------------------------


def test_logs_are_json_unless_a_person_is_watching() -> None:
    # Under pytest stderr is captured: not a terminal.
    assert load_settings({}).log_format == "json"
    assert load_settings({"INTERLOCK_LOG_FORMAT": "console"}).log_format == "console"


def test_sentry_settings_come_from_the_environment() -> None:
    assert load_settings({}).sentry is None
    settings = load_settings(
        {
            "SENTRY_DSN": "https://abc123@o1.ingest.example.io/42",
            "SENTRY_ENVIRONMENT": "staging",
            "SENTRY_TRACES_SAMPLE_RATE": "0.25",
        }
    )
    assert settings.sentry is not None
    assert (settings.sentry.environment, settings.sentry.traces_sample_rate) == ("staging", 0.25)
    assert "abc123" not in repr(settings.sentry) and "abc123" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"SENTRY_DSN": "not a dsn"}, "SENTRY_DSN: expected a DSN"),
        ({"SENTRY_DSN": "https://o1.ingest.example.io/42"}, "SENTRY_DSN: expected a DSN"),
        ({"SENTRY_TRACES_SAMPLE_RATE": "2"}, "SENTRY_TRACES_SAMPLE_RATE: must be between 0 and 1"),
    ],
)
def test_bad_sentry_settings_are_named(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    [line] = caught.value.problems
    assert line.startswith(problem)
    assert "ingest" not in line  # never echoes the DSN
