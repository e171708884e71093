"""OpenTelemetry spans of a real gateway on loopback: the server span of each chat request,
the client span of each upstream attempt, what the provider receives (``traceparent``,
``x-request-id``), and that no content or secret ends up in a span. Spans go to the SDK's
``InMemorySpanExporter``, and once through a real OTLP/HTTP exporter to a receiver on
loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from interlock.testing.fake_upstream import Behavior, FakeUpstream
from tests.support.gateway import ADMIN_KEY, RunningGateway, make_settings, serve

AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}
CANARY = "canary-41d9e0b7c2"
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"


def deployment(upstream: FakeUpstream, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": name,
        "base_url": upstream.openai_base_url,
        "api_key_env": "FAKE_PROVIDER_KEY",
        "name": name,
        **extra,
    }


def config_for(upstream: FakeUpstream) -> dict[str, Any]:
    return {
        "routing": {"retry": {"max_retries": 0}},
        "models.fast": {"deployments": [deployment(upstream, "fast-1")]},
        "models.flaky": {
            "deployments": [
                deployment(upstream, "flaky-1", priority=1),
                deployment(upstream, "flaky-2", priority=2),
            ]
        },
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture(autouse=True)
def fresh_exporter(exporter: InMemorySpanExporter) -> None:
    exporter.clear()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream,
    exporter: InMemorySpanExporter,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningGateway]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    env = {"FAKE_PROVIDER_KEY": f"sk-{CANARY}"}
    settings = make_settings(tmp_path_factory.mktemp("tracing"), config_for(upstream), env)
    with serve(settings, tracer_provider=provider) as running:
        yield running
    provider.shutdown()


def chat(
    gateway: RunningGateway, model: str, content: str = "Say hello", **extra: Any
) -> httpx.Response:
    headers = {**AUTH, **extra.pop("headers", {})}
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def finished(exporter: InMemorySpanExporter, count: int) -> list[ReadableSpan]:
    """The spans once ``count`` have ended (the server span ends as the response does)."""
    for _ in range(200):
        spans = list(exporter.get_finished_spans())
        if len(spans) >= count:
            return spans
        threading.Event().wait(0.01)
    raise AssertionError(f"expected {count} spans, got {list(exporter.get_finished_spans())}")


def one(spans: list[ReadableSpan], kind: SpanKind) -> ReadableSpan:
    matching = [span for span in spans if span.kind is kind]
    assert len(matching) == 1, matching
    return matching[0]


def test_streaming_request_spans(
    gateway: RunningGateway, upstream: FakeUpstream, exporter: InMemorySpanExporter
) -> None:
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    response = chat(
        gateway,
        "fast",
        stream=True,
        max_tokens=40,
        temperature=0.5,
        stream_options={"include_usage": True},
        headers={"traceparent": traceparent},
    )
    assert response.status_code == 200
    spans = finished(exporter, 2)
    server, client = one(spans, SpanKind.SERVER), one(spans, SpanKind.CLIENT)
    assert server.name == "chat fast"
    assert client.name == "chat fast-1"
    # The caller's trace continues: the server span is its child, the attempt the server's.
    assert server.context is not None and client.context is not None
    assert f"{server.context.trace_id:032x}" == CALLER_TRACE
    assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    attributes = dict(server.attributes or {})
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "fast"
    assert attributes["gen_ai.response.model"] == "fast"
    assert attributes["gen_ai.request.max_tokens"] == 40
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.usage.output_tokens"] > 0
    assert attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attributes["http.response.status_code"] == 200
    assert attributes["interlock.request_id"] == response.headers["x-request-id"]
    assert attributes["interlock.deployment"] == "fast-1"
    assert "error.type" not in attributes
    client_attributes = dict(client.attributes or {})
    assert client_attributes["gen_ai.provider.name"] == "openai"
    assert client_attributes["gen_ai.system"] == "openai"
    assert client_attributes["gen_ai.request.model"] == "fast-1"
    assert client_attributes["server.address"] == "127.0.0.1"
    assert client_attributes["server.port"] == upstream.port
    assert client_attributes["gen_ai.usage.input_tokens"] > 0
    assert client_attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert client.status.status_code is StatusCode.UNSET
    # The provider saw the attempt's span as its parent, and the gateway's request id.
    sent = upstream.ledger[-1].headers
    assert sent["traceparent"] == (
        f"00-{client.context.trace_id:032x}-{client.context.span_id:016x}-01"
    )
    assert sent["x-request-id"] == response.headers["x-request-id"]


def test_failed_attempt_then_fallback(
    gateway: RunningGateway, upstream: FakeUpstream, exporter: InMemorySpanExporter
) -> None:
    upstream.set_model_behavior("flaky-1", Behavior(status=500))
    response = chat(gateway, "flaky")
    assert response.status_code == 200
    spans = finished(exporter, 3)
    server = one(spans, SpanKind.SERVER)
    attempts = sorted(
        (span for span in spans if span.kind is SpanKind.CLIENT),
        key=lambda span: span.start_time or 0,
    )
    assert [span.name for span in attempts] == ["chat flaky-1", "chat flaky-2"]
    assert server.context is not None
    assert all(
        span.parent is not None and span.parent.span_id == server.context.span_id
        for span in attempts
    )
    failed, answered = attempts
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "upstream_overloaded"
    assert answered.status.status_code is StatusCode.UNSET
    server_attributes = dict(server.attributes or {})
    assert server_attributes["interlock.attempts"] == 2
    assert server_attributes["interlock.deployment"] == "flaky-2"
    assert "error.type" not in server_attributes
    # Each attempt sent its own traceparent.
    sent = [served.headers["traceparent"] for served in upstream.ledger[-2:]]
    assert [value.split("-")[2] for value in sent] == [
        f"{span.context.span_id:016x}" for span in attempts if span.context is not None
    ]


def test_failed_request_is_an_error_span(
    gateway: RunningGateway, upstream: FakeUpstream, exporter: InMemorySpanExporter
) -> None:
    upstream.set_model_behavior("fast-1", Behavior(status=500))
    assert chat(gateway, "fast").status_code == 503
    spans = finished(exporter, 2)
    server = one(spans, SpanKind.SERVER)
    attributes = dict(server.attributes or {})
    assert attributes["error.type"] == "upstream_overloaded"
    assert attributes["http.response.status_code"] == 503
    assert server.status.status_code is StatusCode.ERROR


def test_cache_hit_has_no_attempt(gateway: RunningGateway, exporter: InMemorySpanExporter) -> None:
    question = "Which planet is largest? (tracing cache test)"
    assert chat(gateway, "fast", question, temperature=0).headers["x-interlock-cache"] == "miss"
    finished(exporter, 2)
    exporter.clear()
    assert chat(gateway, "fast", question, temperature=0).headers["x-interlock-cache"] == "hit"
    spans = finished(exporter, 1)
    assert [span.kind for span in spans] == [SpanKind.SERVER]
    assert dict(spans[0].attributes or {})["interlock.cache"] == "hit"


def test_no_content_or_secret_in_spans(
    gateway: RunningGateway, exporter: InMemorySpanExporter
) -> None:
    assert chat(gateway, "fast", f"the password is {CANARY}").status_code == 200
    refused = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "fast", "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer sk-{CANARY}"},
        timeout=10,
    )
    assert refused.status_code == 401
    assert chat(gateway, f"model-{CANARY}").status_code == 404
    spans = finished(exporter, 4)
    assert len([span for span in spans if span.kind is SpanKind.SERVER]) == 3
    for span in spans:
        text = repr((span.name, dict(span.attributes or {}), span.events, span.resource))
        assert CANARY not in text
        assert "password" not in text
    names = {span.name for span in spans}
    assert names == {"chat fast", "chat fast-1", "chat"}  # an unknown model stays out of names


def test_no_spans_without_tracing(upstream: FakeUpstream, tmp_path: Path) -> None:
    with serve(make_settings(tmp_path, config_for(upstream))) as running:
        assert chat(running, "fast").status_code == 200
        assert "traceparent" not in upstream.ledger[-1].headers
        assert upstream.ledger[-1].headers["x-request-id"].startswith("req_")


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes, dict[str, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.received.append((self.path, body, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otlp_export_from_the_environment(upstream: FakeUpstream, tmp_path: Path) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-token=abc%20def",
            "OTEL_SERVICE_NAME": "interlock-test",
        }
        with serve(make_settings(tmp_path, config_for(upstream), env)) as running:
            assert chat(running, "fast").status_code == 200
        # Shutting the gateway down flushed the batch.
    finally:
        receiver.shutdown()
    assert _Receiver.received, "nothing was exported"
    path, body, headers = _Receiver.received[0]
    assert path == "/v1/traces"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-collector-token"] == "abc def"
    request = ExportTraceServiceRequest.FromString(body)
    resource_spans = request.resource_spans[0]
    service = {
        attribute.key: attribute.value.string_value
        for attribute in resource_spans.resource.attributes
    }
    assert service["service.name"] == "interlock-test"
    names = {span.name for scope in resource_spans.scope_spans for span in scope.spans}
    assert names == {"chat fast", "chat fast-1"}
