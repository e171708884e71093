"""OpenTelemetry traces: a server span per chat request, a client span per upstream attempt.

Attribute names follow the OpenTelemetry GenAI semantic conventions (``gen_ai.*``, and
``server.address`` / ``error.type``); a few ``interlock.*`` attributes say how the gateway
served the request. Spans never carry prompt or completion content, credentials or user
ids: only names from the configuration, numbers, finish reasons and error codes.

- ``RequestTrace``: the request's ``SERVER`` span, a child of the caller's ``traceparent``
  when it sent one. Named ``chat {model}`` once the model is known; ended by the pipeline
  where the request is accounted (``ChatCall._account``), with its status, usage and
  outcome.
- ``AttemptTrace``: one ``CLIENT`` span per upstream attempt, a child of the request's,
  named ``chat {provider's model}``. Started by the chat service when the guard admits the
  attempt and ended by the guard where the attempt is settled (exactly once, however it
  ends). Its ``traceparent`` is sent to the provider.

Off unless configured (``build_tracing``): the pipeline then holds ``None``, checks it once
per request, and no span object is ever made.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import anyio.to_thread
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from interlock.chat.types import ChatRequest, Finish, Usage
from interlock.errors import UpstreamError
from interlock.settings import DeploymentConfig, FileConfig, Settings

if TYPE_CHECKING:
    from interlock.routing.router import Candidate
    from interlock.telemetry.usage_record import UsageRecord

__all__ = ["AttemptTrace", "RequestTrace", "Tracing", "build_tracing"]

TRACER_NAME: Final = "interlock"
# gen_ai.provider.name for each provider kind (the conventions' well-known values).
_PROVIDER_NAMES: Final = {"openai": "openai", "anthropic": "anthropic", "local": "llama_cpp"}
_propagator = TraceContextTextMapPropagator()


def _deployment_attributes(deployment: DeploymentConfig) -> dict[str, str | int]:
    provider = _PROVIDER_NAMES.get(deployment.provider, deployment.provider)
    attributes: dict[str, str | int] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the older name of gen_ai.provider.name
        "gen_ai.request.model": deployment.model or "smollm2",
        "interlock.deployment": deployment.name,
    }
    if deployment.base_url:
        parts = urlsplit(deployment.base_url)
        if parts.hostname:
            attributes["server.address"] = parts.hostname
            attributes["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
    return attributes


class Tracing:
    """Makes the spans of the request path (see the module docstring)."""

    def __init__(
        self, provider: trace.TracerProvider, config: FileConfig, *, owned: bool = False
    ) -> None:
        self._provider = provider
        self._owned = owned  # built here from the settings: shut down (and flushed) here
        self.tracer = provider.get_tracer(TRACER_NAME)
        self._models = frozenset(config.models)
        self._deployments = {
            deployment.name: (
                f"chat {deployment.model or 'smollm2'}",
                _deployment_attributes(deployment),
            )
            for model in config.models.values()
            for deployment in model.deployments
        }

    def request(self, route: str, headers: Mapping[str, str] | None = None) -> RequestTrace:
        """Start a chat request's span; ``headers`` are the request's (for
        ``traceparent``)."""
        parent = Context()
        if headers is not None and "traceparent" in headers:
            parent = _propagator.extract(headers)
        span = self.tracer.start_span(
            "chat",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"gen_ai.operation.name": "chat", "interlock.route": route},
        )
        return RequestTrace(self, span)

    def known_model(self, model: str) -> bool:
        """Is ``model`` a configured public model (and so fit for names and attributes)?"""
        return model in self._models

    def deployment(self, name: str) -> tuple[str, dict[str, str | int]]:
        known = self._deployments.get(name)
        if known is None:
            return "chat", {"gen_ai.operation.name": "chat", "interlock.deployment": name}
        return known

    async def aclose(self) -> None:
        """Flush and stop the exporter, if it was made here."""
        shutdown = getattr(self._provider, "shutdown", None)
        if self._owned and shutdown is not None:
            await anyio.to_thread.run_sync(shutdown)


class RequestTrace:
    """One chat request's server span."""

    __slots__ = ("_ended", "_tracing", "finish_reason", "span")

    def __init__(self, tracing: Tracing, span: trace.Span) -> None:
        self._tracing = tracing
        self.span = span
        self.finish_reason: str | None = None  # from the attempt that answered
        self._ended = False

    def requested(self, chat: ChatRequest, streaming: bool) -> None:
        """The request is parsed: its model and parameters (never its messages)."""
        span = self.span
        known = self._tracing.known_model(chat.model)
        span.update_name(f"chat {chat.model}" if known else "chat")
        # A name from a request body that is not configured could be anything: left out.
        span.set_attribute("gen_ai.request.model", chat.model if known else "unknown")
        span.set_attribute("interlock.stream", streaming)
        if chat.max_tokens is not None:
            span.set_attribute("gen_ai.request.max_tokens", chat.max_tokens)
        if chat.temperature is not None:
            span.set_attribute("gen_ai.request.temperature", chat.temperature)
        if chat.top_p is not None:
            span.set_attribute("gen_ai.request.top_p", chat.top_p)

    def attempt(self, candidate: Candidate, chat: ChatRequest) -> AttemptTrace:
        """Start the span of one upstream attempt, a child of this one."""
        name, attributes = self._tracing.deployment(candidate.name)
        span = self._tracing.tracer.start_span(
            name,
            context=trace.set_span_in_context(self.span),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        if chat.max_tokens is not None:
            span.set_attribute("gen_ai.request.max_tokens", chat.max_tokens)
        if chat.temperature is not None:
            span.set_attribute("gen_ai.request.temperature", chat.temperature)
        return AttemptTrace(self, span)

    def end(
        self,
        *,
        request_id: str,
        status: int,
        error: str | None,
        record: UsageRecord | None,
        response_model: str | None,
        cache: str | None,
    ) -> None:
        """The request is over (once; later calls do nothing)."""
        if self._ended:
            return
        self._ended = True
        span = self.span
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("interlock.request_id", request_id)
        if cache is not None:
            span.set_attribute("interlock.cache", cache)
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)
        if record is not None:
            span.set_attribute("gen_ai.usage.input_tokens", record.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", record.output_tokens)
            span.set_attribute("interlock.attempts", record.attempts)
            if record.deployment:
                span.set_attribute("interlock.deployment", record.deployment)
        if self.finish_reason is not None:
            span.set_attribute("gen_ai.response.finish_reasons", (self.finish_reason,))
        if error is not None:
            span.set_attribute("error.type", error[:64])
            # A client's own mistakes (4xx) are not the server's errors; a failure after the
            # 200 (the stream was cut) is.
            if status >= 500 or status == 200:
                span.set_status(Status(StatusCode.ERROR))
        span.end()


class AttemptTrace:
    """One upstream attempt's client span (``interlock.routing.guard.AttemptObserver``)."""

    __slots__ = ("_parent", "span")

    def __init__(self, parent: RequestTrace, span: trace.Span) -> None:
        self._parent = parent
        self.span = span

    def headers(self, base: Mapping[str, str] | None) -> dict[str, str]:
        """``base`` plus this attempt's W3C ``traceparent``, for the provider call."""
        context = self.span.get_span_context()
        traceparent = (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        )
        return {**base, "traceparent": traceparent} if base else {"traceparent": traceparent}

    def answered(self, usage: Usage, finish: Finish) -> None:
        span = self.span
        span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", (finish.reason,))
        self._parent.finish_reason = finish.reason

    def ended(self, error: UpstreamError | None) -> None:
        span = self.span
        if error is not None:
            span.set_attribute("error.type", type(error).code)
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def abandoned(self) -> None:
        self.span.set_attribute("interlock.abandoned", True)
        self.span.end()


def build_tracing(
    settings: Settings, provider: trace.TracerProvider | None = None
) -> Tracing | None:
    """The app's tracing: over ``provider`` when one is given (tests, embedding), else an
    OTLP/HTTP exporter behind a batch processor when the settings configure one; else None.
    """
    if provider is not None:
        return Tracing(provider, settings.config)
    configured = settings.tracing
    if configured is None:
        return None
    # Imported only when tracing is on: the SDK and the exporter cost nothing otherwise.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    sdk = TracerProvider(
        resource=Resource({SERVICE_NAME: configured.service_name}),
        sampler=ParentBased(TraceIdRatioBased(configured.sample_ratio)),
    )
    exporter = OTLPSpanExporter(endpoint=configured.endpoint, headers=dict(configured.headers))
    sdk.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(sdk, settings.config, owned=True)
