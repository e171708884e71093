"""Facts about the machine and the checkout a run was made on, for the results."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent


def _output(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def machine_facts(wrk: str) -> dict[str, Any]:
    """Date, CPUs, CPU model (as ``lscpu`` names it), memory, Python, wrk, git commit.

    Python is named with the installation it comes from (``sys.base_prefix``, under a venv):
    how it was compiled moves the gateway's throughput by some 15 % (bench/README.md)."""
    cpu_model = ""
    for line in _output(["lscpu"]).splitlines():
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
        "python": f"{platform.python_version()} from {sys.base_prefix}",
        "wrk": " ".join(_output([wrk, "--version"]).split()[:2]),
        "commit": _output(["git", "-C", str(_REPO), "rev-parse", "--short", "HEAD"]),
    }
