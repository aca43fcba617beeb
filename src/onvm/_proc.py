"""CPU time from /proc: per process, and per CPU for the whole machine."""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of process ``pid`` (all its threads); None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def cpu_busy_seconds() -> dict[int, float]:
    """Seconds each CPU has spent busy since boot (everything but idle and iowait)."""
    busy: dict[int, float] = {}
    try:
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                name, _, rest = line.partition(" ")
                if not name.startswith("cpu") or name == "cpu":
                    continue
                v = [int(x) for x in rest.split()]
                busy[int(name[3:])] = (sum(v[:8]) - v[3] - v[4]) / _TICK
    except (OSError, ValueError, IndexError):
        return {}
    return busy
