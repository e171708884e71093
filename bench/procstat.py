"""What the kernel says a process has used: CPU time and resident memory, from ``/proc``."""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _TICKS_PER_SECOND


@dataclass(frozen=True, slots=True)
class Memory:
    """Resident set size now and its high-water mark, in MB (10^6 bytes)."""

    rss_mb: float
    peak_rss_mb: float


def memory(pid: int) -> Memory:
    """``VmRSS`` and ``VmHWM`` of ``pid``."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024 / 1e6  # reported in KiB
    return Memory(rss_mb=values.get("VmRSS", 0.0), peak_rss_mb=values.get("VmHWM", 0.0))


class CpuMeter:
    """CPU use of one process from construction to ``percent()``, as % of one core."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._started = time.monotonic()
        self._cpu = cpu_seconds(pid)

    def percent(self) -> float:
        elapsed = time.monotonic() - self._started
        if elapsed <= 0:
            return 0.0
        return 100.0 * (cpu_seconds(self._pid) - self._cpu) / elapsed


def _machine_busy_seconds() -> float:
    """CPU time the machine's CPUs spent running processes (or stolen by the hypervisor).

    Interrupt and softirq time is left out: much of it is the loopback traffic of the
    benchmark itself, and no process is charged for it.
    """
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()  # "cpu  user nice system idle iowait irq softirq steal"
    user, nice, system, steal = (int(fields[i]) for i in (1, 2, 3, 8))
    return (user + nice + system + steal) / _TICKS_PER_SECOND


def _own_seconds(pids: Sequence[int]) -> float:
    """CPU time of ``pids``, of this process, and of its waited-for children (the wrk runs)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    for pid in pids:
        with contextlib.suppress(OSError):
            total += cpu_seconds(pid)
    return total


class OtherLoadMeter:
    """CPU used on the machine by anything but the benchmark, as % of one core.

    Other processes on the two cores (a test suite, a build) skew every number; this says
    how much they took while a point was measured, so that a skewed point can be told apart.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self._pids = tuple(pids)
        self._started = time.monotonic()
        self._busy = _machine_busy_seconds()
        self._own = _own_seconds(self._pids)

    def percent(self) -> float:
        elapsed = time.monotonic() - self._started
        if elapsed <= 0:
            return 0.0
        busy = _machine_busy_seconds() - self._busy
        own = _own_seconds(self._pids) - self._own
        return max(0.0, 100.0 * (busy - own) / elapsed)
