"""How busy the machine was while something ran: this process's CPU time against everyone's.

A wall time measured while other jobs share the cores is not the figure of an idle machine, and nothing in the
figure says so. :class:`CpuMeter` reads the kernel's CPU counters (``/proc/stat``) and this process's own CPU
time (itself and the children it has waited for, such as a llama.cpp server it stopped) at the start and at the
end; the difference is the CPU other processes used meanwhile. Linux only: elsewhere a reading is ``None``.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

# Above this share of the machine's CPU taken by other processes, timings are flagged as measured under load.
LOADED_SHARE = 0.10


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    busy: float  # core-seconds every process (and the kernel) computed since boot
    steal: float  # core-seconds the hypervisor gave to other machines
    own: float  # core-seconds of this process and its waited-for children


def cpu_snapshot(stat_path: str = "/proc/stat") -> CpuSnapshot | None:
    """The counters now, or None where ``/proc/stat`` cannot be read."""
    try:
        with open(stat_path, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    tick = os.sysconf("SC_CLK_TCK")
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user and nice]
    values = [int(x) / tick for x in fields[1:9]]
    values += [0.0] * (8 - len(values))
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    own = sum(u.ru_utime + u.ru_stime for u in usage)
    return CpuSnapshot(wall=time.monotonic(), busy=user + nice + system + irq + softirq, steal=steal, own=own)


class CpuMeter:
    """Started at construction; :meth:`reading` gives the load since then."""

    def __init__(self, stat_path: str = "/proc/stat"):
        self.stat_path = stat_path
        self.cores = os.cpu_count() or 1
        self.start = cpu_snapshot(stat_path)

    def reading(self) -> dict[str, float] | None:
        """``own_core_s`` (this process), ``other_core_s`` (every other process, clamped at 0), ``steal_core_s``,
        ``other_share`` and ``steal_share``: those as shares of what the machine's cores could give in the wall time."""
        end = cpu_snapshot(self.stat_path)
        if self.start is None or end is None:
            return None
        wall = max(end.wall - self.start.wall, 1e-9)
        own = end.own - self.start.own
        other = max(0.0, (end.busy - self.start.busy) - own)
        return {"wall_s": round(wall, 1), "cores": self.cores, "own_core_s": round(own, 1), "other_core_s": round(other, 1),
                "steal_core_s": round(end.steal - self.start.steal, 1), "other_share": round(other / (wall * self.cores), 3),
                "steal_share": round((end.steal - self.start.steal) / (wall * self.cores), 3)}


def describe_load(reading: dict[str, float] | None) -> str:
    """One line for a console: what this run used and what other processes took meanwhile."""
    if reading is None:
        return "machine load: not measured (no /proc/stat here)"
    line = (f"machine load over {reading['wall_s']:.0f} s on {reading['cores']} cores: this run {reading['own_core_s']:.0f} "
            f"core-s of CPU, other processes {reading['other_core_s']:.0f} core-s ({reading['other_share']:.0%} of the machine)")
    if reading["steal_core_s"] >= 1:
        line += f", {reading['steal_core_s']:.0f} core-s taken by the hypervisor"
    return line


def is_loaded(reading: dict[str, float] | None) -> bool:
    """Whether other processes (or other virtual machines, through steal) took more than ``LOADED_SHARE``."""
    return reading is not None and reading["other_share"] + reading.get("steal_share", 0.0) > LOADED_SHARE
