"""The stream-integrity contract and the timeouts, end to end on loopback: nothing reaches
the client before real content; until then failures fall over invisibly; after it, a
failure ends the stream with an error event, never a duplicate or a fake finish; a client
that leaves cancels the upstream call and frees its slot; hostile upstreams and slow
clients cannot make the gateway buffer without bound."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from interlock.testing.fake_upstream import Behavior, FakeUpstream, ServedRequest, default_text
from tests.integration.resilience_gateway import (
    AUTH,
    HELLO,
    Gateway,
    deployment,
    finish_reasons,
    serve_gateway,
    sse_events,
    streamed_text,
)

FAST = {"first_token": 0.4, "idle": 0.4}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(autouse=True)
def fresh_upstream(upstream: FakeUpstream) -> None:
    upstream.reset()


@pytest.fixture(scope="module")
def unaccepting_port() -> Iterator[int]:
    """A listener whose accept queue is full: connecting to it hangs (SYNs are dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    yield port
    for sock in (*fillers, listener):
        sock.close()


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeUpstream, unaccepting_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    u = upstream

    def pair(name: str, **primary: Any) -> dict[str, Any]:
        """A model whose first deployment may misbehave and whose second answers."""
        return {
            "deployments": [
                deployment(u, f"{name}-a", **primary),
                deployment(u, f"{name}-b", priority=2, timeouts=FAST),
            ]
        }

    config = {
        "routing": {
            "retry": {"max_retries": 0},
            "breaker": {"min_calls": 1000},
            "slot_lease": 0.05,  # leases follow the timeouts: 0.22 s for "long" below
        },
        "models.silent": pair("silent", timeouts=FAST),
        "models.slow-start": pair("slow", timeouts=FAST),
        "models.unreachable": pair(
            "unreach",
            base_url=f"http://127.0.0.1:{unaccepting_port}/v1",
            timeouts={"connect": 0.3},
        ),
        "models.stall": pair("stall", timeouts=FAST),
        "models.broken": pair("broken", timeouts=FAST),
        "models.short": pair("short", timeouts={"total": 0.5}),
        "models.leave": {
            "deployments": [deployment(u, "leave-a", max_concurrent=10)],
        },
        "models.long": {
            "deployments": [
                deployment(
                    u, "long-a", max_concurrent=1, timeouts={"first_token": 0.1, "idle": 0.1}
                )
            ],
        },
        "models.huge": {"deployments": [deployment(u, "huge-a")]},
        "models.steady": {"deployments": [deployment(u, "steady-a")]},
        "models.bulk": {"deployments": [deployment(u, "bulk-a")]},
    }
    with serve_gateway(tmp_path_factory.mktemp("streams"), config) as running:
        yield running


def stream(gateway: Gateway, model: str) -> tuple[httpx.Response, list[Any]]:
    response = gateway.chat(model, stream=True)
    return response, sse_events(response.text)


def one(upstream: FakeUpstream, predicate: Callable[[ServedRequest], bool]) -> ServedRequest:
    return upstream.wait_for(predicate, timeout=1.0)


def assert_clean_failover(response: httpx.Response, events: list[Any], answer: str) -> None:
    """The client saw one whole answer, from the second deployment, and nothing else."""
    assert response.status_code == 200
    assert response.headers["x-interlock-attempts"] == "2"
    assert streamed_text(events) == answer
    assert finish_reasons(events) == ["stop"]
    assert events[-1] == "[DONE]"
    assert not any("error" in event for event in events if isinstance(event, dict))


def assert_error_ending(events: list[Any], text: str, code: str) -> None:
    """The stream carried ``text`` once, then ended with an error event: no finish, no
    [DONE]."""
    assert streamed_text(events) == text
    assert finish_reasons(events) == []
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == code


# ---- before the first byte: invisible failover -------------------------------------------------


def test_accept_but_never_answer_falls_over_at_the_first_token_timeout(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("silent-a", Behavior(never_answer=True))
    upstream.set_model_behavior("silent-b", Behavior(text="from b"))
    started = time.monotonic()
    response, events = stream(gateway, "silent")
    assert 0.4 <= time.monotonic() - started < 2
    assert_clean_failover(response, events, "from b")
    one(upstream, lambda r: r.model == "silent-a" and r.client_disconnected)


def test_a_slow_first_byte_falls_over(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.set_model_behavior("slow-a", Behavior(first_byte_delay=3))
    upstream.set_model_behavior("slow-b", Behavior(text="quick one"))
    response, events = stream(gateway, "slow-start")
    assert_clean_failover(response, events, "quick one")
    served = one(upstream, lambda r: r.model == "slow-a" and r.client_disconnected)
    assert served.status is None  # it never got to answer


def test_a_connect_timeout_falls_over(gateway: Gateway, upstream: FakeUpstream) -> None:
    upstream.set_model_behavior("unreach-b", Behavior(text="reachable"))
    started = time.monotonic()
    response, events = stream(gateway, "unreachable")
    assert time.monotonic() - started < 2
    assert_clean_failover(response, events, "reachable")
    assert [r.model for r in upstream.ledger] == ["unreach-b"]


@pytest.mark.parametrize(
    "fault",
    [
        Behavior(stall_after=0),
        Behavior(malformed_after=0),
        Behavior(error_event_after=0, error_type="server_error"),
        Behavior(cut_after=0),
    ],
    ids=["stall", "malformed", "error-event", "cut"],
)
def test_a_broken_200_stream_before_content_falls_over(
    gateway: Gateway, upstream: FakeUpstream, fault: Behavior
) -> None:
    upstream.set_model_behavior("broken-a", fault)
    upstream.set_model_behavior("broken-b", Behavior(text="second answer"))
    response, events = stream(gateway, "broken")
    assert_clean_failover(response, events, "second answer")


# ---- after the first byte: an explicit error, nothing repeated ------------------------------


def test_a_stall_mid_stream_ends_with_an_error_at_the_idle_timeout(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("stall-a", Behavior(tokens=10, stall_after=2))
    response, events = stream(gateway, "stall")
    assert response.status_code == 200
    assert_error_ending(events, default_text(2), "upstream_timeout")
    one(upstream, lambda r: r.model == "stall-a" and r.client_disconnected)
    assert [r.model for r in upstream.ledger] == ["stall-a"]  # no failover once committed


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Behavior(tokens=10, cut_after=3), "upstream_protocol_error"),
        (Behavior(tokens=10, malformed_after=3), "upstream_protocol_error"),
        (
            Behavior(tokens=10, error_event_after=3, error_type="server_error"),
            "upstream_overloaded",
        ),
    ],
    ids=["cut", "malformed", "error-event"],
)
def test_a_failure_after_content_ends_the_stream_with_an_error_event(
    gateway: Gateway, upstream: FakeUpstream, fault: Behavior, code: str
) -> None:
    upstream.set_model_behavior("broken-a", fault)
    _, events = stream(gateway, "broken")
    assert_error_ending(events, default_text(3), code)
    assert [r.model for r in upstream.ledger] == ["broken-a"]


def test_the_deployments_total_timeout_ends_a_long_stream(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("short-a", Behavior(tokens=100, token_delay=0.02))
    started = time.monotonic()
    _, events = stream(gateway, "short")
    assert time.monotonic() - started < 1.5
    assert events[-1]["error"]["code"] == "upstream_timeout"
    assert finish_reasons(events) == []
    served = one(upstream, lambda r: r.model == "short-a" and r.client_disconnected)
    assert 0 < served.chunks_sent < 100


# ---- the client leaves ---------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.01)


def test_leaving_mid_stream_cancels_the_upstream_and_frees_the_slot(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("leave-a", Behavior(tokens=1000, token_delay=0.01))
    body = {"model": "leave", "messages": HELLO, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH
    ) as response:
        lines = response.iter_lines()
        next(lines)
        assert gateway.slots_held("leave-a") == [1]
    left_at = time.monotonic()
    served = upstream.wait_for(lambda r: r.client_disconnected, timeout=1.0)
    assert time.monotonic() - left_at < 1.0
    assert not served.completed and served.chunks_sent < 1000
    wait_until(lambda: gateway.slots_held("leave-a") == [0])


def test_leaving_before_the_first_token_cancels_the_upstream_and_frees_the_slot(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("leave-a", Behavior(first_byte_delay=10))
    body = {"model": "leave", "messages": HELLO, "stream": True}
    with httpx.Client(timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        client.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH)
    left_at = time.monotonic()
    upstream.wait_for(lambda r: r.client_disconnected, timeout=1.0)
    assert time.monotonic() - left_at < 1.0
    wait_until(lambda: gateway.slots_held("leave-a") == [0])


def test_leaving_a_non_streaming_request_cancels_the_upstream_and_frees_the_slot(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("leave-a", Behavior(never_answer=True))
    body = {"model": "leave", "messages": HELLO}
    with httpx.Client(timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        client.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH)
    left_at = time.monotonic()
    upstream.wait_for(lambda r: r.client_disconnected, timeout=1.0)
    assert time.monotonic() - left_at < 1.0
    wait_until(lambda: gateway.slots_held("leave-a") == [0])


def test_a_stream_longer_than_its_slot_lease_keeps_its_slot(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("long-a", Behavior(tokens=30, token_delay=0.03))
    [candidate] = gateway.components.service.router.candidates("long")
    assert candidate.lease == pytest.approx(0.22)
    done: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: done.update(events=stream(gateway, "long")[1]))
    runner.start()
    upstream.wait_for(lambda r: r.model == "long-a" and r.chunks_sent > 0)
    time.sleep(3 * candidate.lease)  # three leases later, the slot is still held...
    assert gateway.slots_held("long-a") == [1]
    assert gateway.chat("long").status_code == 503  # ... and still counts
    runner.join(10)
    assert streamed_text(done["events"]) == default_text(30)
    assert gateway.slots_held("long-a") == [0]


# ---- bounded buffering ---------------------------------------------------------------------------


def test_a_10_mb_line_ends_that_stream_only_and_memory_stays_flat(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    upstream.set_model_behavior("huge-a", Behavior(tokens=5, huge_line_bytes=10 * 1024 * 1024))
    upstream.set_model_behavior("steady-a", Behavior(tokens=30, token_delay=0.01))
    steady: dict[str, Any] = {}

    def run_steady() -> None:
        steady["events"] = stream(gateway, "steady")[1]

    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        other = threading.Thread(target=run_steady)
        other.start()
        response, events = stream(gateway, "huge")
        other.join(10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 200
    assert_error_ending(events, default_text(1), "upstream_protocol_error")
    one(upstream, lambda r: r.model == "huge-a" and r.client_disconnected)
    # The SSE parser gives up past 1 MB: nothing near the 10 MB line was ever held.
    assert peak - baseline < 6 * 1024 * 1024
    assert streamed_text(steady["events"]) == default_text(30)
    assert steady["events"][-1] == "[DONE]"


def test_a_slow_client_holds_the_upstream_back_instead_of_filling_memory(
    gateway: Gateway, upstream: FakeUpstream
) -> None:
    words = 12_000
    word = "w" * 4095
    upstream.set_model_behavior("bulk-a", Behavior(text=" ".join([word] * words)))
    body = (
        b'{"model": "bulk", "stream": true, "messages": [{"role": "user", "content": "Say hello"}]}'
    )
    port = int(gateway.url.rsplit(":", 1)[1])
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    client.connect(("127.0.0.1", port))
    try:
        client.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"authorization: " + AUTH["authorization"].encode() + b"\r\n"
            b"content-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        # The client reads nothing: the upstream must stop well before the end of its reply.
        record = upstream.wait_for(lambda r: r.model == "bulk-a" and r.chunks_sent > 0)
        sent = -1
        while sent != record.chunks_sent:  # until it stops moving
            sent = record.chunks_sent
            time.sleep(0.3)
            record = upstream.wait_for(lambda r: r.model == "bulk-a")
        assert not record.completed
        assert record.chunks_sent < words * 3 // 4, record.chunks_sent
        # Then the client reads it all: nothing was lost on the way.
        received = 0
        client.settimeout(10)
        while data := client.recv(1 << 20):
            received += data.count(b"w")  # nothing else in the reply has a lowercase w
    finally:
        client.close()
    assert received == words * len(word)
