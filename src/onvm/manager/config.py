"""The manager's configuration: what ``onvm manager`` takes, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from onvm import _native
from onvm.constants import Action
from onvm.errors import ConfigError
from onvm.flows.chain import Hop, parse_chain
from onvm.manager.packing import PackSettings
from onvm.manager.placement import check_available
from onvm.manager.services import AutoscaleSpec, parse_policy
from onvm.paths import validate_name
from onvm.ports.dpdk import check_available as check_dpdk
from onvm.ports.uri import PortSpec, parse_port

__all__ = ["ManagerConfig"]


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass
class ManagerConfig:
    """What ``onvm manager`` takes; validated on construction."""

    name: str = "onvm"
    ports: list[str] = field(default_factory=list)
    default_chain: str = "1"
    pool_size: int = 16384
    slot_size: int = 2048
    ring_size: int = 4096
    rx_workers: int = 1
    tx_workers: int = 1
    burst: int = 64
    stats_interval: float = 1.0  # 0: no live stats
    duration: float = 0.0  # 0: until stopped
    exit_when_done: bool = False  # stop once every input port is exhausted and drained
    wait_for_chain: bool = True  # hold input ports until the default chain's services run
    flow_table_size: int = 65536  # exact-match entries (a power of two, 0 = no flow table)
    chains: list[str] = field(default_factory=list)  # NAME=SPEC, made at start
    rules: list[str] = field(default_factory=list)  # rule texts, added at start
    policies: list[str] = field(default_factory=list)  # SERVICE=POLICY
    autoscale: list[str] = field(default_factory=list)  # SERVICE:MIN:MAX
    quiet: bool = False
    cpus: tuple[int, ...] | None = None  # pin the manager and its workers
    nf_cpus: tuple[int, ...] | None = None  # CPUs NFs are placed on (default: all the manager may use)
    web: str = ""  # HOST:PORT of the web dashboard and API ("" = none)
    pin_nfs: bool = True  # place each NF on one CPU (least-loaded); False: NFs float
    pack_below: float = PackSettings.below  # pack onto one CPU under this load (CPUs); 0: never
    controllers: list[str] = field(default_factory=list)  # OpenFlow controllers, tcp:HOST:PORT
    fail_mode: str = "secure"  # with no controller: keep its flows (secure) or remove them (standalone)
    dpdk_eal: str = ""  # DPDK EAL options for dpdk: ports, added to (or replacing) the defaults

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.web:
            from onvm.web.server import parse_listen

            self.web_addr: tuple[str, int] = parse_listen(self.web)
        if self.controllers:
            from onvm.sdn import check_controllers

            check_controllers(self.controllers, self.fail_mode)
        for what, cpus in (("--cpus", self.cpus), ("--nf-cpus", self.nf_cpus)):
            if cpus is not None:
                try:
                    check_available(cpus)
                except ConfigError as e:
                    raise ConfigError(f"{what}: {e.message}") from None
        if not 0 <= self.pack_below < PackSettings.above:
            raise ConfigError(f"--pack-below {self.pack_below:g}: expected 0 (never pack) up to, not "
                              f"including, {PackSettings.above:g} CPU, where a packed pipeline spreads")
        if not 64 <= self.pool_size <= 1 << 24:
            raise ConfigError(f"--pool-size {self.pool_size}: expected 64..16777216 slots")
        if self.slot_size % 64 or not 384 <= self.slot_size <= 65536:
            raise ConfigError(
                f"--slot-size {self.slot_size}: expected a multiple of 64 in 384..65536"
            )
        if not _power_of_two(self.ring_size) or not 64 <= self.ring_size <= 1 << 20:
            raise ConfigError(f"--ring-size {self.ring_size}: expected a power of two in 64..1048576")
        if self.rx_workers < 1 or self.tx_workers < 1:
            raise ConfigError("--rx-workers and --tx-workers must be at least 1")
        if self.rx_workers + self.tx_workers > _native.MAX_WORKERS:
            raise ConfigError(f"at most {_native.MAX_WORKERS} workers in all")
        if not 1 <= self.burst <= _native.BURST_MAX:
            raise ConfigError(f"--burst {self.burst}: expected 1..{_native.BURST_MAX}")
        if len(self.ports) > _native.MAX_PORTS:
            raise ConfigError(f"at most {_native.MAX_PORTS} ports")
        if self.flow_table_size and (not _power_of_two(self.flow_table_size)
                                     or self.flow_table_size > 1 << 26):
            raise ConfigError(f"--flow-table-size {self.flow_table_size}: expected 0 or a power of two "
                              "up to 67108864")
        self.policy_map: dict[int, int] = {}
        for text in self.policies:
            svc, _, pol = text.partition("=")
            if not svc.isdecimal() or int(svc) >= _native.MAX_SERVICES:
                raise ConfigError(f"--policy {text}: expected SERVICE=POLICY, e.g. 2=round-robin")
            self.policy_map[int(svc)] = parse_policy(pol)
        self.autoscale_specs = [AutoscaleSpec.parse(a) for a in self.autoscale]
        for c in self.chains:
            if "=" not in c:
                raise ConfigError(f"--chain {c}: expected NAME=HOPS, e.g. web=1,2,out:0")
        if self.stats_interval < 0 or self.duration < 0:
            raise ConfigError("--stats and --duration cannot be negative")
        self.port_specs: list[PortSpec] = [parse_port(p) for p in self.ports]
        check_dpdk(self.port_specs)
        for pid, spec in enumerate(self.port_specs):
            queues = spec.options.get("rxq" if spec.kind == "dpdk" else "queues", 0)
            if spec.kind in ("afpacket", "afxdp", "dpdk") and queues > self.rx_workers:
                raise ConfigError(f"port {pid} '{spec.uri}': {queues} queues need as many RX workers "
                                  f"(--rx-workers is {self.rx_workers})")
            if spec.kind == "afxdp" and self.slot_size not in (2048, 4096):
                raise ConfigError(f"port {pid} '{spec.uri}': the pool's slots are the AF_XDP UMEM's chunks, "
                                  f"2048 or 4096 bytes: --slot-size {self.slot_size} will not do")
        try:
            self.chain: list[Hop] = parse_chain(self.default_chain)
        except ConfigError as e:
            raise ConfigError(f"--default-chain {self.default_chain}: {e.message}") from None
        for hop in self.chain:
            if hop.action == Action.OUT:
                if hop.dest >= len(self.port_specs) or not self.port_specs[hop.dest].is_output:
                    raise ConfigError(
                        f"--default-chain {self.default_chain}: port {hop.dest} is not an output"
                        " port (pcap-out or null)"
                    )
