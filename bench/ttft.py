"""Time to first token of streamed completions, measured by an asyncio (aiohttp) client.

wrk cannot see inside a response (its ``response()`` hook runs once the body is complete),
so this client times each stream itself: from just before the request is written to the
moment the first ``data:`` line whose delta carries non-empty ``content`` is read. The
role-only opening chunk does not count. The rest of the stream is then read without parsing,
and a stream counts as good only if it ends with ``data: [DONE]``.

It runs ``concurrency`` request loops on keep-alive connections, so the load is the same
shape as wrk's; replies started during the warm-up are not sampled.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

_DONE = b"data: [DONE]"
# Bounds each request; a stream that stalls longer than this counts as an error.
_REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30, sock_read=10)
_DRAIN_GRACE_S = 35


@dataclass(frozen=True, slots=True)
class TtftResult:
    """Time-to-first-token and whole-stream samples of one run (milliseconds)."""

    streams: int
    streams_per_s: float
    ttft_p50_ms: float
    ttft_p99_ms: float
    total_p50_ms: float
    total_p99_ms: float
    errors: int


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (``nan`` when empty)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class _StreamError(Exception):
    """The reply was not a good stream (status, error event, no content, no terminator)."""


def _carries_content(payload: bytes) -> bool:
    try:
        chunk: Any = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return False
    if not isinstance(chunk, dict):
        return False
    if "error" in chunk:
        raise _StreamError
    choices = chunk.get("choices")
    if not choices or not isinstance(choices[0], dict):
        return False
    delta = choices[0].get("delta")
    return isinstance(delta, dict) and bool(delta.get("content"))


class _Run:
    def __init__(self, warm_until: float, stop_at: float) -> None:
        self.warm_until = warm_until
        self.stop_at = stop_at
        self.ttft: list[float] = []
        self.total: list[float] = []
        self.errors = 0


async def _one_stream(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], body: bytes
) -> tuple[float, float]:
    """Send one request; return (seconds to first content, seconds to end of stream)."""
    started = time.perf_counter()
    first: float | None = None
    async with session.post(url, data=body, headers=headers) as response:
        if response.status != 200:
            await response.read()
            raise _StreamError
        content = response.content
        while first is None:
            line = await content.readline()
            if not line:
                raise _StreamError  # ended before any content
            if line.startswith(b"data:") and _carries_content(line[5:].strip()):
                first = time.perf_counter()
        tail = b""
        async for piece in content.iter_any():
            tail = (tail + piece)[-64:]
        if _DONE not in tail:
            raise _StreamError
    return first - started, time.perf_counter() - started


async def _worker(
    run: _Run,
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
) -> None:
    while (started := time.perf_counter()) < run.stop_at:
        try:
            ttft, total = await _one_stream(session, url, headers, body)
        except (_StreamError, aiohttp.ClientError, TimeoutError):
            run.errors += 1
            continue
        if started >= run.warm_until:
            run.ttft.append(ttft)
            run.total.append(total)


async def measure_ttft(
    url: str,
    *,
    body: bytes,
    key: str,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
) -> TtftResult:
    """Stream from ``url`` with ``concurrency`` loops for ``warmup_s + duration_s`` seconds."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=_REQUEST_TIMEOUT, auto_decompress=False
    ) as session:
        now = time.perf_counter()
        run = _Run(warm_until=now + warmup_s, stop_at=now + warmup_s + duration_s)
        async with asyncio.timeout(warmup_s + duration_s + _DRAIN_GRACE_S):
            await asyncio.gather(
                *(_worker(run, session, url, headers, body) for _ in range(concurrency))
            )
        measured = time.perf_counter() - run.warm_until
    run.ttft.sort()
    run.total.sort()
    return TtftResult(
        streams=len(run.ttft),
        streams_per_s=len(run.ttft) / measured if measured > 0 else 0.0,
        ttft_p50_ms=percentile(run.ttft, 0.50) * 1000,
        ttft_p99_ms=percentile(run.ttft, 0.99) * 1000,
        total_p50_ms=percentile(run.total, 0.50) * 1000,
        total_p99_ms=percentile(run.total, 0.99) * 1000,
        errors=run.errors,
    )
