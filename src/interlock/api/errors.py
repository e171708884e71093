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
