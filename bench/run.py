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
import json
import math
import os
import signal
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, NoReturn, cast

from rich.console import Console

from bench.machine import machine_facts
from bench.measure import Bodies, Timing, check_gateway_answers, measure_point
from bench.procstat import OtherLoadMeter, memory
from bench.report import print_report
from bench.results import OTHER_LOAD_WARNING_PERCENT, Mode, Point, Target, evaluate_targets
from bench.stack import CpuPlan, Stack, StackError
from bench.wrk import WrkError, wrk_binary

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
_LOG_WIDTH = 200
_QUIET_CHECK_S = 0.5


@dataclass(frozen=True, slots=True)
class Options:
    delays_ms: tuple[float, ...]
    modes: tuple[Mode, ...]
    concurrencies: tuple[int, ...]
    timing: Timing
    tokens: int
    pin: bool
    markdown: bool
    output: Path
    wait_quiet_s: int
    access_log: bool

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
    # Whole seconds: wrk counts its duration in them.
    parser.add_argument("--duration", type=int, help="seconds measured per run [5]")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up before each run [1]")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per reply [16]")
    parser.add_argument("--no-ttft", action="store_true", help="skip the TTFT client runs")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--markdown", action="store_true", help="also print a Markdown table on stdout"
    )
    parser.add_argument(
        "--wait-quiet",
        type=int,
        default=0,
        metavar="SECONDS",
        help="before each point, wait up to this long for other processes to go quiet [0]",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="run the gateway at log level info: one JSON access line per request",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results [{RESULTS}]")
    args = parser.parse_args(argv)
    quick = args.quick
    concurrencies = args.concurrency or ((1, 64) if quick else (1, 16, 64, 256))
    if 0 in concurrencies:
        parser.error("--concurrency: every value must be at least 1")
    duration = args.duration if args.duration is not None else (2 if quick else 5)
    warmup = args.warmup if args.warmup is not None else 1
    if duration < 1 or warmup < 0 or args.tokens < 1:
        parser.error("--duration and --tokens must be at least 1, --warmup at least 0")
    return Options(
        delays_ms=args.delays or ((0.0,) if quick else (0.0, 50.0)),
        modes=args.modes or ("json", "stream"),
        concurrencies=concurrencies,
        timing=Timing(warmup_s=warmup, duration_s=duration, ttft=not args.no_ttft),
        tokens=args.tokens,
        pin=not args.no_pin,
        markdown=args.markdown,
        output=args.output,
        wait_quiet_s=max(0, args.wait_quiet),
        access_log=args.access_log,
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
    if problems:
        text += f" [red]({'; '.join(problems)})[/]"
    if point.warnings():
        text += f" [yellow]({'; '.join(point.warnings())})[/]"
    console.print(text, highlight=False)


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


@dataclass(frozen=True, slots=True)
class Run:
    """Everything one run measured."""

    points: list[Point]
    rss_at_start_mb: float
    peak_rss_mb: float


def _wait_until_quiet(stack: Stack, limit_s: int, progress: Console) -> None:
    """Sample other processes' CPU use, one second at a time, until it is below the warning
    level or ``limit_s`` has passed (a shared machine: someone's test suite)."""
    deadline = time.monotonic() + limit_s
    said = False
    while True:
        meter = OtherLoadMeter(stack.pids)
        time.sleep(1)
        load = meter.percent()
        if load <= OTHER_LOAD_WARNING_PERCENT or time.monotonic() >= deadline:
            return
        if not said:
            progress.print(f"waiting for other processes to go quiet ({load:.0f} % of a core)")
            said = True


def measure_all(options: Options, plan: CpuPlan, progress: Console) -> Run:
    """Start the stack, measure every point, stop the stack (whatever happens)."""
    points: list[Point] = []
    with (
        tempfile.TemporaryDirectory(prefix="interlock-bench-") as workdir,
        Stack(
            Path(workdir),
            options.delays_ms,
            plan,
            options.tokens,
            log_level="info" if options.access_log else "warning",
        ) as stack,
    ):
        rss_at_start = memory(stack.gateway.pid).rss_mb
        check_gateway_answers(stack)
        bodies = Bodies(Path(workdir))
        for delay in options.delays_ms:
            for mode in options.modes:
                for concurrency in options.concurrencies:
                    if options.wait_quiet_s:
                        _wait_until_quiet(stack, options.wait_quiet_s, progress)
                    point = measure_point(stack, bodies, options.timing, delay, mode, concurrency)
                    points.append(point)
                    _progress(progress, len(points), options.point_count, point)
        return Run(points, rss_at_start, memory(stack.gateway.pid).peak_rss_mb)


def _results_document(
    options: Options, plan: CpuPlan, facts: dict[str, Any], run: Run, targets: list[Target]
) -> dict[str, Any]:
    return {
        "machine": facts,
        "options": {
            "delays_ms": options.delays_ms,
            "modes": options.modes,
            "concurrencies": options.concurrencies,
            "warmup_s": options.timing.warmup_s,
            "duration_s": options.timing.duration_s,
            "tokens": options.tokens,
            "wait_quiet_s": options.wait_quiet_s,
            "access_log": options.access_log,
            "pinning": {"gateway_cpu": plan.gateway, "load_cpu": plan.load},
        },
        "gateway": {"rss_at_start_mb": run.rss_at_start_mb, "peak_rss_mb": run.peak_rss_mb},
        "points": [point.to_json() for point in run.points],
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
    }


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    progress = Console(stderr=True, soft_wrap=True)
    console = Console(stderr=options.markdown)
    if not console.is_terminal:
        console.width = _LOG_WIDTH  # not 80 columns: the table would be unreadable in a log
    try:
        wrk = wrk_binary()
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
    facts = machine_facts(wrk)
    quiet = OtherLoadMeter([])
    time.sleep(_QUIET_CHECK_S)
    facts["other_load_before_percent"] = round(quiet.percent(), 1)
    if facts["other_load_before_percent"] > OTHER_LOAD_WARNING_PERCENT:
        progress.print(
            f"[yellow]warning: other processes are using {facts['other_load_before_percent']:.0f} "
            "% of a core; the numbers will be skewed (see the check column)[/]",
            highlight=False,
        )
    timing = options.timing
    progress.print(
        f"{options.point_count} points, {timing.warmup_s} s warm-up + {timing.duration_s} s "
        f"per run; {plan.describe()}",
        highlight=False,
    )
    started = time.monotonic()
    try:
        run = measure_all(options, plan, progress)
    except KeyboardInterrupt:
        progress.print("interrupted: every process is stopped")
        return 130
    except (WrkError, StackError) as error:
        progress.print(f"error: {error}", highlight=False, markup=False)
        return 1
    targets = evaluate_targets(run.points, run.peak_rss_mb)
    header = [
        f"{facts['date']} · {facts['cpus']} CPUs ({facts['cpu_model']}) · "
        f"{facts['memory_gb']} GB RAM · Python {facts['python']} · "
        f"commit {facts['commit'] or '?'}",
        f"{plan.describe()} · {timing.warmup_s} s warm-up + {timing.duration_s} s per run · "
        f"{options.tokens} tokens per reply · "
        f"{'access lines on' if options.access_log else 'no access lines (log level warning)'} · "
        f"{time.monotonic() - started:.0f} s in all",
        f"gateway RSS: {run.rss_at_start_mb:.1f} MB at start, peak {run.peak_rss_mb:.1f} MB",
    ]
    print_report(console, run.points, targets, header, markdown=options.markdown)
    document = _results_document(options, plan, facts, run, targets)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(_json_safe(document), indent=2), encoding="utf-8")
    progress.print(f"raw results: {options.output}", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
