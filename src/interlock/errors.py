"""The one exception tree of Interlock.

Every error a caller can see is an ``InterlockError``. Each inbound protocol renders it in its
own error shape (see ``interlock.api.errors``); nothing else builds error bodies.

    InterlockError                      status  code
    ├── InvalidRequest                  400     invalid_request / a more precise code
    │   ├── ContextLengthExceeded       400     context_length_exceeded
    │   └── ContentFiltered             400     content_filter
    ├── AuthenticationFailed            401     invalid_api_key
    ├── PermissionDenied                403     permission_denied
    ├── NotFound                        404     not_found
    │   └── ModelNotFound               404     model_not_found
    ├── BodyTooLarge                    413     request_too_large
    │   └── ConversationTooLarge        413     conversation_too_large
    ├── RateLimited                     429     rate_limit_exceeded
    │   └── BudgetExceeded              429     budget_exceeded (or 402, [budgets])
    ├── ServiceUnavailable              503     service_unavailable (nothing can serve now)
    ├── InternalError                   500     internal_error (a bug; never leaks details)
    └── UpstreamError                   502     upstream_error: a provider failed
        ├── UpstreamAuthFailed          502     upstream_auth_failed (the gateway's credentials)
        ├── UpstreamRateLimited         429     upstream_rate_limited
        ├── UpstreamOverloaded          503     upstream_overloaded (5xx, 529)
        ├── UpstreamTimeout             504     upstream_timeout
        ├── UpstreamConnectionFailed    502     upstream_connection_failed
        ├── UpstreamProtocolError       502     upstream_protocol_error (malformed reply)
        └── UpstreamRejected            400     upstream_rejected (the request itself was refused)

``UpstreamError.retryable`` says whether another attempt (same or another deployment) may
succeed; ``UpstreamError.client_fault`` marks errors caused by the request itself, which are
never retried or failed over. Messages are safe to show: they never contain a provider key,
a credential in a URL, or a stack trace.
"""

from __future__ import annotations


class InterlockError(Exception):
    """Base of every error a caller can see."""

    status: int = 500
    code: str = "internal_error"
    message: str = "An internal error occurred."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message or type(self).message
        if code is not None:
            self.code = code
        self.param = param
        self.retry_after = retry_after
        super().__init__(self.message)


class InvalidRequest(InterlockError):
    status = 400
    code = "invalid_request"
    message = "The request is invalid."


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"
    message = "The request exceeds the model's context length."


class ContentFiltered(InvalidRequest):
    code = "content_filter"
    message = "The request was refused by a content rule."


class AuthenticationFailed(InterlockError):
    status = 401
    code = "invalid_api_key"
    message = "Missing or invalid API key."


class PermissionDenied(InterlockError):
    status = 403
    code = "permission_denied"
    message = "You do not have access to this resource."


class NotFound(InterlockError):
    status = 404
    code = "not_found"
    message = "Not found."


class ModelNotFound(NotFound):
    code = "model_not_found"
    message = "The model does not exist or you do not have access to it."


class BodyTooLarge(InterlockError):
    status = 413
    code = "request_too_large"
    message = "The request body is too large."


class ConversationTooLarge(BodyTooLarge):
    code = "conversation_too_large"
    message = "This conversation is too long to continue: start a new one."


class RateLimited(InterlockError):
    status = 429
    code = "rate_limit_exceeded"
    message = "Rate limit exceeded."


class BudgetExceeded(RateLimited):
    """A spend budget cannot cover the request. 429 by default; an operator may choose 402
    (Payment Required) for callers that treat it as "top up", not "slow down"."""

    code = "budget_exceeded"
    message = "The budget is spent."

    def __init__(
        self,
        message: str | None = None,
        *,
        status: int = 429,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status


class ServiceUnavailable(InterlockError):
    status = 503
    code = "service_unavailable"
    message = "No deployment can serve this request right now."


class InternalError(InterlockError):
    status = 500
    code = "internal_error"
    message = "An internal error occurred."


class UpstreamError(InterlockError):
    """A provider failed. Subclasses say how; ``retryable`` says whether to try again."""

    status = 502
    code = "upstream_error"
    message = "The model provider returned an error."
    retryable: bool = True
    client_fault: bool = False


class UpstreamAuthFailed(UpstreamError):
    code = "upstream_auth_failed"
    message = "The gateway's credentials were refused by the model provider."


class UpstreamRateLimited(UpstreamError):
    status = 429
    code = "upstream_rate_limited"
    message = "The model provider is rate limiting requests."


class UpstreamOverloaded(UpstreamError):
    status = 503
    code = "upstream_overloaded"
    message = "The model provider is overloaded or failing."


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    message = "The model provider did not answer in time."


class UpstreamConnectionFailed(UpstreamError):
    code = "upstream_connection_failed"
    message = "Could not connect to the model provider."


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"
    message = "The model provider sent a malformed reply."


class UpstreamRejected(UpstreamError):
    """The provider refused the request itself: retrying or failing over cannot help."""

    status = 400
    code = "upstream_rejected"
    message = "The model provider rejected the request."
    retryable = False
    client_fault = True
