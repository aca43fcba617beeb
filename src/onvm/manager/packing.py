"""Packing: the whole pipeline on one CPU while it is lightly loaded, and
spread over its CPUs by load when it is not.

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

A pipeline that is offered more than it handles counts as loaded whatever its
busy time: starved of CPU, it spends little time on bursts because it gets
little CPU.  Its RX workers say so: they leave a port unread because its chain
is congested (``onvm_bp.h``), or find packets on nearly every loop (an unpaced
source never runs dry).  NFs that wait for each other do not count: packets
circling a closed loop pile up in the slowest ring at any load.

The pack CPU is the candidate that was least busy in the window before packing
(from ``/proc/stat``), among the CPUs both the manager and its NFs may use.

Balancing.  Spread, the threads share the CPUs by the work each one does, not
by how many there are.  An NF is placed on the CPU with the fewest NFs when it
registers, and the workers float; but an RX worker that makes packets may cost
three NFs, and the CPU that holds it and two NFs is the pipeline's bottleneck
while the other idles.  So every window the manager reads each movable
thread's busy time (its load, in CPUs), and the :class:`Balancer` assigns the
threads to the CPUs, heaviest first, each onto the CPU with the least load so
far.  It moves threads only when that lowers the busiest CPU's load by a fifth
or more, on loads smoothed over windows, so placement does not flap.  Within a
CPU, threads that have no work sleep (``onvm_sched.h``: a thread spins before
it sleeps only as long as its own load says work comes soon), and producers
that meet a congested ring sleep until it drains: the CPU goes to the threads
with work, in proportion to it.

Pipelines.  The replicas of a service with the ``local`` policy are placed
together with the workers they talk to.  RX worker w hands its packets to
instance ``w % count`` and one TX worker drains each instance, so a packet's
cache lines can stay on the CPU that wrote them from RX worker through
instance to TX worker, but only if the three share that CPU.  Pinned by hand
(``sched_setaffinity``), two RX workers each feeding its own replica, each
such pipeline on a vCPU of its own, delivered 1.24-1.39 times one NF's
throughput, against 0.6-1.0 times with the same threads placed one by one by
the scheduler or the balancer.  So :func:`pipelines` names the threads that
go together (pipelines that share a thread, a lone TX worker say, merge), the
balancer places each as one thread whose load is the sum of its threads', and
it places them afresh when an instance joins or leaves.  Keeping a pipeline
together must not cost a CPU: when the pipelines would leave a CPU with
nothing, or placing every thread alone lowers the busiest CPU's load by more
than a fifth, the threads go singly as before.  A thread that stays where it
is (a worker under ``--cpus``, an NF with CPUs of its own) joins no pipeline.

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
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from onvm._proc import cpu_busy_seconds
from onvm.constants import POLICIES
from onvm.manager.dataplane import DataPlane
from onvm.manager.registry import Registry

WINDOW = 0.5  # seconds between decisions
SATURATED = 0.95  # RX loops that found packets: above this share, the input never runs dry

Thread = tuple[str, int]  # ("worker", row) or ("nf", id)


@dataclass(frozen=True)
class PackSettings:
    below: float = 0.5  # pack when the pipeline uses less CPU than this (in CPUs); 0: never
    above: float = 0.8  # spread again above this
    settle: int = 2  # quiet windows in a row before packing


def least_busy(candidates: Sequence[int], busy: Mapping[int, float]) -> int:
    """The candidate CPU with the least busy time; ties go to the lowest number."""
    return min(candidates, key=lambda c: (busy.get(c, 0.0), c))


def offered_more(before: Sequence[int], now: Sequence[int]) -> bool:
    """Was the pipeline offered more than it handled over a window?  Its RX workers held
    ports (backpressure), or found packets on nearly every loop (an unpaced source:
    there is always more, and the CPU they got, not the traffic, set their busy time).
    Each argument is (loops, busy loops, ports held), summed over the RX workers."""
    loops, busy, held = (b - a for a, b in zip(before, now, strict=True))
    return held > 0 or (loops > 0 and busy >= SATURATED * loops)


class Packer:
    """Pack or spread, one window at a time (see the module docstring)."""

    def __init__(self, settings: PackSettings, candidates: Sequence[int]) -> None:
        self.settings = settings
        self.candidates = tuple(sorted(candidates))
        self.cpu: int | None = None  # the CPU the pipeline is packed onto; None: spread
        self._quiet = 0

    def step(self, load: float, busy: Mapping[int, float], waited: bool = False) -> int | None:
        """Feed one window: the pipeline's load and each CPU's busy fraction (both in CPUs),
        and whether its input met backpressure (then it is not light, whatever its load
        says: a starved pipeline spends little time on bursts because it gets little CPU).

        Returns where the pipeline should be: a CPU to pack onto, or None."""
        s = self.settings
        if not self.candidates or s.below <= 0:
            return None
        if self.cpu is None:
            self._quiet = self._quiet + 1 if load < s.below and not waited else 0
            if self._quiet >= s.settle:
                self.cpu = least_busy(self.candidates, busy)
        elif load > s.above or waited:
            self.cpu, self._quiet = None, 0
        return self.cpu


def pipelines(rx_workers: int, local: Mapping[int, Sequence[tuple[int, int]]],
              tx_row: Mapping[int, int], movable: Container[Thread] | None = None,
              ) -> list[frozenset[Thread]]:
    """The threads that must share a CPU for services with the ``local`` policy.

    ``local`` maps each such service to its running members (nf_id, instance) in the
    order the policy picks them; ``tx_row`` maps an NF to the row of the TX worker that
    drains it.  RX worker w feeds member ``w % count``: the worker, that member and its
    TX worker form a group, and groups that share a thread merge.  Threads not in
    ``movable`` (when given) are left out before merging, so a pinned thread joins
    nothing.  Only groups of two or more threads are returned, in a stable order."""
    parent: dict[Thread, Thread] = {}

    def root(t: Thread) -> Thread:
        parent.setdefault(t, t)
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for members in local.values():
        if not members:
            continue
        for w in range(rx_workers):
            nf_id = members[w % len(members)][0]
            chain: list[Thread] = [("worker", w), ("nf", nf_id)]
            if nf_id in tx_row:
                chain.append(("worker", tx_row[nf_id]))
            kept = [t for t in chain if movable is None or t in movable]
            for t in kept[1:]:
                parent[root(t)] = root(kept[0])
    groups: dict[Thread, set[Thread]] = {}
    for t in parent:
        groups.setdefault(root(t), set()).add(t)
    return sorted((frozenset(g) for g in groups.values() if len(g) > 1), key=sorted)


def units(loads: Mapping[Thread, float], cpus: Sequence[int],
          groups: Iterable[Collection[Thread]] = ()) -> list[frozenset[Thread]]:
    """What :func:`balance` places, each unit onto one CPU: each group's threads that have
    a load, and every other thread alone.  A thread is in one group at most (the first
    that names it).  When the groups would leave a CPU with nothing that the threads
    placed singly would use, every thread is placed singly: a pipeline kept together
    must not cost a CPU."""
    taken: set[Thread] = set()
    out: list[frozenset[Thread]] = []
    for g in groups:
        unit = frozenset(t for t in g if t in loads and t not in taken)
        if len(unit) > 1:
            out.append(unit)
            taken |= unit
    out += [frozenset((t,)) for t in loads if t not in taken]
    if len(out) < min(len(loads), len(cpus)):
        return [frozenset((t,)) for t in loads]
    return out


def balance(loads: Mapping[Thread, float], cpus: Sequence[int],
            current: Mapping[Thread, int] | None = None,
            groups: Iterable[Collection[Thread]] = (), slack: float = 0.2) -> dict[Thread, int]:
    """Threads onto CPUs, heaviest first, each onto the CPU with the least load so far
    (among equals the one it is on, then the lowest number).

    A group (see :func:`units`) goes as one thread whose load is its threads' sum, all
    of them onto one CPU (among equals the one most of them are on), unless placing
    every thread singly lowers the busiest CPU's load by more than ``slack`` of it."""
    current = current or {}
    todo = units(loads, cpus, groups)
    grouped = _place(loads, cpus, current, todo)
    if len(todo) == len(loads):  # no group: every thread alone
        return grouped
    single = _place(loads, cpus, current, [frozenset((t,)) for t in loads])
    return single if peak(single, loads) < (1 - slack) * peak(grouped, loads) else grouped


def _place(loads: Mapping[Thread, float], cpus: Sequence[int], current: Mapping[Thread, int],
           todo: Iterable[frozenset[Thread]]) -> dict[Thread, int]:
    """The greedy placement of :func:`balance`, a unit at a time."""
    total = dict.fromkeys(cpus, 0.0)
    out: dict[Thread, int] = {}
    weight = {u: sum(loads[t] for t in u) for u in todo}
    for u in sorted(weight, key=lambda u: (-weight[u], sorted(u))):
        cpu = min(cpus, key=lambda c: (total[c], -sum(current.get(t) == c for t in u), c))
        out.update(dict.fromkeys(u, cpu))
        total[cpu] += weight[u]
    return out


def peak(assignment: Mapping[Thread, int], loads: Mapping[Thread, float]) -> float:
    """The load of the busiest CPU under an assignment."""
    per: dict[int, float] = {}
    for t, cpu in assignment.items():
        per[cpu] = per.get(cpu, 0.0) + loads.get(t, 0.0)
    return max(per.values(), default=0.0)


class Balancer:
    """Spread threads over CPUs by their load, one window at a time (see the module docstring)."""

    def __init__(self, cpus: Sequence[int], gain: float = 0.2, settle: int = 2) -> None:
        self.cpus = tuple(sorted(cpus))
        self.gain = gain  # the part of the busiest CPU's load a move must save
        self.settle = settle  # windows measured before the first assignment
        self.assignment: dict[Thread, int] = {}
        self.pipelines: list[frozenset[Thread]] = []  # the groups the assignment keeps on one CPU
        self._groups: frozenset[frozenset[Thread]] = frozenset()  # the groups it was made for
        self._avg: dict[Thread, float] = {}
        self._windows = 0

    def reset(self) -> None:
        self.assignment, self.pipelines, self._groups, self._avg, self._windows = {}, [], frozenset(), {}, 0

    def step(self, loads: Mapping[Thread, float],
             groups: Iterable[Collection[Thread]] = ()) -> dict[Thread, int] | None:
        """Feed one window's loads (CPUs per thread) and the groups of threads that should
        share a CPU (:func:`pipelines`); returns a new assignment when one is worth it.
        A change of the groups is worth one."""
        self._avg = {t: (self._avg[t] + v) / 2 if t in self._avg else v for t, v in loads.items()}
        self._windows += 1
        if len(self.cpus) < 2 or self._windows < self.settle:
            return None
        present = (frozenset(t for t in g if t in self._avg) for g in groups)
        wanted = sorted((g for g in present if len(g) > 1), key=sorted)
        now = {t: c for t, c in self.assignment.items() if t in self._avg}
        best = balance(self._avg, self.cpus, now, wanted, self.gain)
        regrouped, self._groups = frozenset(wanted) != self._groups, frozenset(wanted)
        # The same assignment again is no move.  Regrouped, a move is worth it unless the
        # new groups sit together already; otherwise only when it relieves the busiest CPU
        # enough (with no load at all, nothing does).
        stay = best == now or (not regrouped and set(now) == set(best) and
                               peak(best, self._avg) > (1 - self.gain) * peak(now, self._avg))
        if not stay:
            self.assignment = best
        if regrouped or not stay:
            self.pipelines = [g for g in wanted if len({best[t] for t in g}) == 1]
        return None if stay else best


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
        self.balancer = Balancer(self.packer.candidates)
        self._thread_busy: dict[Thread, int] = {}  # busy ns of each movable thread at the last window
        self.applied: dict[tuple[str, int, float], int] = {}  # asked of each thread (-1: home)
        self.load = 0.0
        self._t = 0.0
        self._work: int | None = None  # busy ns of the pipeline at the last window
        self._rx: tuple[int, int, int] | None = None  # RX loops, busy loops, ports held at the last window
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
        rx, last_rx = self.dataplane.rx_pressure(), self._rx
        self._rx = rx
        busy: dict[int, float] = {}
        if self.packer.cpu is None:  # only a spread pipeline needs a CPU to pack onto
            busy_now = cpu_busy_seconds()
            busy = {c: (b - self._busy.get(c, b)) / dt for c, b in busy_now.items()}
            self._busy = busy_now
        if last is None:
            return  # the first window starts here
        self.load = max(work - last, 0) / 1e9 / dt
        before = self.packer.cpu
        waited = last_rx is not None and offered_more(last_rx, rx)
        target = self.packer.step(self.load, busy, waited)
        if target == before:
            if target is None and self._rebalance(dt):
                self.apply()
            return  # NFs that join are placed by apply() as they register
        self.balancer.reset()
        if target is None:
            why = "offered more than it handles" if waited and self.load <= self.packer.settings.above \
                else f"at {self.load:.2f} CPU"
            self.log(f"pipeline {why}: spread again over its CPUs")
        else:
            self.log(f"pipeline at {self.load:.2f} CPU: packed onto CPU {target}")
        self.apply()

    def _rebalance(self, dt: float) -> bool:
        """One window of the Balancer over the movable threads; True when they should move."""
        workers = self.workers if self.move_workers else 0
        with self.lock:
            nfs = [nf_id for nf_id, _ in self.registry.movable()]
            groups = self._pipelines({("worker", w) for w in range(workers)} | {("nf", i) for i in nfs})
        now = self.dataplane.busy_each(workers, nfs)
        last, self._thread_busy = self._thread_busy, now
        loads = {t: max(ns - last[t], 0) / 1e9 / dt for t, ns in now.items() if t in last}
        new = self.balancer.step(loads, groups) if loads else None
        if new:
            where = ", ".join(f"{kind} {i}: CPU {cpu}" for (kind, i), cpu in sorted(new.items()))
            together = "; ".join(" + ".join(f"{kind} {i}" for kind, i in sorted(g))
                                 for g in self.balancer.pipelines)
            together = f"; on one CPU each: {together}" if together else ""
            self.log(f"threads spread by load ({where}){together}")
        return new is not None

    def _pipelines(self, movable: set[Thread]) -> list[frozenset[Thread]]:
        """The movable threads that the services with the ``local`` policy want on one CPU
        (see :func:`pipelines`), from the registry as it is now (under ``self.lock``)."""
        services = {svc: self.registry.image(svc).members for svc in self.registry.running_services()
                    if self.registry.policy_of(svc) == POLICIES["local"]}
        if not services:
            return []
        tx_row = {r.nf_id: r.tx_worker for r in self.registry}
        return pipelines(self.dataplane.layout.rx_workers, services, tx_row, movable)

    def apply(self) -> None:
        """Ask every movable thread to be where the packer (packed) or the balancer (spread)
        says, NFs that joined since included."""
        packed = self.packer.cpu

        def target(t: Thread) -> int:
            return packed if packed is not None else self.balancer.assignment.get(t, -1)

        with self.lock:
            want: dict[tuple[str, int, float], int] = {}
            if self.move_workers:
                for w in range(self.workers):
                    want[("worker", w, 0.0)] = target(("worker", w))
            for nf_id, registered_at in self.registry.movable():  # a new NF's slot starts at home
                want[("nf", nf_id, registered_at)] = target(("nf", nf_id))
            for key, cpu in want.items():
                if self.applied.get(key, -1) != cpu:
                    self.dataplane.set_cpu(key[0], key[1], cpu)
            self.applied = want

    def describe(self) -> dict[str, Any]:
        balanced = {} if self.packer.cpu is not None else self.balancer.assignment
        return {"enabled": self.enabled, "packed_on": self.packer.cpu, "load": round(self.load, 3),
                "below": self.packer.settings.below, "above": self.packer.settings.above,
                "balanced": [{"kind": kind, "id": i, "cpu": cpu}
                             for (kind, i), cpu in sorted(balanced.items())],
                "pipelines": [] if self.packer.cpu is not None else
                [[{"kind": kind, "id": i} for kind, i in sorted(g)] for g in self.balancer.pipelines]}


def summary(packing: Mapping[str, Any]) -> str:
    """One line for people, from a status's ``manager.packing`` ("" when packing is off)."""
    if not packing.get("enabled"):
        return ""
    how = " by load" if packing.get("balanced") else ""
    kept = len(packing.get("pipelines") or ())
    if kept:  # local replicas, each with its RX and TX worker
        how += f", {kept} pipeline{'s' if kept > 1 else ''} of the local policy on a CPU each"
    where = (f"packed onto CPU {packing['packed_on']}" if packing.get("packed_on") is not None
             else f"spread{how} (packs below {packing['below']:g} CPU)")
    return f"pipeline uses {packing['load']:.2f} CPU: {where}"
