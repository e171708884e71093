"""Provider failures → UpstreamError subclasses: statuses, error bodies, stream errors,
Retry-After, transport exceptions, and messages that are safe to show."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import msgspec
import pytest

from interlock.errors import (
    UpstreamAuthFailed,
    UpstreamConnectionFailed,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamProtocolError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from interlock.providers.classify import (
    classify_error_body,
    classify_error_event,
    classify_status,
    classify_transport,
    parse_retry_after,
    sanitize_message,
)


def openai_error(message: str, type_: str | None = None, code: str | None = None) -> bytes:
    return msgspec.json.encode(
        {"error": {"message": message, "type": type_, "param": None, "code": code}}
    )


def anthropic_error(type_: str, message: str) -> bytes:
    return msgspec.json.encode({"type": "error", "error": {"type": type_, "message": message}})


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, UpstreamRejected),
        (401, UpstreamAuthFailed),
        (402, UpstreamAuthFailed),
        (403, UpstreamAuthFailed),
        (404, UpstreamRejected),
        (408, UpstreamTimeout),
        (413, UpstreamRejected),
        (422, UpstreamRejected),
        (429, UpstreamRateLimited),
        (500, UpstreamOverloaded),
        (502, UpstreamOverloaded),
        (503, UpstreamOverloaded),
        (504, UpstreamOverloaded),
        (529, UpstreamOverloaded),
        (507, UpstreamOverloaded),
        (418, UpstreamRejected),
        (302, UpstreamProtocolError),
    ],
)
def test_status_decides_the_class(status: int, expected: type[UpstreamError]) -> None:
    error = classify_status(status, {}, b"")
    assert type(error) is expected
    assert error.status == expected.status


def test_status_wins_over_a_generic_error_type() -> None:
    # OpenAI answers a bad key with 401 and type "invalid_request_error".
    body = openai_error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
    assert type(classify_status(401, {}, body)) is UpstreamAuthFailed


def test_rejections_are_not_retryable_and_others_are() -> None:
    assert not classify_status(400, {}, b"").retryable
    assert classify_status(400, {}, b"").client_fault
    assert classify_status(503, {}, b"").retryable
    assert not classify_status(503, {}, b"").client_fault


def test_openai_context_length_code() -> None:
    body = openai_error(
        "This model's maximum context length is 8192 tokens.",
        "invalid_request_error",
        "context_length_exceeded",
    )
    error = classify_status(400, {}, body)
    assert type(error) is UpstreamRejected
    assert error.code == "context_length_exceeded"


def test_anthropic_prompt_too_long_message() -> None:
    body = anthropic_error(
        "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum"
    )
    error = classify_status(400, {}, body)
    assert type(error) is UpstreamRejected
    assert error.code == "context_length_exceeded"


def test_content_filter_code() -> None:
    body = openai_error("Your request was rejected.", "invalid_request_error", "content_filter")
    assert classify_status(400, {}, body).code == "content_filter"


def test_a_plain_rejection_keeps_the_generic_code() -> None:
    body = openai_error("Unknown parameter 'foo'.", "invalid_request_error", "unknown_parameter")
    assert classify_status(400, {}, body).code == "upstream_rejected"


def test_exhausted_quota_is_an_account_problem_not_a_rate_limit() -> None:
    body = openai_error(
        "You exceeded your current quota.", "insufficient_quota", "insufficient_quota"
    )
    assert type(classify_status(429, {}, body)) is UpstreamAuthFailed


def test_anthropic_overloaded_529() -> None:
    error = classify_status(529, {}, anthropic_error("overloaded_error", "Overloaded"))
    assert type(error) is UpstreamOverloaded
    assert "Overloaded" in error.message


def test_the_provider_message_is_included_sanitised() -> None:
    body = openai_error("Bad key sk-proj-ABCDEFGHIJKLMNOPQRSTUV for https://u:pw@host/v1")
    error = classify_status(400, {}, body, secret="sk-proj-ABCDEFGHIJKLMNOPQRSTUV")
    assert "sk-proj-ABCDEFGHIJKLMNOPQRSTUV" not in error.message
    assert "u:pw" not in error.message
    assert error.message.startswith(UpstreamRejected.message)
    assert "Bad key" in error.message


def test_a_non_json_body_is_used_as_text() -> None:
    error = classify_status(502, {}, b"<html>Bad Gateway</html>")
    assert type(error) is UpstreamOverloaded
    assert "Bad Gateway" in error.message


def test_retry_after_is_attached() -> None:
    error = classify_status(
        429, {"retry-after": "7"}, anthropic_error("rate_limit_error", "slow down")
    )
    assert type(error) is UpstreamRateLimited
    assert error.retry_after == 7.0


# ---- Retry-After -----------------------------------------------------------------------------


def test_retry_after_seconds() -> None:
    assert parse_retry_after({"retry-after": "12"}) == 12.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5


def test_retry_after_ms_wins() -> None:
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5


def test_retry_after_http_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(datetime(2025, 1, 1, 12, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": later}, now=now.timestamp()) == 30.0


def test_retry_after_date_in_the_past_is_zero() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    earlier = format_datetime(datetime(2024, 12, 31, tzinfo=UTC), usegmt=True)
    assert parse_retry_after({"retry-after": earlier}, now=now.timestamp()) == 0.0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"retry-after": "soon"},
        {"retry-after": "-3"},
        {"retry-after-ms": "nan"},
        {"retry-after": "inf"},
    ],
)
def test_retry_after_absent_or_unreadable(headers: dict[str, str]) -> None:
    assert parse_retry_after(headers) is None


def test_bad_retry_after_ms_falls_back_to_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "x", "retry-after": "3"}) == 3.0


# ---- errors inside a 200 stream --------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_type", "code", "expected"),
    [
        ("overloaded_error", None, UpstreamOverloaded),
        ("api_error", None, UpstreamOverloaded),
        ("server_error", None, UpstreamOverloaded),
        ("rate_limit_error", None, UpstreamRateLimited),
        ("requests", "rate_limit_exceeded", UpstreamRateLimited),
        ("authentication_error", None, UpstreamAuthFailed),
        ("invalid_request_error", None, UpstreamRejected),
        ("timeout_error", None, UpstreamTimeout),
        ("BadRequestError", 400, UpstreamRejected),  # vLLM puts the status in "code"
        ("InternalServerError", "503", UpstreamOverloaded),
        ("something_new", None, UpstreamError),
        (None, None, UpstreamError),
    ],
)
def test_stream_error_by_type(
    error_type: str | None, code: str | int | None, expected: type[UpstreamError]
) -> None:
    assert type(classify_error_event(error_type, code, "boom")) is expected


def test_stream_error_context_length() -> None:
    error = classify_error_event("invalid_request_error", "context_length_exceeded", "too long")
    assert error.code == "context_length_exceeded"


def test_error_body_of_an_event() -> None:
    error = classify_error_body(openai_error("Overloaded", "server_error"))
    assert type(error) is UpstreamOverloaded
    assert classify_error_body(b'{"choices": []}') is None


# ---- transport -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (aiohttp.ConnectionTimeoutError(), UpstreamTimeout),
        (aiohttp.SocketTimeoutError(), UpstreamTimeout),
        (aiohttp.ServerTimeoutError(), UpstreamTimeout),
        (TimeoutError(), UpstreamTimeout),
        (aiohttp.ServerDisconnectedError(), UpstreamConnectionFailed),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), UpstreamConnectionFailed),
        (ConnectionResetError(), UpstreamConnectionFailed),
        (ConnectionRefusedError(), UpstreamConnectionFailed),
        (aiohttp.ClientPayloadError("Response payload is not completed"), UpstreamProtocolError),
        (OSError("network unreachable"), UpstreamConnectionFailed),
    ],
)
def test_transport_errors(exc: BaseException, expected: type[UpstreamError]) -> None:
    assert type(classify_transport(exc)) is expected


def test_transport_messages_never_carry_the_exception_text() -> None:
    error = classify_transport(aiohttp.ServerDisconnectedError("https://user:secret@host/v1"))
    assert "secret" not in error.message
    assert error.message.startswith(UpstreamConnectionFailed.message)


# ---- sanitising ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Incorrect API key provided: sk-abc123def456ghi789.", "abc123def456"),
        ("key sk-ant-api03-AAAAAAAAAAAAAAAAAAAA is invalid", "AAAAAAAAAAAA"),
        ("header was Authorization: Bearer eyJhbGciOi.xyz", "eyJhbGciOi"),
        ("could not reach https://admin:hunter2@proxy.internal/v1", "hunter2"),
        ("GET /v1/models?key=AIzaSyD-1234567890&x=1", "AIzaSyD"),
        ('{"api_key": "opaque-value-123"}', "opaque-value-123"),
    ],
)
def test_sanitize_masks_credentials(text: str, leak: str) -> None:
    clean = sanitize_message(text)
    assert leak not in clean
    assert "***" in clean


def test_sanitize_masks_the_known_secret_whatever_its_shape() -> None:
    assert "opaque" not in sanitize_message("echo: opaque.key.value", secret="opaque.key.value")


def test_sanitize_collapses_whitespace_and_truncates() -> None:
    clean = sanitize_message("line one\n\n\tline two " + "x" * 1000)
    assert clean.startswith("line one line two x")
    assert len(clean) <= 200
    assert clean.endswith("…")
