"""``python -m bench.run``: Interlock's overhead against a direct call, in one command.

Starts two fake upstreams (0 ms and 50 ms to first byte) and one gateway worker in front of
them, pinned to their own CPUs; for every upstream, mode (JSON, streaming) and concurrency it
loads the upstream directly and then through the gateway with wrk (and, for streaming, times
the first token with an aiohttp client); prints the table and the targets, and writes the raw
numbers to ``bench/results/latest.json``. See ``bench/README.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as ``python bench/run.py``: make ``bench`` importable, and move into the project's
    # venv if this interpreter lacks the dependencies.
    _ROOT = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(_ROOT))
    try:
        import aiohttp  # noqa: F401

        import interlock  # noqa: F401
    except ImportError:
        import os

        _VENV = _ROOT / ".venv"
        if (_VENV / "bin" / "python").exists() and Path(sys.prefix) != _VENV:
            os.execv(_VENV / "bin" / "python", [str(_VENV / "bin" / "python"), *sys.argv])
        raise

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn, cast

import msgspec
from rich.console import Console

from bench.procstat import CpuMeter, memory
from bench.report import print_report
from bench.results import Mode, Point, evaluate_targets
from bench.stack import (
    ADMIN_KEY,
    UPSTREAM_MODEL,
    CpuPlan,
    Stack,
    StackError,
    gateway_model,
)
from bench.ttft import TtftResult, measure_ttft
from bench.wrk import WrkError, WrkResult, run_wrk, wrk_binary

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
_PROMPT = "Say hello to the benchmark."
_LOG_WIDTH = 200


@dataclass(frozen=True, slots=True)
class Options:
    delays_ms: tuple[float, ...]
    modes: tuple[Mode, ...]
    concurrencies: tuple[int, ...]
    warmup_s: float
    duration_s: float
    tokens: int
    ttft: bool
    pin: bool
    markdown: bool
    output: Path

    @property
    def point_count(self) -> int:
        return len(self.delays_ms) * len(self.modes) * len(self.concurrencies)


def _numbers(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated numbers: {text!r}"
            ) from None
        if not values or any(value < 0 for value in values):
            raise argparse.ArgumentTypeError(f"expected non-negative numbers: {text!r}")
        return values

    return parse


def _modes(text: str) -> tuple[Mode, ...]:
    modes = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [mode for mode in modes if mode not in ("json", "stream")]
    if not modes or unknown:
        raise argparse.ArgumentTypeError("modes are json and stream")
    return cast(tuple[Mode, ...], modes)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Measure Interlock's overhead against direct calls to a fake upstream.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 0 ms upstream, concurrency 1 and 64, 1 s warm-up + 2 s per run",
    )
    parser.add_argument(
        "--delays", type=_numbers(float), help="upstream first-byte delays, ms [0,50]"
    )
    parser.add_argument("--modes", type=_modes, help="json and/or stream [json,stream]")
    parser.add_argument(
        "--concurrency", type=_numbers(int), help="connections per run [1,16,64,256]"
    )
    parser.add_argument("--duration", type=float, help="seconds measured per run [5]")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each run [1]")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per reply [16]")
    parser.add_argument("--no-ttft", action="store_true", help="skip the TTFT client runs")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--markdown", action="store_true", help="also print a Markdown table on stdout"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results [{RESULTS}]")
    args = parser.parse_args(argv)
    quick = args.quick
    concurrencies = args.concurrency or ((1, 64) if quick else (1, 16, 64, 256))
    if 0 in concurrencies:
        parser.error("--concurrency: every value must be at least 1")
    duration = args.duration if args.duration is not None else (2.0 if quick else 5.0)
    if duration < 1:
        parser.error("--duration: at least 1 second")
    return Options(
        delays_ms=args.delays or ((0.0,) if quick else (0.0, 50.0)),
        modes=args.modes or ("json", "stream"),
        concurrencies=concurrencies,
        warmup_s=args.warmup if args.warmup is not None else 1.0,
        duration_s=duration,
        tokens=args.tokens,
        ttft=not args.no_ttft,
        pin=not args.no_pin,
        markdown=args.markdown,
        output=args.output,
    )


# -- the machine -----------------------------------------------------------------------------


def _command_output(command: Sequence[str]) -> str:
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_facts() -> dict[str, Any]:
    cpu_model = ""
    for line in _command_output(["lscpu"]).splitlines():
        if line.startswith("Model name:"):
            cpu_model = line.partition(":")[2].strip()
    memory_gb = 0.0
    with Path("/proc/meminfo").open(encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_gb = int(line.split()[1]) * 1024 / 1e9
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model or platform.processor(),
        "memory_gb": round(memory_gb, 1),
        "python": platform.python_version(),
        "wrk": " ".join(_command_output([wrk_binary(), "--version"]).split()[:2]),
        "commit": _command_output(
            ["git", "-C", str(RESULTS.parent.parent), "rev-parse", "--short", "HEAD"]
        ),
    }


# -- measuring -------------------------------------------------------------------------------


class Bodies:
    """Request bodies, written once to files for wrk."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._files: dict[tuple[str, bool], Path] = {}

    def payload(self, model: str, stream: bool) -> bytes:
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


def _run_ttft(url: str, body: bytes, concurrency: int, options: Options) -> TtftResult:
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:  # uvloop comes with uvicorn[standard]; asyncio's loop also works
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(
            measure_ttft(
                url,
                body=body,
                key=ADMIN_KEY,
                concurrency=concurrency,
                warmup_s=options.warmup_s,
                duration_s=options.duration_s,
            )
        )


def check_gateway_answers(stack: Stack, bodies: Bodies) -> None:
    """One request per model through the gateway before measuring, to fail in seconds with
    a clear message rather than after minutes of flagged points."""
    for delay in stack.delays_ms:
        request = urllib.request.Request(
            f"{stack.gateway.url}/v1/chat/completions",
            data=bodies.payload(gateway_model(delay), stream=False),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_KEY}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                reply = msgspec.json.decode(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            raise SystemExit(
                f"the gateway answered {error.code} to a test request: {detail}\n"
                f"gateway log:\n{stack.gateway.log_tail()}"
            ) from None
        if not reply.get("choices"):
            raise SystemExit(f"the gateway's test reply has no choices: {reply!r}")


def measure_point(
    stack: Stack, bodies: Bodies, options: Options, delay: float, mode: Mode, concurrency: int
) -> Point:
    stream = mode == "stream"
    pin = CpuPlan.prefix(stack.plan.load)
    targets = (
        (f"{stack.upstreams[delay].url}/v1/chat/completions", UPSTREAM_MODEL),
        (f"{stack.gateway.url}/v1/chat/completions", gateway_model(delay)),
    )
    loads: list[WrkResult] = []
    ttfts: list[TtftResult | None] = []
    cpu_percent = 0.0
    for index, (url, model) in enumerate(targets):
        through_gateway = index == 1
        stack.gateway.check_alive()
        body_file = bodies.file(model, stream)
        if options.warmup_s > 0:
            run_wrk(
                url,
                body_file=body_file,
                key=ADMIN_KEY,
                stream=stream,
                connections=concurrency,
                duration_s=options.warmup_s,
                pin=pin,
            )
        meter = CpuMeter(stack.gateway.pid)
        loads.append(
            run_wrk(
                url,
                body_file=body_file,
                key=ADMIN_KEY,
                stream=stream,
                connections=concurrency,
                duration_s=options.duration_s,
                pin=pin,
            )
        )
        if through_gateway:
            cpu_percent = meter.percent()
        ttfts.append(
            _run_ttft(url, bodies.payload(model, True), concurrency, options)
            if stream and options.ttft
            else None
        )
    return Point(
        delay_ms=delay,
        mode=mode,
        concurrency=concurrency,
        direct=loads[0],
        gateway=loads[1],
        direct_ttft=ttfts[0],
        gateway_ttft=ttfts[1],
        gateway_cpu_percent=cpu_percent,
        gateway_rss_mb=memory(stack.gateway.pid).rss_mb,
    )


def _progress(console: Console, number: int, total: int, point: Point) -> None:
    text = (
        f"[{number}/{total}] {point.delay_ms:g} ms {point.mode} c={point.concurrency}: "
        f"direct {point.direct.requests_per_s:,.0f} req/s p50 {point.direct.p50_ms:.2f} ms, "
        f"gateway {point.gateway.requests_per_s:,.0f} req/s p50 {point.gateway.p50_ms:.2f} ms"
    )
    if point.direct_ttft is not None and point.gateway_ttft is not None:
        text += (
            f", TTFT {point.direct_ttft.ttft_p50_ms:.2f} / {point.gateway_ttft.ttft_p50_ms:.2f} ms"
        )
    problems = point.problems()
    console.print(text + (f" [red]({'; '.join(problems)})[/]" if problems else ""), highlight=False)


# -- the command -----------------------------------------------------------------------------


def _json_safe(value: Any) -> Any:
    """NaN (a run with no samples) as null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    progress = Console(stderr=True, soft_wrap=True)
    console = Console(stderr=options.markdown)
    if not console.is_terminal:
        console.width = _LOG_WIDTH  # not 80 columns: the table would be unreadable in a log
    try:
        wrk_binary()
    except WrkError as error:
        progress.print(f"error: {error}")
        return 2
    # SIGTERM / SIGHUP unwind like Ctrl-C, so that the stack stops every process it started.
    # SIGINT too, explicitly: a shell starts background jobs with SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    plan = CpuPlan.choose(options.pin)
    if plan.load is not None:
        os.sched_setaffinity(0, {plan.load})  # the TTFT client shares the load generator's CPU
    facts = machine_facts()
    progress.print(
        f"{options.point_count} points, {options.warmup_s:g} s warm-up + "
        f"{options.duration_s:g} s per run; {plan.describe()}",
        highlight=False,
    )
    points: list[Point] = []
    started = time.monotonic()
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="interlock-bench-") as workdir:
        bodies = Bodies(Path(workdir))
        try:
            with Stack(Path(workdir), options.delays_ms, plan, options.tokens) as stack:
                start_memory = memory(stack.gateway.pid)
                check_gateway_answers(stack, bodies)
                for delay in options.delays_ms:
                    for mode in options.modes:
                        for concurrency in options.concurrencies:
                            point = measure_point(stack, bodies, options, delay, mode, concurrency)
                            points.append(point)
                            _progress(progress, len(points), options.point_count, point)
                end_memory = memory(stack.gateway.pid)
        except KeyboardInterrupt:
            interrupted = True
            progress.print("interrupted: every process is stopped")
        except (WrkError, StackError) as error:
            progress.print(f"error: {error}", highlight=False, markup=False)
            return 1
    if interrupted:
        return 130
    targets = evaluate_targets(points, end_memory.peak_rss_mb)
    header = [
        f"{facts['date']} · {facts['cpus']} CPUs ({facts['cpu_model']}) · "
        f"{facts['memory_gb']} GB RAM · commit {facts['commit'] or '?'}",
        f"{plan.describe()} · {options.warmup_s:g} s warm-up + {options.duration_s:g} s "
        f"per run · {options.tokens} tokens per reply",
        f"gateway RSS: {start_memory.rss_mb:.1f} MB at start, peak {end_memory.peak_rss_mb:.1f} MB",
    ]
    print_report(console, points, targets, header, markdown=options.markdown)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "machine": facts,
        "options": {
            "delays_ms": options.delays_ms,
            "modes": options.modes,
            "concurrencies": options.concurrencies,
            "warmup_s": options.warmup_s,
            "duration_s": options.duration_s,
            "tokens": options.tokens,
            "pinning": {"gateway_cpu": plan.gateway, "load_cpu": plan.load},
        },
        "gateway": {
            "rss_at_start_mb": start_memory.rss_mb,
            "peak_rss_mb": end_memory.peak_rss_mb,
        },
        "points": [point.to_json() for point in points],
        "targets": [
            {
                "name": target.name,
                "verdict": target.verdict,
                "measured": target.measured,
                "limit": target.limit,
                "unit": target.unit,
                "note": target.note,
            }
            for target in targets
        ],
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    options.output.write_text(
        json.dumps(_json_safe(document), indent=2, default=str), encoding="utf-8"
    )
    progress.print(f"raw results: {options.output}", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
