"""Bytecodes per chat request: the gateway's own Python work, counted, not timed.

On a shared virtual machine the CPU time of a request moves by ±10 to 20 % from one run to the
next, more than most single changes to the request path are worth. The number of bytecodes
the interpreter runs per request does not move (a few per cent, with the usage ledger's
flushes), and the interpreter's loop is most of the gateway's CPU (``perf`` on this machine:
libpython ~75 %, the kernel ~13 %, uvloop ~5 %). So a change to the request path is weighed
here first, and timed with ``bench.run`` after.

It starts one fake upstream (0 ms), runs the gateway's ASGI app in this process (no HTTP
server: uvicorn's own share is not counted), sends ``--warmup`` JSON requests, then counts
the bytecodes of ``--requests`` more, ``--concurrency`` at a time, with ``sys.settrace``
(opcode events; about 50 times slower, so keep ``--requests`` small). It prints the total
per request and the files and functions that ran the most.

    .venv/bin/python -m bench.bytecodes [--requests 1000] [--top 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop

from bench.stack import (
    ADMIN_KEY,
    fake_upstream_command,
    gateway_env,
    gateway_model,
    start_service,
    stop_service,
    wait_for_listening,
    write_gateway_config,
)

_PATH = b"/v1/chat/completions"


class _Counts:
    """Bytecodes run, by file and by function, while ``sys.settrace`` is on."""

    def __init__(self) -> None:
        self.files: Counter[str] = Counter()
        self.functions: Counter[tuple[str, str]] = Counter()

    def trace(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        return self._opcode

    def _opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            self.files[code.co_filename] += 1
            self.functions[(code.co_filename, code.co_qualname)] += 1
        return self._opcode


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/src/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


class _Client:
    """Sends JSON chat requests straight to the ASGI app."""

    def __init__(self, app: Any, model: str) -> None:
        self._app = app
        self._body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": "Say hello"}]}
        ).encode()
        self._headers = [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {ADMIN_KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._body)).encode()),
        ]

    async def one(self) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": _PATH.decode(),
            "raw_path": _PATH,
            "query_string": b"",
            "root_path": "",
            "headers": list(self._headers),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "state": {},
        }
        body_sent = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": self._body, "more_body": False}
            await asyncio.Event().wait()  # the client never leaves
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await self._app(scope, receive, send)
        return status

    async def many(self, requests: int, concurrency: int) -> None:
        async def worker(count: int) -> None:
            for _ in range(count):
                status = await self.one()
                if status != 200:
                    raise RuntimeError(f"the gateway answered {status}")

        share, extra = divmod(requests, concurrency)
        await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))


async def _count(options: argparse.Namespace, config: Path, workdir: Path) -> _Counts:
    from interlock.app import create_app
    from interlock.cli.runtime import settings_or_exit
    from interlock.telemetry.logging import configure_logging

    os.environ.update(gateway_env(workdir, config, "warning"))
    settings = settings_or_exit()
    configure_logging(settings.log_level, settings.log_format)  # as ``interlock serve`` does
    app = create_app(settings, announce=None)
    counts = _Counts()
    async with app.started():
        client = _Client(app, gateway_model(0))
        await client.many(options.warmup, options.concurrency)
        sys.settrace(counts.trace)
        try:
            await client.many(options.requests, options.concurrency)
        finally:
            sys.settrace(None)
    return counts


def _report(counts: _Counts, requests: int, top: int) -> None:
    total = sum(counts.files.values())
    print(f"{total / requests:,.0f} bytecodes per request ({requests} requests)")
    print("\nby file:")
    for filename, count in counts.files.most_common(top):
        print(f"{count / requests:8,.0f}  {_short(filename)}")
    print("\nby function:")
    for (filename, name), count in counts.functions.most_common(top):
        print(f"{count / requests:8,.0f}  {_short(filename)}:{name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bytecodes", description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="requests counted")
    parser.add_argument("--warmup", type=int, default=3000, help="requests before counting")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--top", type=int, default=40, help="files and functions listed")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="interlock-bytecodes-") as temp:
        workdir = Path(temp)
        with contextlib.ExitStack() as stack:
            upstream = start_service(
                "fake upstream", fake_upstream_command(0, 16), workdir / "upstream.log"
            )
            stack.callback(stop_service, upstream)
            upstream.url = wait_for_listening(upstream, 20)
            config = workdir / "interlock.toml"
            write_gateway_config(config, {0.0: upstream})
            counts = uvloop.run(_count(options, config, workdir))
    _report(counts, options.requests, options.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
