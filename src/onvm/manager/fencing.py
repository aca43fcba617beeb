"""Fencing: what the manager does with an NF that broke the rules of the shared region.

Theory of operation
-------------------
The native packet path validates everything an NF hands over and refuses what
is wrong (see ``_native/fence.c``).  Twice a second the manager asks the data
plane's audit what it found.  :func:`read_audit` turns each finding into a
:class:`Finding`: an NF to fence (it handed over slots it does not hold or
records outside their slots, or it held a ring reservation for a second), or a
repair the audit made that is worth an event.  The manager then fences each
such NF: it leaves its service at once, its process is killed
(:func:`kill_process`: SIGKILL through a pidfd, waiting until it is gone), and
only then are its slots reclaimed, so nothing it still writes can land in a
slot somebody else was given.  An NF whose process cannot be killed stays
fenced and is not reclaimed.

The interpretation is pure and unit-tested; the kill is the only I/O here.
"""

from __future__ import annotations

import errno
import os
import select
import signal
from dataclasses import dataclass
from typing import Any

__all__ = ["Finding", "kill_process", "read_audit"]

_FAULTS = {
    "slot": "its TX ring named slots it did not hand over (not in the pool, or not in transit from it)",
    "record": "it sent packets whose length or offset lies outside their slot",
    "stall": "it held a reservation of a ring for a second without completing it",
    "flag": "it kept its RX ring flagged congested for a second while it was not (its producers waited)",
}
_TABLES = {"chain": "chain", "service": "service"}


@dataclass(frozen=True)
class Finding:
    """One thing the audit found: an NF to fence (``fence`` is its id) and the event's text."""

    text: str
    fence: int = 0


def read_audit(events: list[dict[str, Any]]) -> list[Finding]:
    """The findings of one audit (``DataPlane.audit()``), in order."""
    out = []
    for ev in events:
        kind, nf, peer, count = ev["kind"], ev["nf"], ev["peer"], ev["count"]
        if kind == "fault":
            out.append(Finding(f"{_FAULTS.get(ev['why'], ev['why'])} ({count} refused)", fence=nf))
        elif kind == "stall":
            out.append(Finding(f"{_FAULTS['stall']} (the RX ring of NF {peer})", fence=nf))
        elif kind == "ring":
            out.append(Finding(f"NF {peer}'s RX ring was held up by an enqueue that never completed: "
                               f"published again ({count} entries)"))
        elif kind == "table":
            what = _TABLES.get(ev["why"], ev["why"])
            out.append(Finding(f"{what} {peer} was left half written for a second: "
                               "its sequence word was reset"))
        elif kind == "pool":
            out.append(Finding(f"the free stack's head names slot {count}, which is not in the pool: the "
                               "region was written over, and allocations find nothing"))
    return out


def kill_process(pid: int, timeout: float = 2.0) -> str:
    """SIGKILL ``pid`` and wait until it is gone; "" once it is, else why not.

    ``pid`` must be the kernel's word for the NF (SO_PEERCRED of its control
    connection), never one the NF reported.  A pidfd names the process, so a
    pid reused meanwhile is not hit."""
    if pid <= 0:
        return "its process is not known"
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return ""  # gone already
    except OSError as e:
        return f"cannot reach process {pid}: {e.strerror}"
    try:
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            return ""
        except OSError as e:
            return f"cannot kill process {pid}: {e.strerror}"
        poller = select.poll()
        poller.register(fd, select.POLLIN)  # readable once the process has exited
        if not poller.poll(int(timeout * 1000)):
            return f"process {pid} did not exit within {timeout:g} s of SIGKILL"
        return ""
    except OSError as e:  # pragma: no cover - poll on a pidfd does not fail otherwise
        return f"process {pid}: {os.strerror(e.errno or errno.EIO)}"
    finally:
        os.close(fd)
