"""The NFs' side of the control plane: their connections, lifecycle events and retirement.

Theory of operation
-------------------
An NF registers over its control connection: the registry gives it an id,
an instance and a CPU, and the data plane its slot and rings.  When it says
``start`` it joins its service (the registry's new image is published); when
it is asked to stop, or says it stops, it leaves its service at once.  A
second connection may subscribe to its messages.

An NF is gone when its control connection closes, whether it stopped or died
by any signal (the kernel closes the socket).  :meth:`NFs.closed` then takes it
out of its service and has the data plane retire it (one native call: grace
period, slots back to the pool, TX ring drained; see ``retire.c``), and the
registry moves it to the NFs that left.  Each registration, start and
retirement wakes whoever waits for the NFs (:meth:`NFs.wait`): shutdown,
and a topology's supervisor starting NFs in order.

An NF that breaks the rules of the region is fenced off (``fenced`` and
``reclaim_fenced``, see ``fencing.py``): it leaves its service at once, the
manager kills its process (outside the lock) and only then retires it.

Callers hold the control handlers' lock (``lock``) around every method.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from onvm.control import ops
from onvm.errors import ConfigError, OnvmError
from onvm.manager.dataplane import DataPlane
from onvm.manager.launch import Recipe, same_privileges
from onvm.manager.placement import check_available
from onvm.manager.registry import NFRecord, Registry

__all__ = ["Caller", "NFs"]


class Caller(Protocol):
    """Who asked: a control connection, or a part of the manager itself."""

    pid: int  # 0 when unknown
    data: dict[str, Any]  # per connection: the NF it registered ("nf_id")

    def send_event(self, name: str, data: dict[str, Any] | None = None) -> bool: ...

    def close(self) -> None: ...


class NFs:
    """The registry's NFs and their connections (see the module docstring)."""

    def __init__(self, registry: Registry, dataplane: DataPlane, lock: threading.RLock,
                 log: Callable[[str], None], on_register: Callable[[], None] = lambda: None) -> None:
        self.registry = registry
        self.dp = dataplane
        self.log = log
        self.on_register = on_register  # e.g. packing places the new NF at once
        self.conns: dict[int, Caller] = {}  # each NF's control connection
        self.inboxes: dict[int, Caller] = {}  # the connection that takes its messages
        self._changed = threading.Condition(lock)  # notified when an NF registers, starts or leaves

    def of(self, caller: Caller) -> NFRecord:
        """The NF registered on ``caller``'s connection."""
        nf_id = caller.data.get("nf_id")
        if nf_id is None or nf_id not in self.registry:
            raise OnvmError("this connection has no registered NF", code="no_such_nf")
        return self.registry.get(nf_id)

    def register(self, caller: Caller, req: ops.Register) -> NFRecord:
        if "nf_id" in caller.data:
            raise ConfigError("this connection already registered an NF")
        if req.cpus:
            check_available(req.cpus)
        pid = caller.pid or req.pid
        rec = self.registry.register(req.name, 1 if req.service is None else req.service, pid,
                                     req.instance, tuple(req.cpus) if req.cpus else None)
        self.dp.activate(rec)
        self.conns[rec.nf_id] = caller
        caller.data["nf_id"] = rec.nf_id
        if req.launch is not None and same_privileges(caller.pid):
            rec.launch = Recipe.parse(req.launch)  # never from a sandbox: see launch.py
        self.on_register()
        self._changed.notify_all()
        self.log(f"{rec.describe()} registered (pid {pid}, CPU {rec.cpu})")
        return rec

    def start(self, caller: Caller) -> NFRecord:
        rec = self.of(caller)
        self.dp.publish(self.registry.start(rec.nf_id))
        self._changed.notify_all()
        self.log(f"{rec.describe()} running")
        return rec

    def stopping(self, caller: Caller) -> NFRecord:
        """The NF says it leaves its loop: no more packets for it."""
        rec = self.of(caller)
        self.dp.publish(self.registry.stop(rec.nf_id))
        return rec

    def stop(self, rec: NFRecord, *, strict: bool = False) -> None:
        """Ask an NF to stop: out of its service, its stop flag set, a ``stop`` event sent.

        With ``strict``, an NF that cannot stop (it left already) raises the lifecycle's error."""
        self.dp.publish(self.registry.stop(rec.nf_id, strict=strict))
        self.dp.request_stop(rec.nf_id)
        conn = self.conns.get(rec.nf_id)
        if conn is not None:
            conn.send_event("stop", {"reason": "manager"})

    def subscribe(self, caller: Caller, nf_id: int) -> None:
        rec = self.registry.get(nf_id) if nf_id in self.registry else None
        if rec is None or (caller.pid and rec.pid and caller.pid != rec.pid):
            raise OnvmError("only an NF's own process may take its messages", code="forbidden")
        self.inboxes[nf_id] = caller

    def send(self, caller: Caller, req: ops.Send) -> dict[str, Any]:
        """Deliver ``req.data`` to its NF or to every running instance of its service."""
        sender: dict[str, Any] = {"manager": True}
        if caller.data.get("nf_id") in self.registry:
            src = self.registry.get(caller.data["nf_id"])
            sender = {"nf": src.nf_id, "service": src.service, "instance": src.instance}
        if req.nf is not None:
            targets = [self.registry.get(req.nf)]
        else:
            assert req.service is not None  # Send.check
            targets = self.registry.running(req.service)
        delivered = 0
        message = {"from": sender, "data": req.data}
        for rec in targets:
            inbox = self.inboxes.get(rec.nf_id)
            if inbox is not None and inbox.send_event("message", message):
                rec.messages_in += 1
                delivered += 1
        return {"delivered": delivered, "targets": len(targets)}

    def closed(self, caller: Caller) -> None:
        """A connection closed: if it was an NF's, retire that NF."""
        nf_id = caller.data.get("nf_id")
        closed = self.registry.closed(nf_id) if nf_id is not None else None
        if closed is None:
            return
        rec, how, image = closed
        self.conns.pop(rec.nf_id, None)
        self.inboxes.pop(rec.nf_id, None)
        self.dp.publish(image)
        gone = self.dp.retire(rec.nf_id)
        self.registry.retired(rec.nf_id, gone.final, gone.reclaimed)
        self._changed.notify_all()
        self.log(f"{rec.describe()} {how}; {rec.reclaimed} slots returned to the pool")

    def fenced(self, nf_id: int, why: str) -> tuple[NFRecord, int, list[Caller]] | None:
        """NF ``nf_id`` broke the rules of the region: nothing more is taken from it or sent
        to it, it leaves its service.  Returns its record, the kernel's pid of its control
        connection (the one to kill) and its connections (to close once it is dead); None
        when it is gone already."""
        self.dp.fence(nf_id)
        fenced = self.registry.fenced(nf_id)
        if fenced is None:
            return None
        rec, image = fenced
        self.dp.publish(image)
        conn, inbox = self.conns.pop(nf_id, None), self.inboxes.pop(nf_id, None)
        self.log(f"{rec.describe()} fenced off: {why}")
        return rec, conn.pid if conn is not None else 0, [c for c in (conn, inbox) if c is not None]

    def reclaim_fenced(self, rec: NFRecord, kill_error: str) -> None:
        """Its process is gone (``kill_error`` empty): retire it.  Otherwise it stays fenced,
        its slots in its hands: reclaiming them while it may still write would hand them out."""
        if kill_error:
            self.log(f"{rec.describe()} stays fenced and its slots are not reclaimed: {kill_error}")
            return
        gone = self.dp.retire(rec.nf_id)
        self.registry.retired(rec.nf_id, gone.final, gone.reclaimed)
        self._changed.notify_all()
        self.log(f"{rec.describe()} stopped; {rec.reclaimed} slots returned to the pool")

    def stop_all(self, timeout: float) -> bool:
        """Ask every live NF to stop and wait until all are retired; False on timeout."""
        for rec in self.registry.live():
            self.stop(rec)
        return self.wait(lambda: not self.registry.live(), timeout)

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()`` holds, looking again whenever an NF registers, starts or leaves."""
        with self._changed:
            return self._changed.wait_for(done, timeout)
