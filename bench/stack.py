"""The processes under test: fake upstreams and one gateway worker, pinned, started, stopped.

Each process runs in its own session (process group), so that Ctrl-C in the terminal does
not kill it behind our back, and so that stopping it also stops anything it spawned. The
``Stack`` context manager stops every process it started, in reverse order, however the
block ends (normal exit, exception, ``KeyboardInterrupt``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
_SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
_UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"
_UPSTREAM_KEY = "sk-bench-upstream"
UPSTREAM_MODEL = "bench-model"

_UPSTREAM_START_S = 20.0
_GATEWAY_START_S = 60.0
_STOP_GRACE_S = 10.0
_LISTENING = re.compile(r"listening on (http://\S+)")
# Settings of the developer's shell that would change what is measured.
_FOREIGN_ENV = ("DATABASE_URL", "REDIS_URL", "SENTRY_DSN")


class StackError(RuntimeError):
    """A process of the stack failed to start or died."""


@dataclass(frozen=True, slots=True)
class CpuPlan:
    """Which CPU the gateway runs on, and which one the upstreams and load generator share.

    ``None`` when pinning is off or impossible (fewer than two usable CPUs, no taskset).
    """

    gateway: int | None
    load: int | None

    @classmethod
    def choose(cls, enabled: bool) -> CpuPlan:
        usable = sorted(os.sched_getaffinity(0))
        if not enabled or len(usable) < 2 or shutil.which("taskset") is None:
            return cls(None, None)
        return cls(usable[0], usable[1])

    @staticmethod
    def prefix(cpu: int | None) -> list[str]:
        """The command prefix that runs a program on ``cpu`` (empty when not pinned)."""
        return [] if cpu is None else ["taskset", "--cpu-list", str(cpu)]

    def describe(self) -> str:
        if self.gateway is None:
            return "not pinned"
        return f"gateway on CPU {self.gateway}; upstreams and load generator on CPU {self.load}"


@dataclass(slots=True)
class Service:
    """One started process and where it listens."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        status = self.process.poll()
        if status is not None:
            raise StackError(
                f"{self.name} exited with status {status}; its log ends with:\n{self.log_tail()}"
            )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_service(
    name: str, command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> Service:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    return Service(name, process, log_path)


def stop_service(service: Service) -> None:
    """SIGTERM the service's process group, then SIGKILL it if it lingers."""
    process = service.process
    for signum, wait_s in ((signal.SIGTERM, _STOP_GRACE_S), (signal.SIGKILL, _STOP_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)  # the group we created with start_new_session
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
        return


def wait_for_listening(service: Service, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        service.check_alive()
        match = _LISTENING.search(service.log_path.read_text(encoding="utf-8", errors="replace"))
        if match:
            return match.group(1)
        time.sleep(0.02)
    raise StackError(f"{service.name} did not say it was listening within {timeout_s:.0f} s")


def wait_for_ready(service: Service, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        service.check_alive()
        try:
            with urllib.request.urlopen(f"{service.url}/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise StackError(
        f"{service.name} was not ready within {timeout_s:.0f} s; its log ends with:\n"
        f"{service.log_tail()}"
    )


def fake_upstream_command(delay_ms: float, tokens: int) -> list[str]:
    """The fake upstream on a free port of 127.0.0.1 (it prints ``listening on URL``)."""
    return [
        sys.executable,
        "-m",
        "interlock.testing.fake_upstream",
        "--host=127.0.0.1",
        "--port=0",
        f"--first-byte-delay-ms={delay_ms:g}",
        "--token-delay-ms=0",
        f"--tokens={tokens}",
        f"--model={UPSTREAM_MODEL}",
    ]


def gateway_command(plan: CpuPlan, port: int, python: str = sys.executable) -> list[str]:
    """One gateway worker on ``port`` of 127.0.0.1, on the gateway's CPU, run by ``python``
    (this interpreter unless told)."""
    return [
        *plan.prefix(plan.gateway),
        python,
        "-m",
        "interlock",
        "serve",
        "--host=127.0.0.1",
        f"--port={port}",
    ]


def gateway_model(delay_ms: float) -> str:
    """The gateway's public model name routed to the upstream with this delay."""
    return f"bench-{delay_ms:g}ms"


def write_gateway_config(path: Path, upstreams: Mapping[float, Service]) -> None:
    tables = [
        f'[models."{gateway_model(delay)}"]\n'
        f'deployments = [{{ provider = "openai", model = "{UPSTREAM_MODEL}", '
        f'base_url = "{upstream.url}/v1", api_key_env = "{_UPSTREAM_KEY_ENV}", '
        f'name = "bench-{delay:g}ms" }}]\n'
        for delay, upstream in upstreams.items()
    ]
    path.write_text("\n".join(tables), encoding="utf-8")


def gateway_env(workdir: Path, config: Path, log_level: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("INTERLOCK_") and name not in _FOREIGN_ENV
    }
    env.update(
        INTERLOCK_DATA_DIR=str(workdir / "data"),
        INTERLOCK_ADMIN_KEY=ADMIN_KEY,
        INTERLOCK_SECRET=_SECRET,
        INTERLOCK_CONFIG=str(config),
        INTERLOCK_LOG_LEVEL=log_level,
        **{_UPSTREAM_KEY_ENV: _UPSTREAM_KEY},
    )
    return env


class Stack:
    """Fake upstreams (one per first-byte delay) and one gateway worker in front of them.

    ``with Stack(workdir, delays, plan, tokens) as stack:`` starts them and waits until each
    accepts requests; ``stack.upstreams[delay].url`` and ``stack.gateway.url`` are then set.
    ``log_level`` is the gateway's: at ``info`` it writes an access line per request (into
    its log file in ``workdir``), at ``warning`` none.
    """

    def __init__(
        self,
        workdir: Path,
        delays_ms: Sequence[float],
        plan: CpuPlan,
        tokens: int,
        *,
        log_level: str = "warning",
    ) -> None:
        self.workdir = workdir
        self.log_level = log_level
        self.delays_ms = tuple(delays_ms)
        self.plan = plan
        self.tokens = tokens
        self.upstreams: dict[float, Service] = {}
        self._gateway: Service | None = None
        self._exit = contextlib.ExitStack()

    @property
    def gateway(self) -> Service:
        if self._gateway is None:
            raise RuntimeError("the stack is not started")
        return self._gateway

    @property
    def pids(self) -> list[int]:
        """Every process of the stack."""
        services = [*self.upstreams.values(), *([self._gateway] if self._gateway else [])]
        return [service.pid for service in services]

    def __enter__(self) -> Self:
        try:
            self._start_all()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every process started so far; a second Ctrl-C cannot cut this short."""
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = [signal.signal(signum, signal.SIG_IGN) for signum in signals]
        try:
            self._exit.close()
        finally:
            for signum, handler in zip(signals, previous, strict=True):
                signal.signal(signum, handler)

    def _start_all(self) -> None:
        for delay in self.delays_ms:
            name = f"fake upstream ({delay:g} ms)"
            command = [
                *self.plan.prefix(self.plan.load),
                *fake_upstream_command(delay, self.tokens),
            ]
            service = start_service(name, command, self.workdir / f"upstream-{delay:g}ms.log")
            self._exit.callback(stop_service, service)
            self.upstreams[delay] = service
        for service in self.upstreams.values():
            service.url = wait_for_listening(service, _UPSTREAM_START_S)

        config = self.workdir / "interlock.toml"
        write_gateway_config(config, self.upstreams)
        port = free_port()
        gateway = start_service(
            "gateway",
            gateway_command(self.plan, port),
            self.workdir / "gateway.log",
            gateway_env(self.workdir, config, self.log_level),
        )
        self._exit.callback(stop_service, gateway)
        gateway.url = f"http://127.0.0.1:{port}"
        self._gateway = gateway
        wait_for_ready(gateway, _GATEWAY_START_S)
