"""Provider failures → ``interlock.errors.UpstreamError`` subclasses, in one place.

Both HTTP adapters call these functions; the decisions live in the tables below, not in
branches spread over the adapters:

- ``classify_status``: a non-2xx reply, by HTTP status, refined by the structured error in
  the body (OpenAI ``{"error": {type, code, message}}``, Anthropic ``{"type": "error",
  "error": {type, message}}``), with ``retry_after`` from ``retry-after-ms`` / ``retry-after``;
- ``classify_error_event``: an error reported inside a 200 event stream, by its type/code;
- ``classify_transport``: an exception of the upstream client, aiohttp or the socket.

Every message built here is safe to show a caller: the provider's own message is truncated
and stripped of anything that looks like a credential, and transport errors never include
the exception text (it may name hosts, URLs or headers).
"""

from __future__ import annotations

import asyncio
import math
import socket
import ssl
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import msgspec

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
from interlock.providers import upstream_errors as transport
from interlock.redaction import scrub

# ---- the tables ----------------------------------------------------------------------------

_BY_STATUS: dict[int, type[UpstreamError]] = {
    400: UpstreamRejected,
    401: UpstreamAuthFailed,
    402: UpstreamAuthFailed,  # Anthropic billing: our account, not the caller's request
    403: UpstreamAuthFailed,
    404: UpstreamRejected,
    408: UpstreamTimeout,
    409: UpstreamError,  # a conflict on the provider's side: another attempt may pass
    413: UpstreamRejected,
    422: UpstreamRejected,
    429: UpstreamRateLimited,
    500: UpstreamOverloaded,
    502: UpstreamOverloaded,
    503: UpstreamOverloaded,
    504: UpstreamOverloaded,
    529: UpstreamOverloaded,  # Anthropic "overloaded_error"
}

# Structured error types and codes (OpenAI ``type``/``code``, Anthropic ``error.type``).
# They decide alone for in-stream errors, which have no status, and override the status
# only where they say something the status cannot (see ``_OVERRIDES``).
_BY_ERROR_TYPE: dict[str, type[UpstreamError]] = {
    "invalid_request_error": UpstreamRejected,
    "not_found_error": UpstreamRejected,
    "request_too_large": UpstreamRejected,
    "context_length_exceeded": UpstreamRejected,
    "content_filter": UpstreamRejected,
    "content_policy_violation": UpstreamRejected,
    "authentication_error": UpstreamAuthFailed,
    "permission_error": UpstreamAuthFailed,
    "invalid_api_key": UpstreamAuthFailed,
    "billing_error": UpstreamAuthFailed,
    "insufficient_quota": UpstreamAuthFailed,
    "rate_limit_error": UpstreamRateLimited,
    "rate_limit_exceeded": UpstreamRateLimited,
    "overloaded_error": UpstreamOverloaded,
    "api_error": UpstreamOverloaded,
    "server_error": UpstreamOverloaded,
    "service_unavailable": UpstreamOverloaded,
    "timeout_error": UpstreamTimeout,
    "timeout": UpstreamTimeout,
}

# An exhausted quota arrives as a 429 but no amount of waiting fixes it: it is our account
# that needs attention, so fail over and let the circuit open, as for bad credentials.
_OVERRIDES: frozenset[str] = frozenset({"insufficient_quota", "billing_error"})

# Rejections that say more than "rejected": the canonical code the caller sees.
_REJECTION_CODES: dict[str, str] = {
    "context_length_exceeded": "context_length_exceeded",
    "string_above_max_length": "context_length_exceeded",
    "content_filter": "content_filter",
    "content_policy_violation": "content_filter",
}

# Anthropic (and several OpenAI-compatible servers such as vLLM) have no structured code for
# an over-long prompt; these fixed phrases are the documented wording. Matched only on
# rejections, never to choose the error class.
_CONTEXT_LENGTH_PHRASES = (
    "prompt is too long",
    "maximum context length",
    "context length exceeded",
    "context window",
)

_TRANSPORT: tuple[tuple[type[BaseException], type[UpstreamError], str], ...] = (
    # Order matters: the first match wins, so subclasses come before their bases.
    (transport.ConnectTimeout, UpstreamTimeout, "connect timeout"),
    (transport.ReadTimeout, UpstreamTimeout, "read timeout"),
    (transport.ServerDisconnected, UpstreamConnectionFailed, "server disconnected"),
    (transport.BodyIncomplete, UpstreamProtocolError, "stream ended early"),
    (transport.InvalidResponse, UpstreamProtocolError, "invalid HTTP response"),
    (transport.InvalidRequestHeader, UpstreamConnectionFailed, "invalid request header"),
    (socket.gaierror, UpstreamConnectionFailed, "name resolution failed"),
    (ssl.SSLCertVerificationError, UpstreamConnectionFailed, "certificate error"),
    (ssl.SSLError, UpstreamConnectionFailed, "TLS error"),
    (ConnectionRefusedError, UpstreamConnectionFailed, "connection failed"),
    # aiohttp's timeout errors are also connection errors.
    (aiohttp.ConnectionTimeoutError, UpstreamTimeout, "connect timeout"),
    (aiohttp.ServerTimeoutError, UpstreamTimeout, "read timeout"),
    (asyncio.TimeoutError, UpstreamTimeout, "timeout"),
    (aiohttp.ClientConnectorDNSError, UpstreamConnectionFailed, "name resolution failed"),
    (aiohttp.ClientConnectorCertificateError, UpstreamConnectionFailed, "certificate error"),
    (aiohttp.ClientSSLError, UpstreamConnectionFailed, "TLS error"),
    (aiohttp.ClientConnectorError, UpstreamConnectionFailed, "connection failed"),
    (aiohttp.ClientOSError, UpstreamConnectionFailed, "connection lost"),
    (aiohttp.ServerDisconnectedError, UpstreamConnectionFailed, "server disconnected"),
    (aiohttp.ClientPayloadError, UpstreamProtocolError, "stream ended early"),
    (aiohttp.ClientResponseError, UpstreamProtocolError, "invalid HTTP response"),
    (aiohttp.InvalidURL, UpstreamConnectionFailed, "invalid URL"),
    (ConnectionResetError, UpstreamConnectionFailed, "connection reset"),
    (aiohttp.ClientError, UpstreamConnectionFailed, "connection error"),
    (OSError, UpstreamConnectionFailed, "connection error"),
)

TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    transport.UpstreamTransportError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
)
"""What to catch around network I/O and hand to ``classify_transport``."""

MAX_DETAIL_CHARS = 200

# ---- public functions ----------------------------------------------------------------------


def classify_status(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret: str | None = None,
    now: float | None = None,
) -> UpstreamError:
    """The error for a non-2xx reply. ``body`` is the (bounded) start of the reply body."""
    error_type, code, detail = _parse_error_body(body)
    key = _first_known(code, error_type)
    if key in _OVERRIDES:
        cls = _BY_ERROR_TYPE[key]
    elif status in _BY_STATUS:
        cls = _BY_STATUS[status]
    elif key is not None and 400 <= status < 500:
        cls = _BY_ERROR_TYPE[key]
    else:
        cls = _class_for_status(status)
    if cls is UpstreamProtocolError:
        detail = f"unexpected HTTP status {status}"
    return _build(cls, code, error_type, detail, secret, _retry_after(headers, now))


def classify_error_event(
    error_type: str | None,
    code: str | int | None,
    message: str | None,
    *,
    secret: str | None = None,
) -> UpstreamError:
    """The error for a failure reported inside a 200 event stream.

    Some OpenAI-compatible servers put an HTTP status in ``code``; it is used when the type
    is unknown.
    """
    code_text = str(code) if code is not None else None
    key = _first_known(code_text, error_type)
    if key is not None:
        cls = _BY_ERROR_TYPE[key]
    elif code_text is not None and code_text.isdigit() and 400 <= int(code_text) < 600:
        cls = _class_for_status(int(code_text))
    else:
        cls = UpstreamError
    return _build(cls, code_text, error_type, message, secret, None)


def classify_error_body(body: bytes, *, secret: str | None = None) -> UpstreamError | None:
    """The error an event's data reports (``{"error": …}``), or None if it reports none."""
    error_type, code, detail = _parse_error_body(body)
    if error_type is None and code is None and detail is None:
        return None
    return classify_error_event(error_type, code, detail, secret=secret)


def classify_transport(exc: BaseException) -> UpstreamError:
    """The error for a network failure. The exception text is never shown (it can name
    hosts, URLs and request headers); a short fixed label says what kind it was."""
    for exc_type, cls, label in _TRANSPORT:
        if isinstance(exc, exc_type):
            return cls(f"{cls.message} ({label})")
    return UpstreamConnectionFailed()


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP
    date); None when absent or unreadable. ``now`` (a Unix time) is for tests."""
    return _retry_after(headers, now)


def sanitize_message(text: str, secret: str | None = None) -> str:
    """``text`` made safe to show: credentials masked, whitespace collapsed, truncated."""
    text = scrub(text[: MAX_DETAIL_CHARS * 10], secret)
    text = " ".join(text.split())
    if len(text) > MAX_DETAIL_CHARS:
        text = text[: MAX_DETAIL_CHARS - 1].rstrip() + "…"
    return text


# ---- helpers -------------------------------------------------------------------------------


def _class_for_status(status: int) -> type[UpstreamError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return UpstreamOverloaded
    if status >= 400:
        return UpstreamRejected
    return UpstreamProtocolError  # 1xx / 3xx: not an answer an API client can use


def _first_known(*candidates: str | None) -> str | None:
    for candidate in candidates:
        if candidate is not None and candidate in _BY_ERROR_TYPE:
            return candidate
    return None


def _build(
    cls: type[UpstreamError],
    code: str | None,
    error_type: str | None,
    detail: str | None,
    secret: str | None,
    retry_after: float | None,
) -> UpstreamError:
    message = cls.message
    clean = sanitize_message(detail, secret) if detail else ""
    if clean:
        message = f"{message} Provider said: {clean}"
    canonical_code = None
    if issubclass(cls, UpstreamRejected):
        canonical_code = _rejection_code(code, error_type, detail)
    return cls(message, code=canonical_code, retry_after=retry_after)


def _rejection_code(code: str | None, error_type: str | None, detail: str | None) -> str | None:
    for candidate in (code, error_type):
        if candidate is not None and candidate in _REJECTION_CODES:
            return _REJECTION_CODES[candidate]
    if detail:
        lowered = detail.lower()
        if any(phrase in lowered for phrase in _CONTEXT_LENGTH_PHRASES):
            return "context_length_exceeded"
    return None


def _parse_error_body(body: bytes) -> tuple[str | None, str | None, str | None]:
    """(type, code, message) from any of the error shapes providers use; the raw text as
    the message when the body is not JSON."""
    if not body:
        return None, None, None
    try:
        parsed: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        text = body[: MAX_DETAIL_CHARS * 10].decode("utf-8", "replace").strip()
        return None, None, text or None
    if not isinstance(parsed, dict):
        return None, None, None
    error = parsed.get("error", parsed)
    if isinstance(error, str):  # {"error": "message"} (some compatible servers)
        return None, None, error
    if not isinstance(error, dict):
        return None, None, None
    error_type = error.get("type")
    code = error.get("code")
    message = error.get("message") or error.get("detail")
    return (
        error_type if isinstance(error_type, str) else None,
        str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None,
        message if isinstance(message, str) else None,
    )


def _retry_after(headers: Mapping[str, str], now: float | None) -> float | None:
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            ms = float(raw_ms)
        except ValueError:
            pass
        else:
            if 0 <= ms < math.inf:
                return ms / 1000.0
    raw = headers.get("retry-after")
    if not raw:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        return seconds if 0 <= seconds < math.inf else None
    try:
        moment = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, moment.timestamp() - current)
