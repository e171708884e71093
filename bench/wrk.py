"""Running ``wrk`` with ``chat.lua`` and reading the numbers its ``done()`` prints."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("chat.lua")
_MARKER = "BENCH_RESULT "
# A reply slower than this counts as a wrk timeout rather than a latency sample.
_REQUEST_TIMEOUT_S = 10
# wrk stops on its own after the duration; this only catches a wrk that hangs.
_GRACE_S = 15


class WrkError(RuntimeError):
    """wrk failed or printed no result line."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run: throughput, latency of whole responses, and what went wrong."""

    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    bad_bodies: int

    @property
    def errors(self) -> int:
        """Replies that were not a finished 2xx completion, plus socket errors."""
        return self.non_2xx + self.socket_errors + self.bad_bodies

    def describe_errors(self) -> str:
        parts = [
            f"{count} {what}"
            for count, what in (
                (self.non_2xx, "non-2xx"),
                (self.socket_errors, "socket errors"),
                (self.bad_bodies, "bad bodies"),
            )
            if count
        ]
        return ", ".join(parts)


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkError("wrk is not installed (apt-get install wrk)")
    return found


def run_wrk(
    url: str,
    *,
    body_file: Path,
    key: str,
    stream: bool,
    connections: int,
    duration_s: float,
    pin: Sequence[str] = (),
) -> WrkResult:
    """Load ``url`` with ``connections`` keep-alive connections for ``duration_s`` seconds.

    ``pin`` prefixes the command (``taskset -c 1``). One wrk thread: the load generator
    shares one core with the upstreams, so more threads would only contend for it.
    """
    command = [
        *pin,
        wrk_binary(),
        "--threads=1",
        f"--connections={connections}",
        f"--duration={max(1, round(duration_s))}s",
        f"--timeout={_REQUEST_TIMEOUT_S}s",
        f"--script={SCRIPT}",
        url,
        "--",
        str(body_file),
        key,
        "1" if stream else "0",
    ]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=duration_s + _GRACE_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish within {duration_s + _GRACE_S:.0f} s") from None
    line = next((x for x in done.stdout.splitlines() if x.startswith(_MARKER)), None)
    if done.returncode != 0 or line is None:
        detail = (done.stderr or done.stdout).strip()[-500:]
        raise WrkError(f"wrk exited with status {done.returncode}: {detail}")
    raw = json.loads(line.removeprefix(_MARKER))
    duration = raw["duration_us"] / 1e6
    return WrkResult(
        requests=raw["requests"],
        duration_s=duration,
        requests_per_s=raw["requests"] / duration if duration > 0 else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        mean_ms=raw["mean_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        non_2xx=raw["non_2xx"],
        socket_errors=(
            raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
        ),
        bad_bodies=raw["bad_bodies"],
    )
