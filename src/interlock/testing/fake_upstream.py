"""The fake upstream provider: ``FakeUpstream`` for tests, and a command for the benchmark.

    python -m interlock.testing.fake_upstream --host 127.0.0.1 --port 9100 \\
        --first-byte-delay-ms 50 --token-delay-ms 0 --tokens 16

prints ``listening on http://127.0.0.1:9100`` once it accepts requests and exits with status 0
on SIGTERM or SIGINT. The process keeps no ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence

from interlock.testing.fake_app import FakeUpstreamApp
from interlock.testing.fake_behavior import Behavior, Script, ToolCallReply
from interlock.testing.fake_ledger import ServedRequest
from interlock.testing.fake_reply import default_text
from interlock.testing.fake_server import FakeUpstream, bind_socket, loop_factory, run_server

__all__ = ["Behavior", "FakeUpstream", "ServedRequest", "ToolCallReply", "default_text", "main"]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m interlock.testing.fake_upstream",
        description="A fake OpenAI + Anthropic provider for benchmarks.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port")
    parser.add_argument("--first-byte-delay-ms", type=float, default=0.0)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--tokens", type=int, default=5, help="word tokens per reply")
    parser.add_argument("--require-key", default=None, help="answer 401 to other keys")
    parser.add_argument(
        "--model", action="append", dest="models", help="model listed by /v1/models (repeatable)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake upstream until SIGTERM / SIGINT."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    default = Behavior(
        first_byte_delay=args.first_byte_delay_ms / 1000,
        token_delay=args.token_delay_ms / 1000,
        tokens=args.tokens,
    )
    app = FakeUpstreamApp(
        Script(default),
        None,
        require_key=args.require_key,
        models=args.models or ("fake-model",),
    )
    sock = bind_socket(args.host, args.port)
    url = f"http://{args.host}:{sock.getsockname()[1]}"

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await run_server(app, sock, stop, lambda: print(f"listening on {url}", flush=True))

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
