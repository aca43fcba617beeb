"""Services: load-balancing policy per service, scaling by starting or stopping NF
processes, and an optional autoscaler.

A new instance is started by the service's launcher (see ``launch.py``):
the topology's supervisor for the services of ``onvm run``, else the recipe
recorded when an NF started by hand with the manager's own privileges
registered.  Nothing an NF says later, and nothing read from /proc, decides
what runs.  Scaling down tells the launchers which instances go for good,
then asks the highest-numbered ones to stop; they leave as any NF does.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onvm.constants import MAX_INSTANCES
from onvm.constants import POLICIES as NATIVE_POLICIES
from onvm.errors import ConfigError, OnvmError
from onvm.manager.launch import Launcher
from onvm.manager.registry import NFRecord, Registry

# the native policies by name, and two short spellings
POLICY_NAMES = {v: k for k, v in NATIVE_POLICIES.items()}
POLICIES = {**NATIVE_POLICIES, "rr": NATIVE_POLICIES["round-robin"], "least": NATIVE_POLICIES["least-loaded"]}


HISTORY_KEPT = 32  # autoscaling decisions kept per service


def parse_policy(text: str) -> int:
    if text.lower() not in POLICIES:
        raise ConfigError(f"policy '{text}': expected hash, round-robin, least-loaded or local")
    return POLICIES[text.lower()]


@dataclass
class AutoscaleSpec:
    """``SERVICE:MIN:MAX``: keep between MIN and MAX instances, adding while rings fill."""

    service: int
    low: int
    high: int
    busy_fill: float = 0.2  # mean RX ring fill above which an instance is added (or: all congested)
    busy_checks: int = 4  # consecutive busy checks (of CHECK_EVERY s) before adding
    idle_checks: int = 20  # consecutive checks without packets before removing one
    busy_seen: int = 0
    idle_seen: int = 0
    last_rx: int = -1
    history: deque[str] = field(default_factory=lambda: deque(maxlen=HISTORY_KEPT))  # the last changes

    @classmethod
    def parse(cls, text: str) -> AutoscaleSpec:
        parts = text.split(":")
        if len(parts) != 3 or not all(p.isdecimal() for p in parts):
            raise ConfigError(f"--autoscale {text}: expected SERVICE:MIN:MAX, e.g. 2:1:4")
        svc, low, high = map(int, parts)
        if not 1 <= low <= high <= MAX_INSTANCES:
            raise ConfigError(f"--autoscale {text}: expected 1 <= MIN <= MAX <= {MAX_INSTANCES}")
        return cls(svc, low, high)


class Services:
    """Scaling and autoscaling of the services of one manager's registry.

    ``stop_nf`` asks an NF to stop (as ``onvm stop`` would), ``nf_info`` reads
    an NF's counters, and ``lock`` serializes the autoscaler with the control
    handlers, which change the registry.
    """

    CHECK_EVERY = 0.5

    def __init__(self, registry: Registry, autoscale: list[AutoscaleSpec], *,
                 stop_nf: Callable[[NFRecord], None], nf_info: Callable[[int], dict[str, Any]],
                 ring_size: int, lock: threading.RLock, log: Callable[[str], None]) -> None:
        self.registry = registry
        self.stop_nf = stop_nf
        self.nf_info = nf_info
        self.ring_size = ring_size
        self.lock = lock
        self.log = log
        self.spawned: list[subprocess.Popen[bytes]] = []
        self.launchers: list[Launcher] = []  # in-process launchers (a topology's supervisor)
        self.autoscale = {a.service: a for a in autoscale}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def describe(self) -> list[dict[str, Any]]:
        by_service: dict[int, list[NFRecord]] = {}
        for r in self.registry:
            by_service.setdefault(r.service, []).append(r)
        policies = self.registry.policies()
        out = []
        for svc in sorted(set(by_service) | set(policies) | set(self.autoscale)):
            recs = sorted(by_service.get(svc, []), key=lambda r: r.instance)
            auto = self.autoscale.get(svc)
            out.append({
                "service": svc,
                "policy": POLICY_NAMES[self.registry.policy_of(svc)],
                "instances": [{"instance": r.instance, "nf_id": r.nf_id, "name": r.name, "pid": r.pid,
                               "state": r.life.state.value} for r in recs],
                "autoscale": {"min": auto.low, "max": auto.high} if auto else None,
            })
        return out

    # ---- scaling --------------------------------------------------------------
    def add_launcher(self, launcher: Launcher) -> None:
        """``launcher`` starts new instances of the services it owns (before any recipe)."""
        self.launchers.append(launcher)

    def scale(self, service: int, count: int) -> dict[str, Any]:
        if not 0 <= count <= MAX_INSTANCES:
            raise ConfigError(f"scale {service} to {count}: expected 0..{MAX_INSTANCES} instances")
        live = self.registry.instances(service)
        started: list[str] = []
        stopped: list[int] = []
        by = ""
        if count > len(live):
            launcher = next((la for la in self.launchers if la.owns(service)), None)
            if launcher is not None:
                by = launcher.name
                started = launcher.grow(service, count - len(live), {r.instance for r in live})
            else:
                by = "recipe"
                started = self._from_recipe(service, live, count - len(live))
        elif count < len(live):
            going = live[count:]
            for la in self.launchers:
                la.shrink(service, [r.instance for r in going])
            for rec in going:
                self.stop_nf(rec)
                stopped.append(rec.nf_id)
        if started or stopped:
            self.log(f"service {service}: {len(live)} -> {count} instances"
                     + (f" (started by the {by})" if by else ""))
        return {"service": service, "from": len(live), "to": count, "started": started, "launcher": by,
                "stopping_nfs": stopped}

    def _from_recipe(self, service: int, live: list[NFRecord], count: int) -> list[str]:
        """Copies of an NF started by hand, from the recipe recorded when it registered."""
        rec = next((r for r in live if r.launch is not None), None)
        if rec is None or rec.launch is None:
            if not live:
                raise OnvmError(f"service {service} has no running NF to copy; start one first",
                                code="not_found")
            raise OnvmError(f"service {service} cannot be scaled by the manager: its NFs run in a sandbox"
                            " or with other privileges than the manager's, so it has no command of theirs"
                            " it may run; start more instances the way the first was started (or run"
                            " them from a topology with onvm run)", code="forbidden")
        out = []
        for _ in range(count):
            proc = rec.launch.start()
            self.spawned.append(proc)
            out.append(f"pid {proc.pid}")
        return out

    def reap(self) -> None:
        self.spawned = [p for p in self.spawned if p.poll() is None]

    def wait_spawned(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for p in self.spawned:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.terminate()
                try:
                    p.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.spawned = []

    # ---- autoscaler -----------------------------------------------------------
    def start(self) -> None:
        if self.autoscale:
            self._thread = threading.Thread(target=self._run, name="onvm-autoscale", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the autoscaler (it scales nothing more once this returns)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stop.wait(self.CHECK_EVERY):
            with self.lock:
                if self._stop.is_set():
                    return
                self.reap()
                for spec in self.autoscale.values():
                    try:
                        self.check(spec)
                    except OnvmError as e:
                        self.log(f"autoscale service {spec.service}: {e}")

    def check(self, spec: AutoscaleSpec) -> None:
        """One look at a service: add an instance while its rings stay full or congested, drop one idle."""
        live = self.registry.instances(spec.service)
        if not live:
            return
        ring = self.ring_size - 1
        infos = [self.nf_info(r.nf_id) for r in live]
        fill = sum(i["rx_ring"] for i in infos) / (ring * len(infos))
        rx = sum(i["rx"] for i in infos)
        moved = spec.last_rx >= 0 and rx != spec.last_rx
        spec.last_rx = rx
        # While the service cannot keep up, backpressure keeps its rings between the
        # low and the high watermark (a quarter and half of them, onvm_bp.h): a look
        # finds one there, congested or not.  A ring that keeps up stays near empty.
        busy = fill > spec.busy_fill or all(i.get("rx_congested") for i in infos)
        spec.busy_seen = spec.busy_seen + 1 if busy else 0
        spec.idle_seen = 0 if moved else spec.idle_seen + 1
        target = len(live)
        if len(live) < spec.low:
            target = spec.low
        elif spec.busy_seen >= spec.busy_checks and len(live) < spec.high:
            target = len(live) + 1
        elif spec.idle_seen >= spec.idle_checks and len(live) > spec.low:
            target = len(live) - 1
        if target != len(live):
            spec.busy_seen = spec.idle_seen = 0
            why = f"rings {fill:.0%} full" if target > len(live) else "idle"
            spec.history.append(f"{len(live)}->{target} ({why})")
            self.log(f"autoscale service {spec.service}: {len(live)} -> {target} instances ({why})")
            self.scale(spec.service, target)
