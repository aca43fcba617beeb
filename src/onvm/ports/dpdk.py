"""dpdk: ports in the manager: DPDK's EAL options, and the ports' setup.

The driver is the optional module ``onvm._dpdk``, built only where ``pkg-config
libdpdk`` finds DPDK; it is imported here and only by a manager that has a dpdk:
port, so NFs never load DPDK.  Without it a dpdk: port is refused, naming the
packages to install, before anything starts.

EAL options: without ``--dpdk-eal``, the EAL runs without hugepages
(``--no-huge -m MB``, MB from the pool size) and without shared runtime files
(``--no-shconf``), loads Debian's PMD directory (``-d``), runs its main lcore on
the manager's CPUs, starts no telemetry, and uses the PCI bus only for the PCI
devices named by ports.  ``--dpdk-eal ARGS`` adds ARGS; an option of a group
that ARGS give replaces ours (:func:`eal_args`).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from onvm import _native
from onvm.errors import ConfigError
from onvm.ports.uri import PortSpec

PACKAGES = "libdpdk-dev and dpdk"
INSTALL = (f"install {PACKAGES} (apt-get install libdpdk-dev dpdk) and rebuild pyonvm "
           "(make, or pip install -e .)")

# Groups of EAL options: when --dpdk-eal gives one option of a group, ours of that group are left out.
_MEMORY = ("-m", "--socket-mem", "--socket-limit", "--no-huge", "--huge-dir", "--in-memory", "--legacy-mem",
           "--single-file-segments", "--huge-unlink", "--match-allocations")
_LCORES = ("-l", "-c", "--lcores", "--main-lcore")
_BUS = ("-a", "--allow", "-b", "--block", "--no-pci")


def _module() -> tuple[ModuleType | None, str]:
    """onvm._dpdk, or None and why not."""
    try:
        from onvm import _dpdk
    except ModuleNotFoundError as e:
        if e.name != "onvm._dpdk":
            raise
        return None, f"this pyonvm was built without DPDK: {INSTALL}"
    except ImportError as e:  # built, but it does not load (DPDK's libraries gone, another build)
        return None, f"onvm._dpdk does not load ({e}): reinstall {PACKAGES} and rebuild pyonvm"
    return _dpdk, ""


def check_available(specs: Sequence[PortSpec]) -> None:
    """Refuse dpdk: ports when this build has no DPDK (or Debian's PMDs are missing)."""
    first = next((s for s in specs if s.kind == "dpdk"), None)
    if first is None:
        return
    mod, why = _module()
    if mod is None:
        raise ConfigError(f"port '{first.uri}': {why}")
    if not mod.PMD_DIR or not os.path.isdir(mod.PMD_DIR):
        where = mod.PMD_DIR or "dpdk/pmds-*"
        raise ConfigError(f"port '{first.uri}': DPDK's drivers (PMDs) are not installed (no directory "
                          f"{where}): install dpdk (apt-get install dpdk)")


def memory_mb(pool_size: int) -> int:
    """DPDK memory without hugepages: the EAL's own, and a 256-byte mbuf header per slot."""
    return 64 + -(-pool_size * 256 // (1 << 20))


def _has(user: Sequence[str], options: Sequence[str]) -> bool:
    return any(a == o or a.startswith(o + "=") or (len(o) == 2 and a.startswith(o) and len(a) > 2)
               for a in user for o in options)


def eal_args(name: str, extra: str, cpus: Sequence[int], pool_size: int, specs: Sequence[PortSpec],
             pmd_dir: str) -> list[str]:
    """The EAL's argv for a manager: our defaults, then ``extra`` (``--dpdk-eal``).

    >>> eal_args("m", "", [0, 1], 16384, [], "/pmds")[1:]  # doctest: +NORMALIZE_WHITESPACE
    ['--no-huge', '-m', '68', '--no-shconf', '--lcores', '0@(0,1)', '--no-pci', '-d', '/pmds',
     '--file-prefix', 'onvm-m', '--no-telemetry']
    """
    try:
        user = shlex.split(extra)
    except ValueError as e:
        raise ConfigError(f"--dpdk-eal {extra!r}: {e}") from None
    args = ["onvm"]
    if not _has(user, _MEMORY):
        args += ["--no-huge", "-m", str(memory_mb(pool_size))]
    if not _has(user, ("--no-shconf", "--in-memory")):
        args += ["--no-shconf"]  # no shared files: nothing to clean up, another manager is independent
    if not _has(user, _LCORES):
        args += ["--lcores", f"0@({','.join(str(c) for c in cpus)})"]
    if not _has(user, _BUS):
        pci = [s.path for s in specs if s.is_pci]
        args += [a for dev in pci for a in ("-a", dev)] if pci else ["--no-pci"]
    if pmd_dir and not _has(user, ("-d",)):
        args += ["-d", pmd_dir]
    if not _has(user, ("--file-prefix",)):
        args += ["--file-prefix", f"onvm-{name}"]
    if not _has(user, ("--telemetry", "--no-telemetry")):
        args += ["--no-telemetry"]
    return args + user


def runtime_dir(args: Sequence[str]) -> str:
    """The directory the EAL makes for its file prefix (root: /var/run/dpdk/PREFIX)."""
    prefix = "rte"
    for i, a in enumerate(args):
        if a == "--file-prefix" and i + 1 < len(args):
            prefix = args[i + 1]
        elif a.startswith("--file-prefix="):
            prefix = a.partition("=")[2]
    base = "/var/run" if os.getuid() == 0 else os.environ.get("XDG_RUNTIME_DIR", "/tmp")
    return os.path.join(base, "dpdk", prefix)


class DpdkPorts:
    """The dpdk: ports of one manager: the EAL (once per process) and the mbuf pool over its region."""

    def __init__(self, region: _native.Region, name: str, extra: str, pool_size: int,
                 specs: Sequence[PortSpec]) -> None:
        mod, why = _module()
        if mod is None:
            raise ConfigError(f"dpdk: ports: {why}")
        self._mod = mod
        self._runtime_dir = ""
        self.pool: Any = None
        self.eal = eal_args(name, extra, sorted(os.sched_getaffinity(0)), pool_size, specs, mod.PMD_DIR)
        try:
            if not mod.eal_ready():
                mod.eal_init(self.eal)
                self._runtime_dir = runtime_dir(self.eal)
            self.pool = mod.Pool(region)
            mod.log()  # what DPDK says while it starts fine is noise; failures quote it
        except mod.DpdkError as e:
            mod.log()
            self.close()
            raise ConfigError(e.strerror or str(e)) from None

    def add(self, native: _native.Manager, pid: int, spec: PortSpec) -> dict[str, Any]:
        """Probe the device, set its queues up over the pool, and make it the manager's port pid."""
        o = spec.options
        try:
            facts: dict[str, Any] = self.pool.add_port(native, pid, spec.path, rxq=o["rxq"], txq=o["txq"],
                                                       rxd=o["rxd"], txd=o["txd"], promisc=bool(o["promisc"]))
        except self._mod.DpdkError as e:
            raise ConfigError(f"port {pid} '{spec.uri}': {e.strerror or e}") from None
        finally:
            # Set-up chatter (a tap without a multiq qdisc, no multi-process IPC) is noise when the
            # port comes up, and quoted in the message when it does not.
            self._mod.log()
        return facts

    def new_log_lines(self) -> list[str]:
        """What DPDK warned of while the ports ran (a memif peer that left), for the manager's log."""
        return [f"dpdk: {line}" for line in self._mod.log(serious_only=True)]

    def close(self) -> None:
        """After the ports are closed: let go of the pool, remove the EAL's (empty) runtime directory."""
        self.pool = None
        if self._runtime_dir:
            try:
                os.rmdir(self._runtime_dir)
            except OSError:
                pass  # not empty (another process uses the prefix) or gone already
