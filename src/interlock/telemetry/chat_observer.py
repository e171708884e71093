"""``ChatObserver``: what the chat pipeline tells the outside world about each request.

Called by ``interlock.chat.pipeline`` at two moments:

- ``asked``: the canonical request is known (a Sentry breadcrumb: counts and lengths only);
- ``ended``: once per request, however it ended — the access line (``interlock.access``),
  the closing breadcrumb, an upstream failure reported to Sentry, and, for the users listed in
  ``[logging] prompt_log_users`` only, the prompt and answer on ``interlock.prompts``.

``crashed`` reports an unexpected exception (one that became ``internal_error``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import structlog

from interlock.auth.principal import Principal
from interlock.chat.types import ChatRequest
from interlock.errors import InterlockError, UpstreamError
from interlock.redaction import scrub
from interlock.telemetry.access_log import current_context
from interlock.telemetry.logging import PROMPT_LOGGER, access_lines_written, write_access_line
from interlock.telemetry.sentry import NO_REPORTER, Reporter
from interlock.telemetry.usage_record import UsageRecord


class ChatObserver:
    """Logs and error reports for chat requests (see the module doc)."""

    __slots__ = ("_prompt_users", "reporter")

    def __init__(self, reporter: Reporter = NO_REPORTER, prompt_log_users: Iterable[str] = ()):
        self.reporter = reporter
        self._prompt_users = frozenset(prompt_log_users)

    def asked(self, request_id: str, chat: ChatRequest, streaming: bool) -> None:
        if not self.reporter.enabled:
            return
        self.reporter.breadcrumb(
            "ai.request",
            "chat request",
            {
                "request_id": request_id,
                "model": chat.model,
                "messages": len(chat.messages),
                "input_chars": sum(len(message.text()) for message in chat.messages),
                "max_tokens": chat.max_tokens,
                "tools": len(chat.tools) if chat.tools else 0,
                "stream": streaming,
            },
        )

    def logs_prompts_of(self, principal: Principal | None) -> bool:
        """True if this caller's prompts and answers are logged (``prompt_log_users``)."""
        return (
            principal is not None
            and principal.user_id is not None
            and principal.user_id in self._prompt_users
        )

    def ended(
        self,
        *,
        request_id: str,
        principal: Principal | None,
        chat: ChatRequest | None,
        record: UsageRecord | None,
        status: int,
        error: InterlockError | str | None,
        started: float,
        model: str,
        deployment: str,
        attempts: int,
        cache: str,
        answer: str | None = None,
    ) -> None:
        context = current_context()
        if context is not None:
            context.logged = True
        reporter = self.reporter
        # The fields feed the access line and the error report: without either, skip them.
        if reporter.enabled or access_lines_written():
            code = error.code if isinstance(error, InterlockError) else error
            fields: dict[str, Any] = {
                "request_id": request_id,
                "method": "POST",
                "route": context.route if context is not None else None,
                "status": status,
                "user_id": principal.user_id if principal is not None else None,
                "key_id": principal.key_id if principal is not None else None,
                "model": _client_model(chat),
                "served_model": model or None,
                "deployment": deployment or None,
                "attempts": attempts,
                "cache": cache,
                "error": code,
            }
            if record is not None:
                fields.update(
                    latency_ms=record.latency_ms,
                    ttft_ms=record.ttft_ms,
                    input_tokens=record.input_tokens,
                    output_tokens=record.output_tokens,
                    cached_tokens=record.cached_tokens,
                    cost=_number(record.cost),
                    streaming=record.streaming,
                    partial=record.partial,
                )
            else:
                fields["latency_ms"] = round((time.perf_counter() - started) * 1000)
            write_access_line(dict(fields) if reporter.enabled else fields)
            if reporter.enabled:
                reporter.breadcrumb(
                    "ai.response",
                    "chat response",
                    {key: value for key, value in fields.items() if key not in ("method", "route")},
                )
                if isinstance(error, UpstreamError):
                    reporter.upstream_failed(error, _tags(request_id, fields))
        if chat is not None and self.logs_prompts_of(principal):
            assert principal is not None
            structlog.get_logger(PROMPT_LOGGER).bind(logger=PROMPT_LOGGER).info(
                "prompt",
                request_id=request_id,
                user_id=principal.user_id,
                model=_client_model(chat),
                messages=[{"role": m.role, "text": m.text()} for m in chat.messages],
                answer=answer,
                status=status,
            )

    def crashed(
        self, exc: BaseException, *, request_id: str, model: str = "", deployment: str = ""
    ) -> None:
        self.reporter.unhandled(
            exc, {"request_id": request_id, "model": model, "deployment": deployment}
        )


def _client_model(chat: ChatRequest | None) -> str | None:
    # The one field a client chooses freely: scrubbed like any logged text.
    return scrub(chat.model) if chat is not None and chat.model else None


def _tags(request_id: str, fields: dict[str, Any]) -> dict[str, str]:
    return {
        "request_id": request_id,
        "model": str(fields["model"] or ""),
        "deployment": str(fields["deployment"] or ""),
        "attempts": str(fields["attempts"]),
    }


def _number(amount: Decimal) -> float | int:
    return int(amount) if amount == amount.to_integral_value() else float(amount)
