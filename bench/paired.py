"""Paired A/B timing: this tree's gateway and another build, loaded at the same time.

On a shared virtual machine the CPU time of a request moves by ±20 % within minutes, so two
builds timed one after the other differ by more than most changes are worth. Here both run
at once, pinned to the same core, each under its own ``wrk`` (on the other core, with the
fake upstream): whatever the host does hits both alike, and the ratio of the requests they
served moves by about a percentage point.

    .venv/bin/python -m bench.paired REV [--rounds 4] [--duration 6] [--concurrency 64]
    .venv/bin/python -m bench.paired --python OTHER_VENV/bin/python

The other build is another commit, another interpreter, or both. ``REV`` is any commit
(``HEAD~3``, a hash): its ``src/`` is taken with ``git archive`` and put first on the other
gateway's ``PYTHONPATH``. ``--python`` runs the other gateway (this tree's sources, unless
``REV`` is given) with another interpreter, which needs the project's dependencies installed:
another venv's ``bin/python``. JSON requests, upstream at 0 ms. A ratio above 1 means this
tree, on this interpreter, served more.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from bench.measure import Bodies
from bench.procstat import cpu_seconds
from bench.stack import (
    ADMIN_KEY,
    CpuPlan,
    Service,
    fake_upstream_command,
    free_port,
    gateway_command,
    gateway_env,
    gateway_model,
    start_service,
    stop_service,
    wait_for_listening,
    wait_for_ready,
    write_gateway_config,
)
from bench.wrk import WrkResult, run_wrk

_REPOSITORY = Path(__file__).resolve().parent.parent


def _source_of(revision: str, into: Path) -> Path:
    """``revision``'s ``src/`` unpacked under ``into``."""
    done = subprocess.run(
        ["git", "-C", str(_REPOSITORY), "archive", revision, "src"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"error: no sources of {revision!r}: {done.stderr.decode().strip()}")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _gateway(
    name: str, workdir: Path, config: Path, plan: CpuPlan, source: Path | None, python: str
) -> Service:
    workdir.mkdir()
    port = free_port()
    env = gateway_env(workdir, config, "warning")
    if source is not None:
        env["PYTHONPATH"] = str(source)
    command = gateway_command(plan, port, python)
    service = start_service(name, command, workdir / "gateway.log", env)
    service.url = f"http://127.0.0.1:{port}"
    return service


def _round(
    services: Sequence[Service], body: Path, plan: CpuPlan, options: argparse.Namespace
) -> list[tuple[WrkResult, float]]:
    """Both gateways loaded at once: each one's wrk result and CPU seconds."""
    before = [cpu_seconds(service.pid) for service in services]
    results: list[WrkResult | None] = [None] * len(services)

    def load(index: int) -> None:
        results[index] = run_wrk(
            services[index].url + "/v1/chat/completions",
            body_file=body,
            key=ADMIN_KEY,
            stream=False,
            connections=options.concurrency,
            duration_s=options.duration,
            pin=plan.prefix(plan.load),
        )

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(services))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spent = [cpu_seconds(s.pid) - b for s, b in zip(services, before, strict=True)]
    return [(result, cpu) for result, cpu in zip(results, spent, strict=True) if result]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    parser.add_argument("revision", nargs="?", help="the commit to compare this tree with")
    parser.add_argument(
        "--python", default=sys.executable, help="the other gateway's interpreter (a venv's)"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=6, help="seconds per round")
    parser.add_argument("--concurrency", type=int, default=64)
    options = parser.parse_args(argv)
    if options.revision is None and options.python == sys.executable:
        parser.error("compare with a commit (REV), another interpreter (--python), or both")
    plan = CpuPlan.choose(enabled=True)
    with tempfile.TemporaryDirectory(prefix="interlock-paired-") as temp:
        workdir = Path(temp)
        if options.revision is None:
            other_name = options.python
            other_source = _REPOSITORY / "src"
        else:
            other_name = options.revision
            other_source = _source_of(options.revision, workdir / "other")
        started: list[Service] = []
        try:
            upstream = start_service(
                "fake upstream",
                [*plan.prefix(plan.load), *fake_upstream_command(0, 16)],
                workdir / "upstream.log",
            )
            started.append(upstream)
            upstream.url = wait_for_listening(upstream, 20)
            config = workdir / "interlock.toml"
            write_gateway_config(config, {0: upstream})
            this = _gateway("this tree", workdir / "this", config, plan, None, sys.executable)
            started.append(this)
            other = _gateway(
                other_name, workdir / "rev", config, plan, other_source, options.python
            )
            started.append(other)
            for service in (this, other):
                wait_for_ready(service, 60)
            body = Bodies(workdir).file(gateway_model(0), stream=False)
            _round([this, other], body, plan, options)  # warm-up, not reported
            print("round  this req  other req  this/other  this µs/req  other µs/req")
            ratios = []
            for number in range(1, options.rounds + 1):
                (mine, my_cpu), (theirs, their_cpu) = _round([this, other], body, plan, options)
                ratio = mine.requests / max(1, theirs.requests)
                ratios.append(ratio)
                print(
                    f"{number:5}  {mine.requests:8}  {theirs.requests:9}  {ratio:10.3f}"
                    f"  {my_cpu / max(1, mine.requests) * 1e6:11.0f}"
                    f"  {their_cpu / max(1, theirs.requests) * 1e6:12.0f}"
                )
            ratios.sort()
            print(f"median this/other: {ratios[len(ratios) // 2]:.3f}")
        finally:
            for service in reversed(started):
                stop_service(service)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
