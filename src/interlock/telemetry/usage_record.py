"""``UsageRecord``: one chat request as billed, and ``record_usage``, which builds it.

``record_usage`` is called by the inbound protocol once per request, where the request ends:
answered, refused with an error, cut by a failure mid-stream, or abandoned by the client. It
costs a few microseconds and never awaits: it prices the tokens and hands the record to the
ledger, which writes it to the database later, in batches.

Counts come from the provider when it reported them (``usage_source="provider"``). Otherwise
they are estimated, about four characters a token: the input from the request, the output
from what was actually delivered (``usage_source="estimated"``). A request that ended before
its answer was complete — a mid-stream failure, a client that went away — is ``partial``: its
output is what the client received, not what the model might have said.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal, Protocol

import msgspec

from interlock.auth.principal import Principal
from interlock.chat.service import ServedBy, estimate_tokens
from interlock.chat.types import ChatRequest, Usage
from interlock.telemetry.prices import DeploymentPrices

UsageSource = Literal["provider", "estimated"]

MAX_NAME = 200  # the model and deployment columns
MAX_CODE = 64  # the error column
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that went away before the answer


class UsageRecord(msgspec.Struct, kw_only=True, gc=False):
    """One row of the usage ledger (``interlock.store.models.UsageRow``), as plain data."""

    request_id: str
    created_at: datetime  # UTC, when the request ended
    user_id: str | None
    key_id: str | None
    tier: str
    model: str  # the public model asked for
    provider: str  # "openai", "anthropic", "local"; "" when no deployment was reached
    deployment: str
    input_tokens: int  # including cached_tokens
    output_tokens: int
    cached_tokens: int
    cost: Decimal  # in the price table's currency
    latency_ms: int
    ttft_ms: int | None  # streaming only: until the first content was sent
    status: int  # the HTTP status sent; 499 when the client went away first
    error: str | None  # the InterlockError code, if the request failed
    cache_hit: bool = False
    attempts: int
    streaming: bool
    usage_source: UsageSource
    partial: bool


class UsageSink(Protocol):
    """Where records go: ``UsageLedger``, or a list in tests."""

    def record(self, record: UsageRecord) -> None: ...


def _input_length(request: ChatRequest) -> int:
    return sum(len(message.text()) for message in request.messages)


def record_usage(
    sink: UsageSink,
    prices: DeploymentPrices,
    *,
    request_id: str,
    principal: Principal,
    model: str,
    started: float,
    status: int,
    streaming: bool,
    request: ChatRequest | None = None,
    served: ServedBy | None = None,
    usage: Usage | None = None,
    output_chars: int = 0,
    first_token_at: float | None = None,
    error: str | None = None,
    partial: bool = False,
    cache_hit: bool = False,
) -> UsageRecord:
    """Build the request's usage record, hand it to ``sink`` and return it.

    ``started`` and ``first_token_at`` are ``time.perf_counter()`` readings. Without ``usage``
    (no complete answer), the tokens are estimated from ``request`` and ``output_chars``.
    A ``cache_hit`` keeps the stored answer's usage and costs 0.
    """
    now = time.perf_counter()
    source: UsageSource
    if usage is not None and not usage.estimated:
        input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
        cached_tokens, source = usage.cached_tokens, "provider"
    elif usage is not None:
        input_tokens, output_tokens = usage.input_tokens, usage.output_tokens
        cached_tokens, source = usage.cached_tokens, "estimated"
    else:
        # No answer reached the end. If no deployment ever answered, the input was never
        # billed; if one did, it read the whole request.
        reached = served is not None and served.committed
        input_tokens = estimate_tokens(_input_length(request)) if reached and request else 0
        output_tokens = estimate_tokens(output_chars) if output_chars else 0
        cached_tokens, source = 0, "estimated"
    deployment = served.deployment if served is not None else ""
    priced = prices.of(deployment)
    # The columns' sizes: the model name comes from the request body and may be anything.
    model = model[:MAX_NAME]
    error = error[:MAX_CODE] if error is not None else None
    record = UsageRecord(
        request_id=request_id,
        created_at=datetime.now(UTC),
        user_id=principal.user_id,
        key_id=principal.key_id,
        tier=principal.tier,
        model=model,
        provider=priced.provider,
        deployment=deployment,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached_tokens,
        # A cache hit made no upstream call: its tokens are the stored answer's, for the
        # record, and cost nothing.
        cost=Decimal(0)
        if cache_hit
        else priced.price.cost(input_tokens, output_tokens, cached_tokens),
        latency_ms=round((now - started) * 1000),
        ttft_ms=None if first_token_at is None else round((first_token_at - started) * 1000),
        status=status,
        error=error,
        cache_hit=cache_hit,
        attempts=served.attempts if served is not None else 0,
        streaming=streaming,
        usage_source=source,
        partial=partial,
    )
    sink.record(record)
    return record
