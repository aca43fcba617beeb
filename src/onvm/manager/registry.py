"""The manager's registry: NF records, ids, instances, services, policies, lifecycle.

Theory of operation
-------------------
The registry is the authoritative record of which NFs exist, which service and
instance each one serves, where each one is in its life (the state table of
``_lifecycle.py``) and how each service spreads its packets.  It does no I/O.
A change that the packet path must see returns it as a :class:`ServiceImage`:
a service's running instances and policy, exactly as the region holds them.
The caller writes that image into the region (``DataPlane.publish``).  So the
registry runs in tests with no region at all (``tests/unit/test_registry.py``).

NF ids are 1..MAX_NFS-1 (0 names the manager); the lowest free id is taken.
An NF asks for an instance number or gets the lowest free one of its service.
Only RUNNING NFs are in their service's image: an NF joins when it says it has
started and leaves as soon as it is asked to stop, dies or exits.

A record stays in the registry until the data plane has retired the NF (its
slots reclaimed, see retire.c); then it moves to a short list of NFs that left,
with its final counters, for ``onvm status`` and the exit summary.

Not thread-safe: its owner serializes calls (the control handlers' lock).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from onvm import _native
from onvm.errors import ConfigError, OnvmError
from onvm.manager._lifecycle import Lifecycle, NFEvent, NFState
from onvm.manager.launch import Recipe
from onvm.manager.placement import cpu_load, least_loaded
from onvm.text import fit_text

__all__ = ["LIVE_STATES", "LEFT_KEPT", "NFRecord", "Registry", "ServiceImage"]

#: States in which an NF holds its instance number and counts for scaling.
LIVE_STATES = frozenset({NFState.STARTING, NFState.READY, NFState.RUNNING})
#: NFs that left, kept for status and the summary.
LEFT_KEPT = 64
NAME_MAX = 31  # bytes of an NF's name in the region


@dataclass(frozen=True)
class ServiceImage:
    """What the region holds for a service: its running (nf_id, instance) pairs and policy."""

    service: int
    members: tuple[tuple[int, int], ...]
    policy: int


@dataclass
class NFRecord:
    """What the manager knows of one NF."""

    nf_id: int
    name: str
    service: int
    instance: int
    pid: int
    tx_worker: int  # its TX worker's row in the worker table (RX workers come first)
    life: Lifecycle
    cpu: int | None = None  # where the manager placed it (None: the scheduler decides)
    placed: bool = False  # the manager chose the CPU (the NF named none): packing may move it
    registered_at: float = field(default_factory=time.monotonic)
    final: dict[str, Any] = field(default_factory=dict)  # its counters when it left
    reclaimed: int = 0  # slots returned to the pool when it left
    messages_in: int = 0  # messages delivered to it
    launch: Recipe | None = None  # how to start a copy (only for an NF with the manager's privileges)

    @property
    def state(self) -> NFState:
        return self.life.state

    def describe(self) -> str:
        return f"NF {self.nf_id} ({self.name}, service {self.service}.{self.instance})"


class Registry:
    """NFs and services of one manager (see the module docstring).

    ``rx_workers``/``tx_workers`` decide each NF's TX worker; ``nf_cpus`` are
    the CPUs NFs are placed on, ``worker_cpus`` the CPUs the workers are pinned
    to (they count as load), and ``pin`` whether NFs get a CPU at all.
    """

    def __init__(self, *, rx_workers: int = 1, tx_workers: int = 1, nf_cpus: Iterable[int] = (0,),
                 worker_cpus: Iterable[int] = (), pin: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rx_workers = rx_workers
        self.tx_workers = tx_workers
        self.nf_cpus = tuple(nf_cpus)
        self.worker_cpus = tuple(worker_cpus)
        self.pin = pin
        self._clock = clock
        self._nfs: dict[int, NFRecord] = {}
        self._policy: dict[int, int] = {}
        self.left: deque[NFRecord] = deque(maxlen=LEFT_KEPT)

    # ---- reading ------------------------------------------------------------
    def __iter__(self) -> Iterator[NFRecord]:
        return iter(list(self._nfs.values()))

    def __len__(self) -> int:
        return len(self._nfs)

    def __contains__(self, nf_id: object) -> bool:
        return nf_id in self._nfs

    def ids(self) -> list[int]:
        return list(self._nfs)

    def get(self, nf_id: int) -> NFRecord:
        """The record of ``nf_id``; OnvmError ``no_such_nf`` if there is none."""
        rec = self._nfs.get(nf_id)
        if rec is None:
            raise OnvmError(f"no NF with id {nf_id!r}", code="no_such_nf")
        return rec

    def live(self) -> list[NFRecord]:
        """Records whose NF has not stopped or failed."""
        return [r for r in self._nfs.values() if not r.life.terminal]

    def instances(self, service: int) -> list[NFRecord]:
        """The live instances of ``service`` (starting, ready or running), by instance number."""
        return sorted((r for r in self._nfs.values() if r.service == service and r.state in LIVE_STATES),
                      key=lambda r: r.instance)

    def running(self, service: int | None = None) -> list[NFRecord]:
        return [r for r in self._nfs.values()
                if r.state == NFState.RUNNING and (service is None or r.service == service)]

    def running_services(self) -> set[int]:
        return {r.service for r in self.running()}

    def find(self, service: int, instance: int) -> NFRecord | None:
        """The live NF serving ``service`` as ``instance``, if any."""
        return next((r for r in self._nfs.values()
                     if r.service == service and r.instance == instance and not r.life.terminal), None)

    def policy_of(self, service: int) -> int:
        return self._policy.get(service, 0)

    def policies(self) -> dict[int, int]:
        return dict(self._policy)

    def image(self, service: int) -> ServiceImage:
        """The region's view of ``service`` as the registry has it now."""
        members = sorted((r.instance, r.nf_id) for r in self.running(service))
        return ServiceImage(service, tuple((nf, inst) for inst, nf in members), self.policy_of(service))

    def movable(self) -> list[tuple[int, float]]:
        """(nf_id, registered_at) of the live NFs whose CPU the manager chose (packing moves them)."""
        return [(r.nf_id, r.registered_at) for r in self._nfs.values() if r.placed and not r.life.terminal]

    # ---- changes ------------------------------------------------------------
    def register(self, name: str, service: int, pid: int, instance: int | None = None,
                 cpus: tuple[int, ...] | None = None) -> NFRecord:
        """A new NF in state READY, with an id, an instance and a CPU; refuses what does not fit.

        ``cpus``: the CPUs the NF asked to be placed on (already checked to be
        available); None places it on the manager's NF CPUs, or nowhere without pinning.
        """
        if not 0 <= service < _native.MAX_SERVICES:
            raise ConfigError(f"service {service!r} is out of range (0..{_native.MAX_SERVICES - 1})")
        taken = {r.instance for r in self._nfs.values() if r.service == service and not r.life.terminal}
        if instance is None:
            instance = next(i for i in range(len(taken) + 1) if i not in taken)
        if not 0 <= instance <= _native.INSTANCE_MAX:
            raise ConfigError(f"instance {instance!r} is out of range (0..{_native.INSTANCE_MAX})")
        if instance in taken:
            raise OnvmError(f"service {service} already has an instance {instance}", code="busy")
        if len(taken) >= _native.MAX_INSTANCES:
            raise OnvmError(f"service {service} has {_native.MAX_INSTANCES} instances already", code="busy")
        nf_id = next((i for i in range(1, _native.MAX_NFS) if i not in self._nfs), 0)
        if not nf_id:
            raise OnvmError(f"all {_native.MAX_NFS - 1} NF slots are in use", code="busy")
        cpu = self._place(cpus)
        rec = NFRecord(nf_id, fit_text(name or "nf", NAME_MAX), service, instance, pid,
                       self.rx_workers + nf_id % self.tx_workers, Lifecycle(nf_id, clock=self._clock),
                       cpu=cpu, placed=cpu is not None and not cpus, registered_at=self._clock())
        rec.life.apply(NFEvent.REGISTERED)
        self._nfs[nf_id] = rec
        return rec

    def _place(self, requested: tuple[int, ...] | None) -> int | None:
        """The least-loaded allowed CPU for a new NF (see onvm.manager.placement)."""
        if not self.pin and not requested:
            return None  # the scheduler moves it where there is room
        allowed = requested or self.nf_cpus
        placed = [r.cpu for r in self._nfs.values() if r.cpu is not None and not r.life.terminal]
        return least_loaded(allowed, cpu_load(placed, self.worker_cpus))

    def start(self, nf_id: int) -> ServiceImage:
        """The NF entered its packet loop: it joins its service."""
        rec = self.get(nf_id)
        rec.life.apply(NFEvent.STARTED)
        return self.image(rec.service)

    def stop(self, nf_id: int, *, strict: bool = False) -> ServiceImage:
        """The NF is asked to stop (or says it stops): it leaves its service at once.

        Asking twice is fine; with ``strict`` asking an NF that cannot stop
        (it stopped or failed already) raises the lifecycle's error."""
        rec = self.get(nf_id)
        if rec.life.can(NFEvent.STOP) or strict:
            rec.life.apply(NFEvent.STOP)
        return self.image(rec.service)

    def closed(self, nf_id: int) -> tuple[NFRecord, str, ServiceImage] | None:
        """The NF's connection closed: it stopped (after a stop) or died.

        Returns the record, ``"stopped"`` or ``"died"``, and its service's new
        image; None when there is nothing to retire (unknown or already gone)."""
        rec = self._nfs.get(nf_id)
        if rec is None or rec.life.terminal:
            return None
        if rec.state == NFState.STOPPING:
            rec.life.apply(NFEvent.EXITED)
            how = "stopped"
        else:
            rec.life.apply(NFEvent.DIED)
            how = "died"
        return rec, how, self.image(rec.service)

    def fenced(self, nf_id: int) -> tuple[NFRecord, ServiceImage] | None:
        """The manager fenced the NF off (it broke the rules of the region): it fails and
        leaves its service at once.  None when it is unknown or gone already."""
        rec = self._nfs.get(nf_id)
        if rec is None or rec.life.terminal:
            return None
        rec.life.apply(NFEvent.FENCED)
        return rec, self.image(rec.service)

    def retired(self, nf_id: int, final: dict[str, Any], reclaimed: int) -> NFRecord:
        """The data plane took the NF out of the packet path: its id is free again."""
        rec = self._nfs.pop(nf_id)
        rec.final, rec.reclaimed = final, reclaimed
        self.left.append(rec)
        return rec

    def set_policy(self, service: int, policy: int) -> ServiceImage:
        if not 0 <= service < _native.MAX_SERVICES:
            raise ConfigError(f"service {service} is out of range (0..{_native.MAX_SERVICES - 1})")
        self._policy[service] = policy
        return self.image(service)
