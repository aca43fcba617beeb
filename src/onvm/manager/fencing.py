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

When an NF leaves, a sweep returns the slots nobody can free any more.  It
frees nothing while some NF or worker has not passed a loop iteration (one
stopped in a debugger may still be half way through a free); the warden then
sweeps again on each look until it can.

The interpretation is pure and unit-tested; the kill is the only I/O here.
:class:`Warden` is the manager's part that does the above on each look (and
reports, once per increase, the invalid packets each NF refused from others).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from onvm.constants import DropReason
from onvm.manager.dataplane import DataPlane
from onvm.manager.nfs import NFs
from onvm.manager.registry import Registry

__all__ = ["Finding", "Warden", "kill_process", "read_audit"]

_FAULTS = {
    "slot": "its TX ring named slots it did not hand over (not in the pool, or not in transit from it)",
    "record": "it sent packets whose length or offset lies outside their slot",
    "stall": "it held a reservation of a ring for a second without completing it",
    "flag": "it kept its RX ring flagged congested for a second while it was not (its producers waited)",
}
_TABLES = {"chain": "chain", "service": "service"}
SWEEP_AGAIN_GRACE = 0.1  # seconds a look waits for the packet path when a sweep was put off


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
            out.append(Finding(f"free stack {peer}'s head names slot {count}, which is not in the pool: "
                               "the region was written over, and allocations find nothing in that stack"))
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


class Warden:
    """Fences the NFs the data plane's audit names; logs its repairs and each NF's refusals."""

    def __init__(self, dataplane: DataPlane, registry: Registry, nfs: NFs, lock: threading.RLock,
                 log: Callable[[str], None]) -> None:
        self.dp, self.registry, self.nfs, self.lock, self.log = dataplane, registry, nfs, lock, log
        self._invalid_told: dict[int, int] = {}  # invalid packets each NF refused, as last reported

    def look(self) -> None:
        """Fence the NFs that broke the rules of the region; log the repairs the audit made."""
        if not self.dp.is_open:
            return
        for finding in read_audit(self.dp.audit()):
            if finding.fence:
                self.fence(finding.fence, finding.text)
            else:
                self.log(finding.text)
        with self.lock:
            if self.dp.sweep_due:  # put off when an NF left: the packet path was held up then
                swept = self.dp.sweep(SWEEP_AGAIN_GRACE)
                if swept:
                    self.log(f"{swept} slots that nobody could free any more returned to the pool")
            for rec in self.registry.live():  # NFs refusing what another NF sent them
                refused = self.dp.nf_info(rec.nf_id)["drops"][DropReason["INVALID"]]
                told = self._invalid_told.get(rec.nf_id, 0)
                if refused > told:
                    self.log(f"{rec.describe()} refused {refused - told} invalid packets handed to it "
                             "(slots not sent to it, or records outside their slots)")
                    self._invalid_told[rec.nf_id] = refused

    def fence(self, nf_id: int, why: str) -> None:
        """Out of its service at once; its process killed; then, only, its slots reclaimed."""
        with self.lock:
            # The audit ran outside the lock: the NF it named may have left since and a new
            # one registered under its id (activation clears the region's fence of an id).
            if not self.dp.nf_info(nf_id)["fenced"]:
                return
            fenced = self.nfs.fenced(nf_id, why)
        if fenced is None:
            return
        rec, pid, conns = fenced
        err = kill_process(pid)  # outside the lock: it may take a moment
        for conn in conns:
            conn.close()
        with self.lock:
            self.nfs.reclaim_fenced(rec, err)
            self._invalid_told.pop(nf_id, None)
