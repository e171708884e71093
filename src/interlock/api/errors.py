"""The one place that turns ``InterlockError`` into each protocol's error body."""

from __future__ import annotations

import math

import msgspec
from starlette.responses import Response

from interlock.errors import InterlockError

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error_type(error: InterlockError) -> str:
    return _OPENAI_TYPES.get(error.status, "server_error" if error.status >= 500 else "api_error")


def openai_error_body(error: InterlockError) -> dict[str, object]:
    return {
        "error": {
            "message": error.message,
            "type": openai_error_type(error),
            "param": error.param,
            "code": error.code,
        }
    }


def retry_after_header(error: InterlockError) -> dict[str, str]:
    """``Retry-After`` as whole seconds, rounded up (clients parse integers)."""
    if error.retry_after is None:
        return {}
    return {"retry-after": str(max(1, math.ceil(error.retry_after)))}


def openai_error_response(error: InterlockError, headers: dict[str, str] | None = None) -> Response:
    return Response(
        msgspec.json.encode(openai_error_body(error)),
        status_code=error.status,
        media_type="application/json",
        headers={**retry_after_header(error), **(headers or {})},
    )


# Anthropic's error types by status (https://platform.claude.com/docs/en/api/errors). Its
# SDK picks the exception class by status; the type is what clients log and branch on.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(error: InterlockError) -> str:
    return _ANTHROPIC_TYPES.get(
        error.status, "api_error" if error.status >= 500 else "invalid_request_error"
    )


def anthropic_error_body(error: InterlockError, request_id: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "type": "error",
        "error": {"type": anthropic_error_type(error), "message": error.message},
    }
    if request_id is not None:
        body["request_id"] = request_id
    return body


def anthropic_error_response(
    error: InterlockError, request_id: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    extra = {} if request_id is None else {"request-id": request_id, "x-request-id": request_id}
    return Response(
        msgspec.json.encode(anthropic_error_body(error, request_id)),
        status_code=error.status,
        media_type="application/json",
        headers={**retry_after_header(error), **extra, **(headers or {})},
    )


def aisdk_error_response(error: InterlockError, headers: dict[str, str] | None = None) -> Response:
    """An error before an AI SDK stream starts: ``useChat`` shows the body text as the error
    message verbatim, so the body is the message alone; the code is in a header."""
    return Response(
        error.message,
        status_code=error.status,
        media_type="text/plain",
        headers={
            "x-interlock-error-code": error.code,
            **retry_after_header(error),
            **(headers or {}),
        },
    )
