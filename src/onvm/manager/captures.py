"""Captures: copies of what passes a port or an NF, streamed to the connection that asked.

Theory of operation
-------------------
The packet path copies (``_native/capture.c``); this part decides what is
watched and carries the copies out.  :meth:`Captures.start` takes one of the
region's capture slots, writes its filter, snaplen and count, sets the tap
bits of the port or the NFs to watch, and starts a pump thread for it.  The
pump sleeps on the capture's futex (the packet path wakes it when it copies
something), reads what is there as pcap records with nanosecond stamps, and
sends them to the connection as ``capture`` events (base64 within one control
message).  When the connection does not keep up, the pump stops reading: the
capture's ring fills and the packet path counts what it cannot take as the
capture's drops, never waiting for it.  A capture of a service follows its
instances: the pump taps the ones that start and untaps the ones that leave.

A capture ends when its count is reached (a ``capture_end`` event with its
counts), when it is stopped (:meth:`stop`, whose reply has the counts), when
its connection closes, and when the data plane closes.  A slot is reused only
after a pause, so that a producer still finishing a burst for the old capture
is done with it.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onvm import _native
from onvm.control import ops
from onvm.errors import OnvmError
from onvm.flows.rules import parse_filter
from onvm.manager.dataplane import DataPlane
from onvm.manager.nfs import Caller

__all__ = ["Captures"]

READ_BYTES = 48_000  # pcap bytes per event: base64 and JSON stay within one control message
BACKLOG = 32  # events queued on a connection before the pump stops reading
REUSE_AFTER = 0.1  # seconds before a stopped capture's slot is taken again
WAIT = 0.2  # seconds a pump sleeps at most (to notice stop and service changes)


@dataclass
class _Capture:
    slot: int
    caller: Caller
    req: ops.CaptureStart
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    nfs: set[int] = field(default_factory=set)  # NFs tapped now
    result: dict[str, Any] = field(default_factory=dict)


class Captures:
    """The running captures of one manager (see the module docstring)."""

    def __init__(self, dataplane: DataPlane, instances: Callable[[int], list[int]], lock: threading.RLock,
                 log: Callable[[str], None]) -> None:
        self.dp = dataplane
        self.instances = instances  # service -> ids of its running NFs, read under lock
        self.registry_lock = lock  # the manager's: handlers hold it while they may wait for a pump
        self.log = log
        self._lock = threading.Lock()
        self._running: dict[int, _Capture] = {}
        self._freed: dict[int, float] = {}  # slot -> when it was let go
        dataplane.before_close.append(self.close)

    def start(self, caller: Caller, req: ops.CaptureStart) -> dict[str, Any]:
        """Start a capture for ``caller``; its id, the snaplen its records keep and what it taps."""
        native = self.dp.native
        if req.port is not None and not (req.port < len(self.dp.ports)):
            raise OnvmError(f"there is no port {req.port}", code="not_found")
        rule = parse_filter(req.filter)
        match = rule.match_fields()
        snaplen = min(req.snaplen, self.dp.layout.slot_size - _native.HEADROOM)
        with self._lock:
            now = time.monotonic()
            slot = next((s for s in range(_native.MAX_CAPTURES) if s not in self._running
                         and now - self._freed.get(s, 0.0) >= REUSE_AFTER), None)
            if slot is None:
                raise OnvmError(f"{_native.MAX_CAPTURES} captures run already; stop one first", code="busy")
            cap = _Capture(slot, caller, req)
            self._running[slot] = cap
        native.capture_start(slot, match, snaplen, req.count)
        rx, tx = req.direction in ("rx", "both"), req.direction in ("tx", "both")
        if req.port is not None:
            native.capture_tap(slot, port=req.port, rx=rx, tx=tx)
        else:
            self._follow(cap)
        cap.thread = threading.Thread(target=self._pump, args=(cap,), name=f"onvm-capture{slot}", daemon=True)
        cap.thread.start()
        where = (f"port {req.port}" if req.port is not None else f"NF {req.nf}" if req.nf is not None
                 else f"service {req.service}")
        what = f", filter '{req.filter}'" if req.filter else ""
        what += f", {req.count} packets" if req.count else ""
        self.log(f"capture {slot}: {where} ({req.direction}){what}")
        return {"id": slot, "snaplen": snaplen, "linktype": 1, "nanoseconds": True, "nfs": sorted(cap.nfs)}

    def stop(self, caller: Caller, slot: int) -> dict[str, Any]:
        """End a capture ``caller`` started; its counts."""
        with self._lock:
            cap = self._running.get(slot)
        if cap is None or cap.caller is not caller:
            raise OnvmError(f"no capture {slot} of this connection is running", code="not_found")
        return self._end(cap)

    def closed(self, caller: Caller) -> None:
        """The connection went away: its captures end."""
        with self._lock:
            mine = [c for c in self._running.values() if c.caller is caller]
        for cap in mine:
            self._end(cap)

    def close(self) -> None:
        """Every capture ends (the data plane is about to close)."""
        with self._lock:
            every = list(self._running.values())
        for cap in every:
            self._end(cap)

    # ---- inside ---------------------------------------------------------------
    def _follow(self, cap: _Capture) -> None:
        """Tap the NFs the capture watches now, untap those it watched that are gone."""
        req = cap.req
        if req.nf is not None:
            want = {req.nf}
        elif self.registry_lock.acquire(blocking=False):  # else next round: never wait on a handler
            try:
                want = set(self.instances(req.service or 0))
            finally:
                self.registry_lock.release()
        else:
            return
        rx, tx = req.direction in ("rx", "both"), req.direction in ("tx", "both")
        for nf in want - cap.nfs:
            self.dp.native.capture_tap(cap.slot, nf=nf, rx=rx, tx=tx)
        for nf in cap.nfs - want:
            self.dp.native.capture_tap(cap.slot, nf=nf, rx=True, tx=True, on=False)
        cap.nfs = want

    def _end(self, cap: _Capture) -> dict[str, Any]:
        cap.stop.set()
        if cap.thread is not None and cap.thread is not threading.current_thread():
            cap.thread.join()
        with self._lock:
            if self._running.get(cap.slot) is cap:
                del self._running[cap.slot]
                self._freed[cap.slot] = time.monotonic()
        return cap.result

    def _pump(self, cap: _Capture) -> None:
        native, slot = self.dp.native, cap.slot
        backlog = getattr(cap.caller, "backlog", lambda: 0)
        next_follow = time.monotonic() + WAIT
        ended = False
        try:
            while not cap.stop.is_set():
                if backlog() >= BACKLOG:  # the reader is behind: the ring fills and counts drops
                    cap.stop.wait(0.01)
                    continue
                native.capture_wait(slot, WAIT)
                data = native.capture_read(slot, READ_BYTES)
                if data and not cap.caller.send_event(
                        "capture", {"id": slot, "data": base64.b64encode(data).decode("ascii")}):
                    break  # the connection is gone
                stats = native.capture_stats(slot)
                if stats["remaining"] == 0 and stats["pending"] == 0:
                    ended = True
                    break
                if cap.req.port is None and time.monotonic() >= next_follow:
                    next_follow = time.monotonic() + WAIT
                    self._follow(cap)
        finally:
            native.capture_stop(slot)
            while (data := native.capture_read(slot, READ_BYTES)) and cap.caller.send_event(
                    "capture", {"id": slot, "data": base64.b64encode(data).decode("ascii")}):
                pass  # what was copied before it ended still goes out
            stats = native.capture_stats(slot)
            cap.result = {"id": slot, "captured": stats["taken"], "dropped": stats["drops"]}
            if ended:
                cap.caller.send_event("capture_end", cap.result)
                with self._lock:
                    if self._running.get(slot) is cap:
                        del self._running[slot]
                        self._freed[slot] = time.monotonic()
