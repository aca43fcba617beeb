"""Packing: the whole pipeline on one CPU while it is lightly loaded.

Theory of operation
-------------------
Each hand-off on the packet path (RX worker to NF, NF to NF, NF to TX worker)
wakes a thread that went to sleep when its ring ran dry.  What that costs
depends on the CPU the thread wakes on.  On a CPU that is running something
(the waker itself, say) it is a context switch, one or two microseconds.  On
an idle CPU the wake-up waits for the CPU to come out of its idle state: about
45 us on a VM whose idle vCPUs halt (``benchmarks/wake.c`` measures it), and
deep C-states on bare metal are no quicker.  At low rates every hand-off meets
an idle CPU, so spreading the pipeline over CPUs, which throughput needs, is
what latency can least afford.

So the manager measures the pipeline's load: the time its workers and NFs
spend on bursts (``busy_ns`` in the region; their CPU time would also count
the polling they do before they sleep), summed over windows of
:data:`WINDOW` seconds.  Once the load stays under ``--pack-below`` (0.5 CPU
by default) for :attr:`PackSettings.settle` windows in a row, the manager asks
its workers and the NFs it placed to run on one CPU.  Packed, a hand-off wakes
a thread on a CPU that is awake anyway.  When the load passes
:attr:`PackSettings.above` (one CPU is nearly full) every thread goes back to
where it was placed.

The pack CPU is the candidate that was least busy in the window before packing
(from ``/proc/stat``), among the CPUs both the manager and its NFs may use.

A request is a word in the region (``onvm_sched.h``) that each thread follows
from its own loop, so NFs in containers move too.  A move the kernel refuses
(a container's cpuset) shows as ``cpu_refused`` in ``onvm status``.

What a user pinned stays pinned: the workers when the manager has ``--cpus``,
an NF started with CPUs of its own.  ``--no-pin`` leaves NFs to the scheduler
and turns packing off, as does ``--pack-below 0``.

:class:`Packer` is the decision alone (pure, tested on made-up loads);
:class:`Packing` measures and applies it for a manager.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from onvm._proc import cpu_busy_seconds
from onvm.manager.dataplane import DataPlane
from onvm.manager.registry import Registry

WINDOW = 0.5  # seconds between decisions


@dataclass(frozen=True)
class PackSettings:
    below: float = 0.5  # pack when the pipeline uses less CPU than this (in CPUs); 0: never
    above: float = 0.8  # spread again above this
    settle: int = 2  # quiet windows in a row before packing


def least_busy(candidates: Sequence[int], busy: Mapping[int, float]) -> int:
    """The candidate CPU with the least busy time; ties go to the lowest number."""
    return min(candidates, key=lambda c: (busy.get(c, 0.0), c))


class Packer:
    """Pack or spread, one window at a time (see the module docstring)."""

    def __init__(self, settings: PackSettings, candidates: Sequence[int]) -> None:
        self.settings = settings
        self.candidates = tuple(sorted(candidates))
        self.cpu: int | None = None  # the CPU the pipeline is packed onto; None: spread
        self._quiet = 0

    def step(self, load: float, busy: Mapping[int, float]) -> int | None:
        """Feed one window: the pipeline's load and each CPU's busy fraction (both in CPUs).

        Returns where the pipeline should be: a CPU to pack onto, or None."""
        s = self.settings
        if not self.candidates or s.below <= 0:
            return None
        if self.cpu is None:
            self._quiet = self._quiet + 1 if load < s.below else 0
            if self._quiet >= s.settle:
                self.cpu = least_busy(self.candidates, busy)
        elif load > s.above:
            self.cpu, self._quiet = None, 0
        return self.cpu


class Packing:
    """Measures a pipeline each window and moves its threads as the Packer says.

    ``candidates`` are the CPUs it may pack onto (an empty set turns packing
    off); the workers move too when ``move_workers``.  ``lock`` is the one the
    control handlers change ``registry`` under."""

    def __init__(self, settings: PackSettings, *, dataplane: DataPlane, registry: Registry,
                 lock: threading.RLock, log: Callable[[str], None], candidates: Sequence[int],
                 move_workers: bool) -> None:
        self.dataplane = dataplane
        self.registry = registry
        self.lock = lock
        self.log = log
        self.move_workers = move_workers
        self.packer = Packer(settings, sorted(candidates) if len(candidates) > 1 else ())
        self.applied: dict[tuple[str, int, float], int] = {}  # asked of each thread (-1: home)
        self.load = 0.0
        self._t = 0.0
        self._work: int | None = None  # busy ns of the pipeline at the last window
        self.workers = dataplane.layout.rx_workers + dataplane.layout.tx_workers
        self._busy: dict[int, float] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.packer.candidates)

    def tick(self, now: float | None = None) -> None:
        """Called often; measures and decides once a window."""
        if not self.enabled:
            return
        now = time.monotonic() if now is None else now
        if now - self._t < WINDOW:
            return
        dt, self._t = now - self._t, now
        # Workers and the NFs now registered (a snapshot); when one leaves, the
        # total falls, and that window counts as idle.
        with self.lock:
            ids = self.registry.ids()
        work, last = self.dataplane.busy_ns(ids), self._work
        self._work = work
        busy: dict[int, float] = {}
        if self.packer.cpu is None:  # only a spread pipeline needs a CPU to pack onto
            busy_now = cpu_busy_seconds()
            busy = {c: (b - self._busy.get(c, b)) / dt for c, b in busy_now.items()}
            self._busy = busy_now
        if last is None:
            return  # the first window starts here
        self.load = max(work - last, 0) / 1e9 / dt
        before = self.packer.cpu
        target = self.packer.step(self.load, busy)
        if target == before:
            return  # NFs that join are placed by apply() as they register
        if target is None:
            self.log(f"pipeline at {self.load:.2f} CPU: spread again over its CPUs")
        else:
            self.log(f"pipeline at {self.load:.2f} CPU: packed onto CPU {target}")
        self.apply()

    def apply(self) -> None:
        """Ask every movable thread to be where the packer says (NFs that joined since included)."""
        target = -1 if self.packer.cpu is None else self.packer.cpu
        with self.lock:
            want: dict[tuple[str, int, float], int] = {}
            if self.move_workers:
                for w in range(self.workers):
                    want[("worker", w, 0.0)] = target
            for nf_id, registered_at in self.registry.movable():  # a new NF's slot starts at home
                want[("nf", nf_id, registered_at)] = target
            for key, cpu in want.items():
                if self.applied.get(key, -1) != cpu:
                    self.dataplane.set_cpu(key[0], key[1], cpu)
            self.applied = want

    def describe(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "packed_on": self.packer.cpu, "load": round(self.load, 3),
                "below": self.packer.settings.below, "above": self.packer.settings.above}


def summary(packing: Mapping[str, Any]) -> str:
    """One line for people, from a status's ``manager.packing`` ("" when packing is off)."""
    if not packing.get("enabled"):
        return ""
    where = (f"packed onto CPU {packing['packed_on']}" if packing.get("packed_on") is not None
             else f"spread (packs below {packing['below']:g} CPU)")
    return f"pipeline uses {packing['load']:.2f} CPU: {where}"
