"""Measuring one point: the same load straight to the fake upstream, then through the gateway."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bench.procstat import CpuMeter, OtherLoadMeter, memory
from bench.results import Mode, Point
from bench.stack import ADMIN_KEY, UPSTREAM_MODEL, CpuPlan, Stack, StackError, gateway_model
from bench.ttft import TtftResult, measure_ttft
from bench.wrk import WrkResult, run_wrk

_PROMPT = "Say hello to the benchmark."
_CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True, slots=True)
class Timing:
    """How long each run lasts: ``warmup_s`` of load not counted, then ``duration_s``."""

    warmup_s: int
    duration_s: int
    ttft: bool  # also run the TTFT client on streaming points


class Bodies:
    """The request bodies: the same message on both paths, only the model name differs.
    wrk reads them from files, written once."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._files: dict[tuple[str, bool], Path] = {}

    @staticmethod
    def payload(model: str, stream: bool) -> bytes:
        request: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": _PROMPT}],
        }
        if stream:
            request["stream"] = True
        return msgspec.json.encode(request)

    def file(self, model: str, stream: bool) -> Path:
        key = (model, stream)
        if key not in self._files:
            path = self._directory / f"body-{len(self._files)}.json"
            path.write_bytes(self.payload(model, stream))
            self._files[key] = path
        return self._files[key]


def check_gateway_answers(stack: Stack) -> None:
    """One request per model through the gateway before measuring, so that a gateway that
    cannot answer fails the run in seconds, with its log, not after minutes of red rows."""
    for delay in stack.delays_ms:
        request = urllib.request.Request(
            stack.gateway.url + _CHAT_PATH,
            data=Bodies.payload(gateway_model(delay), stream=False),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_KEY}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                reply = msgspec.json.decode(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise StackError(
                f"the gateway answered {error.code} to a test request: {detail}\n"
                f"its log ends with:\n{stack.gateway.log_tail()}"
            ) from None
        except (OSError, msgspec.DecodeError) as error:
            raise StackError(
                f"the gateway's test request failed ({error}); its log ends with:\n"
                f"{stack.gateway.log_tail()}"
            ) from None
        if not isinstance(reply, dict) or not reply.get("choices"):
            raise StackError(f"the gateway's test reply has no choices: {reply!r}")


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:  # uvloop comes with uvicorn[standard]; asyncio's own loop works too
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def _ttft(url: str, body: bytes, concurrency: int, timing: Timing) -> TtftResult:
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(
            measure_ttft(
                url,
                body=body,
                key=ADMIN_KEY,
                concurrency=concurrency,
                warmup_s=timing.warmup_s,
                duration_s=timing.duration_s,
            )
        )


@dataclass(frozen=True, slots=True)
class _Side:
    load: WrkResult
    ttft: TtftResult | None
    gateway_cpu_percent: float


def _measure_side(
    stack: Stack,
    url: str,
    body_file: Path,
    ttft_body: bytes | None,
    concurrency: int,
    timing: Timing,
) -> _Side:
    """wrk warm-up, measured wrk run (sampling the gateway's CPU), then the TTFT client."""
    stack.gateway.check_alive()

    def wrk(seconds: int) -> WrkResult:
        return run_wrk(
            url,
            body_file=body_file,
            key=ADMIN_KEY,
            stream=ttft_body is not None,
            connections=concurrency,
            duration_s=seconds,
            pin=CpuPlan.prefix(stack.plan.load),
        )

    if timing.warmup_s:
        wrk(timing.warmup_s)
    meter = CpuMeter(stack.gateway.pid)
    load = wrk(timing.duration_s)
    cpu_percent = meter.percent()
    ttft = (
        _ttft(url, ttft_body, concurrency, timing)
        if ttft_body is not None and timing.ttft
        else None
    )
    return _Side(load, ttft, cpu_percent)


def measure_point(
    stack: Stack, bodies: Bodies, timing: Timing, delay: float, mode: Mode, concurrency: int
) -> Point:
    """The same load straight to the upstream with ``delay``, then through the gateway."""
    stream = mode == "stream"
    other_load = OtherLoadMeter(stack.pids)
    sides = [
        _measure_side(
            stack,
            base_url + _CHAT_PATH,
            bodies.file(model, stream),
            bodies.payload(model, stream) if stream else None,
            concurrency,
            timing,
        )
        for base_url, model in (
            (stack.upstreams[delay].url, UPSTREAM_MODEL),  # direct first
            (stack.gateway.url, gateway_model(delay)),
        )
    ]
    direct, gateway = sides
    return Point(
        delay_ms=delay,
        mode=mode,
        concurrency=concurrency,
        direct=direct.load,
        gateway=gateway.load,
        direct_ttft=direct.ttft,
        gateway_ttft=gateway.ttft,
        gateway_cpu_percent=gateway.gateway_cpu_percent,
        gateway_rss_mb=memory(stack.gateway.pid).rss_mb,
        other_cpu_percent=other_load.percent(),
    )
