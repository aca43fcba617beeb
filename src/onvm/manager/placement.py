"""CPU placement: which CPU an NF runs on, and where a port's workers and pool sit.

Theory of operation
-------------------
OpenNetVM gives each NF a core of its own and keeps the manager's cores out of
that set.  The manager here does the same with whatever it is allowed: an NF
that names CPUs (``cpus:`` in a topology file, ``--cpus`` on ``onvm nf``) is
placed on the least-loaded of those; otherwise on the least-loaded CPU of the
manager's NF set (``--nf-cpus``, by default every CPU the manager may run on).
Load is the number of NFs already placed on a CPU, plus one for each manager
worker pinned there; ties go to the lowest CPU number, so placement is
deterministic.  The NF pins itself to the CPU the register reply names.

On a machine with several NUMA nodes a port's RX/TX workers and the packet
pool belong on the node of the port's device.  :func:`numa_plan` makes that
decision from a :class:`NumaTopology` (read from sysfs, or made up in tests):
the pool goes on the node most ports sit on (first touch: the manager pins
itself to that node's CPUs before it creates the region, so the pool's pages
are allocated there), and the workers are pinned to that node's CPUs.  With
one node, or ports with no known node, nothing is pinned.

Everything here is pure logic except the two sysfs readers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from onvm.errors import ConfigError


def parse_cpus(spec: str | int | Iterable[int]) -> tuple[int, ...]:
    """``"0-3,6"``, ``5`` or ``[1, 2]`` -> a sorted tuple of CPU numbers."""
    if isinstance(spec, bool):
        raise ConfigError(f"CPU list {spec!r}: expected numbers like 0-3,6")
    if isinstance(spec, int):
        items: list[int] = [spec]
    elif isinstance(spec, str):
        items = []
        for part in filter(None, (p.strip() for p in spec.split(","))):
            lo, dash, hi = part.partition("-")
            if not lo.isdecimal() or (dash and not hi.isdecimal()):
                raise ConfigError(f"CPU list '{spec}': '{part}' is not a CPU number or range like 2-5")
            a, b = int(lo), int(hi) if dash else int(lo)
            if b < a:
                raise ConfigError(f"CPU list '{spec}': range '{part}' runs backwards")
            items.extend(range(a, b + 1))
    else:
        items = []
        for c in spec:
            if isinstance(c, bool) or not isinstance(c, int):
                raise ConfigError(f"CPU list {list(spec)!r}: {c!r} is not a CPU number")
            items.append(c)
    if not items:
        raise ConfigError(f"CPU list {spec!r} is empty")
    if any(c < 0 for c in items):
        raise ConfigError(f"CPU list {spec!r}: CPU numbers cannot be negative")
    return tuple(sorted(set(items)))


def format_cpus(cpus: Iterable[int]) -> str:
    """(0, 1, 2, 5) -> ``0-2,5``."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def check_available(cpus: Iterable[int], available: Iterable[int] | None = None) -> None:
    """Raise ConfigError naming the CPUs of ``cpus`` this process may not use."""
    have = set(os.sched_getaffinity(0) if available is None else available)
    missing = sorted(set(cpus) - have)
    if missing:
        raise ConfigError(f"CPU {format_cpus(missing)} is not available here "
                          f"(this machine allows {format_cpus(have)})")


def least_loaded(allowed: Iterable[int], load: Mapping[int, int]) -> int:
    """The CPU of ``allowed`` with the smallest load; ties go to the lowest number."""
    choices = sorted(set(allowed))
    if not choices:
        raise ConfigError("no CPU to place the NF on")
    return min(choices, key=lambda c: (load.get(c, 0), c))


def cpu_load(placed: Iterable[int], workers: Iterable[int] = ()) -> dict[int, int]:
    """Load per CPU: NFs placed on it plus manager workers pinned to it."""
    load: dict[int, int] = {}
    for c in [*placed, *workers]:
        load[c] = load.get(c, 0) + 1
    return load


# ---- NUMA ---------------------------------------------------------------------
@dataclass(frozen=True)
class NumaTopology:
    """NUMA nodes and their CPUs: ``{node: (cpu, ...)}``."""

    nodes: Mapping[int, tuple[int, ...]]

    @classmethod
    def from_sysfs(cls, root: str = "/sys") -> NumaTopology:
        """Read ``/sys/devices/system/node/node*/cpulist``; one node of every CPU when absent."""
        base = os.path.join(root, "devices/system/node")
        nodes: dict[int, tuple[int, ...]] = {}
        try:
            names = os.listdir(base)
        except OSError:
            names = []
        for name in names:
            if name.startswith("node") and name[4:].isdecimal():
                try:
                    with open(os.path.join(base, name, "cpulist"), encoding="ascii") as f:
                        text = f.read().strip()
                except OSError:
                    continue
                if text:
                    nodes[int(name[4:])] = parse_cpus(text)
        if not nodes:
            nodes = {0: tuple(sorted(os.sched_getaffinity(0)))}
        return cls(nodes)

    def node_of(self, cpu: int) -> int | None:
        for node, cpus in self.nodes.items():
            if cpu in cpus:
                return node
        return None


def device_node(ifname: str, root: str = "/sys") -> int | None:
    """The NUMA node of a network device (None when unknown, or for virtual devices)."""
    try:
        with open(os.path.join(root, "class/net", ifname, "device/numa_node"), encoding="ascii") as f:
            node = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


@dataclass(frozen=True)
class NumaPlan:
    """Where the pool and the workers go: ``pool_node`` None means leave it to the kernel."""

    pool_node: int | None
    worker_cpus: tuple[int, ...]  # empty: do not pin
    reason: str


def numa_plan(topo: NumaTopology, port_nodes: Iterable[int | None],
              allowed: Iterable[int] | None = None) -> NumaPlan:
    """Decide the node of the pool and the CPUs of the workers from the ports' nodes."""
    if len(topo.nodes) < 2:
        return NumaPlan(None, (), "one NUMA node: nothing to place")
    known = [n for n in port_nodes if n is not None and n in topo.nodes]
    if not known:
        return NumaPlan(None, (), "no port has a known NUMA node")
    # Most ports win; ties go to the lowest node number (deterministic).
    node = min(set(known), key=lambda n: (-known.count(n), n))
    cpus = tuple(sorted(set(topo.nodes[node]) & set(allowed if allowed is not None else topo.nodes[node])))
    if not cpus:
        return NumaPlan(node, (), f"pool on node {node}; none of its CPUs is allowed, workers unpinned")
    return NumaPlan(node, cpus, f"pool and workers on node {node} ({known.count(node)} of "
                                f"{len(known)} ports there), CPUs {format_cpus(cpus)}")
