"""The NF manager: owns the region, the ports, the workers and the NF registry.

Theory of operation
-------------------
``Manager.start()`` creates the shared region (replacing a stale one left by a
dead manager), opens the ports, publishes the default chain, starts the
native RX/TX workers and then the control server.  NFs register over the
control socket: each gets an NF id, an instance number in its service and a
TX worker; once it says ``start`` it joins its service's instance list in the
region and packets reach it.

An NF leaves in one of two ways.  Asked to stop (by the manager or on its own)
it says ``stopping`` and closes its socket; otherwise the socket just closes
(the process died).  Either way :meth:`Manager._retire` removes it from its
service, waits one grace period (every other NF and worker passes a loop
iteration or is asleep, so nobody still holds a pick of it), returns its RX
ring and the slots it held to the pool, waits for its TX ring to drain, and
frees its NF slot.  Nothing leaks, whatever signal killed it.

Every handler below runs on the control server's thread, one at a time, so
the registry needs no lock of its own beyond the one the stats thread takes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from onvm import _native, latency
from onvm.actions import Action, DropReason
from onvm.control.protocol import PROTOCOL_VERSION, Request
from onvm.control.server import Connection, ControlServer
from onvm.errors import ConfigError, OnvmError, RegionError
from onvm.flows.chain import Hop, format_chain, parse_chain
from onvm.flows.keys import FlowKey
from onvm.flows.rules import check_timeouts
from onvm.manager._lifecycle import Lifecycle, NFEvent, NFState
from onvm.manager.flows import FlowRegistry
from onvm.manager.packing import Packing, PackSettings
from onvm.manager.placement import (
    NumaTopology,
    check_available,
    cpu_load,
    format_cpus,
    least_loaded,
    numa_plan,
)
from onvm.manager.region_path import region_path
from onvm.manager.services import POLICY_NAMES, AutoscaleSpec, Services, parse_policy
from onvm.manager.stats import StatsPrinter
from onvm.paths import socket_path, validate_name
from onvm.ports.uri import PortSpec, parse_port

PORT_KINDS = {"null": 1, "gen": 2, "pcap": 3, "pcap-out": 4, "afpacket": 5, "tap": 6}
GRACE_TIMEOUT = 0.5
DRAIN_TIMEOUT = 1.0


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
    flow_idle: float = 10.0  # idle timeout (s) of cached results whose rule names none
    max_rules: int = _native.RULES_DEFAULT  # rule slots the region reserves (used ones only are resident)
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
        if not 1 <= self.max_rules <= _native.RULES_LIMIT:
            raise ConfigError(f"--max-rules {self.max_rules}: expected 1..{_native.RULES_LIMIT}")
        try:
            check_timeouts(self.flow_idle, 0)
        except ConfigError as e:
            raise ConfigError(f"--flow-idle {self.flow_idle}: {e.message}") from None
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


@dataclass
class NFRecord:
    """What the manager knows of one NF."""

    nf_id: int
    name: str
    service: int
    instance: int
    pid: int
    tx_worker: int
    life: Lifecycle
    conn: Connection | None
    registered_at: float = field(default_factory=time.monotonic)
    final: dict[str, Any] = field(default_factory=dict)  # counters when it left
    reclaimed: int = 0
    inbox: Connection | None = None  # the NF's message connection
    messages_in: int = 0
    cpu: int | None = None  # where the manager placed it
    placed: bool = False  # the manager chose cpu (the NF asked for none): packing may move it

    def describe(self) -> str:
        return f"NF {self.nf_id} ({self.name}, service {self.service}.{self.instance})"


class Manager:
    """One manager process (see the module docstring)."""

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.region: Any = None
        self.native: Any = None
        self.server: ControlServer | None = None
        self.nfs: dict[int, NFRecord] = {}
        self.retired: list[NFRecord] = []
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.started_at = time.monotonic()
        self.stats: StatsPrinter | None = None
        self.flows: FlowRegistry | None = None
        self.services = Services(self, config.autoscale_specs)
        for svc, pol in config.policy_map.items():
            self.services.set_policy(svc, pol)
        self.web: Any = None  # onvm.web.server.WebServer when --web is given
        self.sdn: Any = None  # onvm.sdn.agent.OpenFlowAgent when --controller is given
        self.packing: Packing | None = None
        self.events: list[tuple[float, str]] = []
        self.start_free = 0
        self._held = False
        self._port_state: dict[int, dict[str, Any]] = {}  # last driver state, kept past close
        self._port_errors: set[int] = set()  # ports whose error was logged
        self.nf_cpus: tuple[int, ...] = config.nf_cpus or tuple(sorted(os.sched_getaffinity(0)))

    # ---- start and stop -----------------------------------------------------
    def log(self, text: str) -> None:
        self.events.append((time.time(), text))
        if not self.config.quiet:
            print(f"onvm[{self.config.name}]: {text}", file=sys.stderr, flush=True)

    def _place_self(self) -> None:
        """Pin the manager (and so its workers and the pool's first touch) as configured."""
        cfg = self.config
        if cfg.cpus:
            os.sched_setaffinity(0, cfg.cpus)
            self.log(f"manager and workers pinned to CPUs {format_cpus(cfg.cpus)}")
            return
        plan = numa_plan(NumaTopology.from_sysfs(), [None for _ in cfg.port_specs])
        if plan.worker_cpus:
            os.sched_setaffinity(0, plan.worker_cpus)
            self.log(plan.reason)

    def _worker_cpus(self) -> list[int]:
        cpus = self.config.cpus
        if not cpus:
            return []
        n = self.config.rx_workers + self.config.tx_workers
        return [cpus[i % len(cpus)] for i in range(n)]

    def _place_nf(self, requested: Any) -> int | None:
        """The least-loaded allowed CPU for a new NF (see onvm.manager.placement)."""
        if not self.config.pin_nfs and not requested:
            return None  # the scheduler moves it where there is room
        allowed = self.nf_cpus
        if requested:
            if not isinstance(requested, list) or not all(isinstance(c, int) for c in requested):
                raise ConfigError(f"cpus {requested!r}: expected a list of CPU numbers")
            check_available(requested)
            allowed = tuple(requested)
        placed = [r.cpu for r in self.nfs.values() if r.cpu is not None and not r.life.terminal]
        return least_loaded(allowed, cpu_load(placed, self._worker_cpus()))

    def start(self) -> None:
        cfg = self.config
        path = region_path(cfg.name)
        self._place_self()
        try:
            stale = os.path.exists(path)
            self.region = _native.Region.create(
                path, cfg.name, cfg.pool_size, cfg.slot_size, cfg.ring_size, cfg.flow_table_size,
                cfg.max_rules)
            if stale:
                self.log(f"replaced a stale region at {path} left by a manager that is gone")
        except _native.RegionError as e:
            if e.errno == 16:  # EBUSY
                raise OnvmError(
                    f"a manager named '{cfg.name}' is already running (region {path})", code="busy"
                ) from None
            raise RegionError(e.strerror or str(e)) from None
        try:
            self._open_ports()
            self.flows = FlowRegistry(self.region, self._is_output)
            self.flows.set_default(cfg.chain)
            for c in cfg.chains:
                name, _, spec = c.partition("=")
                self.flows.add_chain(name.strip(), spec)
            self.flows.set_flow_idle(cfg.flow_idle)
            self.flows.add_rules(cfg.rules)
            self.flows.start_sweeper()
            self._held = cfg.wait_for_chain and self._chain_services() != set()
            self.native.pause_input(self._held)
            self.native.start()
            self.packing = Packing(self, PackSettings(below=cfg.pack_below))
            self.server = ControlServer(socket_path(cfg.name), self._on_request, self._on_close)
            self.server.start()
        except BaseException:
            self._teardown()
            raise
        self.start_free = self.region.free_count()
        self.started_at = time.monotonic()
        info = self.region.info()
        self.log(
            f"running: region {path} ({info['size'] >> 20} MiB, {cfg.pool_size} slots of "
            f"{cfg.slot_size} B), {len(cfg.port_specs)} ports, default chain {format_chain(cfg.chain)},"
            f" {cfg.rx_workers} RX + {cfg.tx_workers} TX workers"
        )
        if cfg.stats_interval > 0:
            self.stats = StatsPrinter(self, cfg.stats_interval)
            self.stats.start()
        self.services.start()
        if cfg.web:
            self._start_web()
        if cfg.controllers:
            from onvm.sdn.agent import OpenFlowAgent

            self.sdn = OpenFlowAgent(self, cfg.controllers, cfg.fail_mode)
            self.sdn.start()
            self.log(f"OpenFlow 1.3 datapath {self.sdn.dpid:016x}: controllers {', '.join(cfg.controllers)}")

    def _is_output(self, port: int) -> bool:
        specs = self.config.port_specs
        return 0 <= port < len(specs) and specs[port].is_output

    def _start_web(self) -> None:
        from onvm.web.server import WebServer

        try:
            self.web = WebServer(self, *self.config.web_addr)
            self.web.start()
        except BaseException:
            self.web = None
            self.stop()
            raise
        self.log(f"web dashboard and API at {self.web.url}; changes need the token in {self.web.token_path}")
        # Not in the event log: anyone who can read the API can read that.
        print(f"onvm[{self.config.name}]: web token: {self.web.token}", file=sys.stderr, flush=True)

    def _open_ports(self) -> None:
        cfg = self.config
        self.native = _native.Manager(self.region, cfg.rx_workers, cfg.tx_workers, cfg.burst)
        for pid, spec in enumerate(cfg.port_specs):
            o = spec.options
            try:
                if spec.kind == "null":
                    self.native.add_null(pid)
                elif spec.kind == "gen":
                    self.native.add_gen(
                        pid,
                        size=o["size"],
                        mix=o["mix"],
                        flows=o["flows"],
                        proto=o["proto"],
                        rate=o["rate"],
                        count=o["count"],
                        seed=o["seed"] or pid + 1,
                        src_ip=o["src"],
                        dst_ip=o["dst"],
                        sport=o["sport"],
                        dport=o["dport"],
                    )
                elif spec.kind == "pcap":
                    self.native.add_pcap_in(pid, spec.path, loops=o["loop"], rate=o["rate"],
                                            timing=o["timing"], speed=o["speed_milli"] / 1000)
                elif spec.kind == "pcap-out":
                    self.native.add_pcap_out(pid, spec.path, snaplen=o["snaplen"])
                elif spec.kind == "afpacket":
                    if o["queues"] > cfg.rx_workers:
                        raise ConfigError(f"port {pid} '{spec.uri}': {o['queues']} queues need as many "
                                          f"RX workers (--rx-workers is {cfg.rx_workers})")
                    self.native.add_afpacket(pid, spec.path, queues=o["queues"] or cfg.rx_workers,
                                             promisc=bool(o["promisc"]), qdisc_bypass=bool(o["bypass"]),
                                             block_size=o["block_size"], blocks=o["blocks"])
                elif spec.kind == "tap":
                    self.native.add_tap(pid, spec.path)
            except _native.RegionError as e:
                raise ConfigError(f"port {pid} '{spec.uri}': {e.strerror or e}") from None
            self.region.set_port_info(pid, PORT_KINDS[spec.kind], spec.uri)

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM, ``onvm stop``, the duration or exhausted inputs."""
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, lambda signum, frame: self.stopping.set())
        deadline = self.started_at + self.config.duration if self.config.duration else None
        # A wake-up costs CPU even on an idle machine: wake often only to watch the inputs end.
        interval = 0.1 if self.config.exit_when_done else 0.5
        while not self.stopping.is_set():
            self.stopping.wait(interval if deadline is None
                               else max(0.0, min(interval, deadline - time.monotonic())))
            self._check_ports()
            if self.packing:
                self.packing.tick()
            if deadline and time.monotonic() >= deadline:
                self.log(f"ran for {self.config.duration:g} s")
                break
            if self.config.exit_when_done and self._inputs_done():
                self.log("every input port is done and the pipeline drained")
                break
        self.stop()
        return 0

    def _check_ports(self) -> None:
        """Log, once, each port whose driver reported an error (a corrupt file, a failed send)."""
        if self.native is None:
            return
        for pid, spec in enumerate(self.config.port_specs):
            state = self.native.port_state(pid) or {}
            err = state.get("error", "")
            if err and pid not in self._port_errors:
                self._port_errors.add(pid)
                what = "stopped" if state.get("done") else "error"
                self.log(f"port {pid} '{spec.uri}' {what}: {err}")

    def _inputs_done(self) -> bool:
        specs = self.config.port_specs
        if not any(s.is_input for s in specs):
            return False
        for pid, s in enumerate(specs):
            if s.is_input and not self.native.port_state(pid)["done"]:
                return False
        # The pool is whole again once nothing is in flight.
        return bool(self.region.free_count() >= self.start_free)

    def stop(self) -> None:
        """Ask NFs to stop, wait for them, stop workers, flush ports, print the summary."""
        if self.region is None:
            return
        self.stopping.set()
        # Inputs first, then let what is in flight reach its end before NFs leave.
        self.native.pause_input(True)
        self._drain(timeout=1.0)
        with self.lock:
            live = [r for r in self.nfs.values() if not r.life.terminal]
        for rec in live:
            self._ask_stop(rec)
        self.services.stop()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with self.lock:
                if not any(not r.life.terminal for r in self.nfs.values()):
                    break
            time.sleep(0.01)
        self.services.wait_spawned(timeout=3.0)
        if self.sdn:
            self.sdn.stop()
        if self.stats:
            self.stats.stop()
        if self.web:
            self.web.stop()
        if self.server:
            self.server.stop()  # closes what is left; on_close retires them
        self._check_ports()
        self.status()  # keep the ports' final driver state for the summary
        self.native.close_ports()
        self._print_summary()
        self._teardown()

    def _drain(self, timeout: float) -> None:
        """Wait until no NF ring holds packets (or the timeout passes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                ids = list(self.nfs)
            if not any(self.region.nf_info(i)["rx_ring"] or self.region.nf_info(i)["tx_ring"] for i in ids):
                return
            time.sleep(0.005)

    def _teardown(self) -> None:
        if self.sdn:
            self.sdn.stop()
            self.sdn = None
        if self.flows:
            self.flows.stop_sweeper()
        if self.web:
            self.web.stop()
            self.web = None
        if self.server:
            self.server.stop()
            self.server = None
        if self.native is not None:
            self.native.close_ports()
            self.native = None
        if self.region is not None:
            self.region.close()
            self.region = None

    def _ask_stop(self, rec: NFRecord) -> None:
        if rec.life.can(NFEvent.STOP):
            rec.life.apply(NFEvent.STOP)
            self._leave_service(rec)
        self.region.nf_request_stop(rec.nf_id)
        if rec.conn is not None:
            rec.conn.send_event("stop", {"reason": "manager"})

    # ---- control requests ---------------------------------------------------
    def _on_request(self, conn: Connection, req: Request) -> dict[str, Any]:
        handler = getattr(self, "_op_" + req.op, None)
        if handler is None:
            raise ConfigError(f"unknown operation '{req.op}'")
        with self.lock:
            result: dict[str, Any] = handler(conn, req.args)
        return result

    def _op_hello(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION,
            "layout": _native.LAYOUT_VERSION,
            "name": self.config.name,
            "pid": os.getpid(),
        }

    def _op_register(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        if self.stopping.is_set():
            raise OnvmError("the manager is shutting down", code="busy")
        if "nf_id" in conn.data:
            raise ConfigError("this connection already registered an NF")
        name = str(args.get("name") or "nf")[:31]
        service = args.get("service")
        if service is None:
            service = 1
        if not isinstance(service, int) or not 0 <= service < _native.MAX_SERVICES:
            raise ConfigError(f"service {service!r} is out of range (0..{_native.MAX_SERVICES - 1})")
        taken = {r.instance for r in self.nfs.values() if r.service == service and not r.life.terminal}
        instance = args.get("instance")
        if instance is None:
            instance = next(i for i in range(len(taken) + 1) if i not in taken)
        if not isinstance(instance, int) or instance < 0:
            raise ConfigError(f"instance {instance!r} must be a non-negative integer")
        if instance in taken:
            raise OnvmError(f"service {service} already has an instance {instance}", code="busy")
        if len(taken) >= _native.MAX_INSTANCES:
            raise OnvmError(f"service {service} has {_native.MAX_INSTANCES} instances already", code="busy")
        nf_id = next((i for i in range(1, _native.MAX_NFS) if i not in self.nfs), 0)
        if not nf_id:
            raise OnvmError(f"all {_native.MAX_NFS - 1} NF slots are in use", code="busy")
        pid = conn.pid or int(args.get("pid") or 0)
        # the row of its TX worker in the worker table: RX workers come first
        tx_worker = self.config.rx_workers + nf_id % self.config.tx_workers
        cpu = self._place_nf(args.get("cpus"))
        rec = NFRecord(nf_id, name, service, instance, pid, tx_worker, Lifecycle(nf_id), conn, cpu=cpu,
                       placed=cpu is not None and not args.get("cpus"))
        self.region.nf_activate(nf_id, service, instance, pid, tx_worker, name)
        rec.life.apply(NFEvent.REGISTERED)
        self.nfs[nf_id] = rec
        if self.packing:
            self.packing.apply()  # joins a packed pipeline at once
        conn.data["nf_id"] = nf_id
        self.log(f"{rec.describe()} registered (pid {pid}, CPU {cpu})")
        return {
            "cpu": cpu,
            "nf_id": nf_id,
            "service": service,
            "instance": instance,
            "region": self.region.path,
        }

    def _record(self, conn: Connection) -> NFRecord:
        nf_id = conn.data.get("nf_id")
        if nf_id is None or nf_id not in self.nfs:
            raise OnvmError("this connection has no registered NF", code="no_such_nf")
        return self.nfs[nf_id]

    def _op_start(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        rec = self._record(conn)
        rec.life.apply(NFEvent.STARTED)
        self._publish_service(rec.service)
        self.log(f"{rec.describe()} running")
        if self._held:
            running = {r.service for r in self.nfs.values() if r.life.state == NFState.RUNNING}
            if self._chain_services() <= running:
                self._held = False
                self.native.pause_input(False)
                self.log("every service of the chains runs: input ports start")
        return {"state": rec.life.state.value}

    def _chain_services(self) -> set[int]:
        """Services named by the default chain and by the chains made at start."""
        hops = list(self.config.chain)
        if self.flows:
            hops += [h for _, chain in self.flows.chains.values() for h in chain]
        return {h.dest for h in hops if h.action == Action.TONF}

    def _op_stopping(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        rec = self._record(conn)
        if rec.life.can(NFEvent.STOP):
            rec.life.apply(NFEvent.STOP)
        self._leave_service(rec)
        return {"state": rec.life.state.value}

    def _op_status(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    def _op_shutdown(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        self.log("asked to stop")
        self.stopping.set()
        return {"stopping": True}

    def _op_stop_nf(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        nf_id = args.get("nf_id")
        rec = self.nfs.get(nf_id) if isinstance(nf_id, int) else None
        if rec is None:
            raise OnvmError(f"no NF with id {nf_id!r}", code="no_such_nf")
        if not rec.life.can(NFEvent.STOP):
            rec.life.apply(NFEvent.STOP)  # raises the exact lifecycle error
        self._ask_stop(rec)
        return {"state": rec.life.state.value}

    # ---- chains, rules and flows -------------------------------------------
    def _flows(self) -> FlowRegistry:
        assert self.flows is not None
        return self.flows

    @staticmethod
    def _arg(args: dict[str, Any], key: str, kind: type) -> Any:
        value = args.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            raise ConfigError(f"'{key}' must be a {kind.__name__}")
        return value

    def _op_chain_add(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return self._flows().add_chain(self._arg(args, "name", str), self._arg(args, "hops", str))

    def _op_chain_list(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return {"chains": self._flows().list_chains()}

    def _op_chain_del(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return self._flows().del_chain(self._arg(args, "name", str))

    def _op_rule_add(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        """One rule (``rule``), or several applied together (``rules``: all or none)."""
        if "rules" in args:
            texts = args["rules"]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise ConfigError("'rules' must be a list of rule texts")
            added = self._flows().add_rules(texts)
            return {"added": len(added), "ids": [r["id"] for r in added]}
        return self._flows().add_rule(self._arg(args, "rule", str))

    def _op_rule_list(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return {"rules": self._flows().list_rules()}

    def _op_rule_del(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return self._flows().del_rule(self._arg(args, "id", int))

    def _op_flow_list(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        limit = args.get("limit", 1000)
        if not isinstance(limit, int) or not 1 <= limit <= 1_000_000:
            raise ConfigError("'limit' must be an integer in 1..1000000")
        chain = args.get("chain")
        return {"flows": self._flows().list_flows(limit, chain if isinstance(chain, str) else None)}

    def _op_flow_add(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        key = FlowKey.parse(self._arg(args, "flow", str))
        idle, hard = args.get("idle", 0), args.get("hard", 0)
        if not isinstance(idle, int | float) or not isinstance(hard, int | float):
            raise ConfigError("'idle' and 'hard' are seconds")
        return self._flows().add_flow(key, self._arg(args, "chain", str), float(idle), float(hard))

    def _op_flow_del(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return self._flows().del_flow(FlowKey.parse(self._arg(args, "flow", str)))

    def _op_flow_stats(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return self._flows().stats()

    # ---- messages ------------------------------------------------------------
    def _op_subscribe(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        """An NF's second connection, on which it receives messages."""
        rec = self.nfs.get(self._arg(args, "nf_id", int))
        if rec is None or (conn.pid and rec.pid and conn.pid != rec.pid):
            raise OnvmError("only an NF's own process may take its messages", code="forbidden")
        rec.inbox = conn
        return {"nf_id": rec.nf_id}

    def _op_send(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        """Send ``data`` to one NF (``nf``) or to every running instance of a ``service``."""
        if "data" not in args:
            raise ConfigError("'data' is required")
        sender: dict[str, Any] = {"manager": True}
        if "nf_id" in conn.data and conn.data["nf_id"] in self.nfs:
            src = self.nfs[conn.data["nf_id"]]
            sender = {"nf": src.nf_id, "service": src.service, "instance": src.instance}
        if "nf" in args:
            rec = self.nfs.get(self._arg(args, "nf", int))
            if rec is None:
                raise OnvmError(f"no NF with id {args['nf']}", code="no_such_nf")
            targets = [rec]
        else:
            svc = self._arg(args, "service", int)
            targets = [r for r in self.nfs.values() if r.service == svc and r.life.state == NFState.RUNNING]
        delivered = 0
        message = {"from": sender, "data": args["data"]}
        for rec in targets:
            if rec.inbox is not None and rec.inbox.send_event("message", message):
                rec.messages_in += 1
                delivered += 1
        return {"delivered": delivered, "targets": len(targets)}

    def _op_service_list(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return {"services": self.services.describe()}

    def _op_service_policy(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        svc = self._arg(args, "service", int)
        if not 0 <= svc < _native.MAX_SERVICES:
            raise ConfigError(f"service {svc} is out of range (0..{_native.MAX_SERVICES - 1})")
        self.services.set_policy(svc, parse_policy(self._arg(args, "policy", str)))
        self._publish_service(svc)
        self.log(f"service {svc}: policy {POLICY_NAMES[self.services.policy_of(svc)]}")
        return {"service": svc, "policy": POLICY_NAMES[self.services.policy_of(svc)]}

    def _op_scale(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        svc = args.get("service")
        if svc is None and "nf_id" in conn.data:
            svc = self._record(conn).service
        if not isinstance(svc, int):
            raise ConfigError("'service' must be an int")
        return self.services.scale(svc, self._arg(args, "count", int))

    def _op_packet_in(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        """A packet for the OpenFlow controllers, from the packet_io NF (see onvm.sdn)."""
        if self.sdn is None:
            raise OnvmError("no --controller: nowhere to send the packet", code="not_found")
        import base64

        data = base64.b64decode(self._arg(args, "data", str))
        total = int(args.get("total_len") or len(data))
        queued = self.sdn.packet_in(data, self._arg(args, "in_port", int), total)
        return {"queued": queued}

    # ---- services and retirement ------------------------------------------
    def _publish_service(self, service: int) -> None:
        members = sorted(
            (r.instance, r.nf_id)
            for r in self.nfs.values()
            if r.service == service and r.life.state == NFState.RUNNING
        )
        self.region.set_service(service, [(nf, inst) for inst, nf in members],
                                self.services.policy_of(service))

    def _leave_service(self, rec: NFRecord) -> None:
        self._publish_service(rec.service)

    def _on_close(self, conn: Connection) -> None:
        nf_id = conn.data.get("nf_id")
        if nf_id is None:
            return
        with self.lock:
            rec = self.nfs.get(nf_id)
            if rec is None or rec.life.terminal:
                return
            if rec.life.state == NFState.STOPPING:
                rec.life.apply(NFEvent.EXITED)
                how = "stopped"
            else:
                rec.life.apply(NFEvent.DIED)
                how = "died"
            rec.conn = None
            self._retire(rec)
            self.log(f"{rec.describe()} {how}; {rec.reclaimed} slots returned to the pool")

    def _retire(self, rec: NFRecord) -> None:
        self._publish_service(rec.service)
        self.region.nf_set_draining(rec.nf_id)
        self._grace(rec.nf_id)
        rec.reclaimed = self.region.nf_reclaim(rec.nf_id)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.region.nf_info(rec.nf_id)["tx_ring"] and time.monotonic() < deadline:
            if self.native:
                self.native.kick()
            time.sleep(0.001)
        rec.final = self._nf_info(rec.nf_id)
        self.region.nf_release(rec.nf_id)
        del self.nfs[rec.nf_id]
        self.retired.append(rec)

    def _grace(self, leaving: int) -> None:
        """Wait until every other NF and worker has passed a loop iteration or sleeps."""
        region = self.region
        seen: dict[tuple[str, int], int] = {}
        for nf_id in self.nfs:
            if nf_id != leaving:
                seen[("nf", nf_id)] = region.nf_info(nf_id)["epoch"]
        for w in range(self.config.rx_workers + self.config.tx_workers):
            seen[("w", w)] = region.worker_info(w)["epoch"]
        deadline = time.monotonic() + GRACE_TIMEOUT
        while seen and time.monotonic() < deadline:
            for key in list(seen):
                kind, ident = key
                if kind == "nf":
                    info = region.nf_info(ident)
                    passed = info["epoch"] != seen[key] or info["sleeping"] or info["state"] == 0
                else:
                    passed = region.worker_info(ident)["epoch"] != seen[key]
                if passed:
                    del seen[key]
            if seen:
                time.sleep(0.0002)
                if self.native:
                    self.native.kick()

    # ---- status ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        region = self.region
        ports = []
        for pid, spec in enumerate(self.config.port_specs):
            info = region.port_info(pid)
            state = (self.native.port_state(pid) if self.native else None) or {}
            if state:
                self._port_state[pid] = state
            state = self._port_state.get(pid, {})
            ports.append(
                {
                    "id": pid,
                    "uri": spec.uri,
                    "kind": spec.kind,
                    "rx": info["rx"],
                    "rx_bytes": info["rx_bytes"],
                    "tx": info["tx"],
                    "tx_bytes": info["tx_bytes"],
                    "drops": _drops(info["drops"]),
                    "rx_by_worker": list(info["rx_by_worker"][: self.config.rx_workers]),
                    "done": bool(state.get("done")),
                    "error": state.get("error", ""),
                    "latency": latency.summary(_native.port_latency(region, pid)),
                }
            )
        nfs = [self._nf_status(r, self._nf_info(r.nf_id)) for r in self.nfs.values()]
        info = region.info()
        return {
            "manager": {
                "name": self.config.name,
                "pid": os.getpid(),
                "uptime": round(time.monotonic() - self.started_at, 3),
                "region": region.path,
                "layout": _native.LAYOUT_VERSION,
                "protocol": PROTOCOL_VERSION,
                "default_chain": format_chain(self.config.chain),
                "cpus": format_cpus(self.config.cpus) if self.config.cpus else "",
                "nf_cpus": format_cpus(self.nf_cpus),
                "ring_size": self.config.ring_size,
                "web": self.web.url if self.web else "",
                "packing": self.packing.describe() if self.packing else {"enabled": False},
            },
            "pool": {"free": info["pool_free"], "total": info["pool_size"], "slot_size": info["slot_size"]},
            "ports": ports,
            "nfs": nfs,
            "chains": self.flows.list_chains() if self.flows else [],
            "services": self.services.describe(),
            "flows": self.flows.stats() if self.flows else {},
            **({"openflow": self.sdn.describe()} if self.sdn else {}),
            "left": [self._nf_status(r, r.final) for r in self.retired[-16:]],
            "events": [{"time": t, "text": text} for t, text in self.events[-20:]],
        }

    def _nf_info(self, nf_id: int) -> dict[str, Any]:
        info: dict[str, Any] = self.region.nf_info(nf_id)
        info["latency"] = _native.nf_latency(self.region, nf_id)
        return info

    def web_sections(self) -> dict[str, Any]:
        """What the web API serves besides status (called under the lock)."""
        if self.flows is None:
            return {}
        return {"rules": self.flows.list_rules(), "flows": self.flows.list_flows(200),
                "flow_stats": self.flows.stats(), "chain_names": self.flows.list_chains()}

    def _nf_status(self, rec: NFRecord, info: dict[str, Any]) -> dict[str, Any]:
        acts = info.get("actions", (0, 0, 0, 0))
        return {
            "id": rec.nf_id,
            "name": rec.name,
            "service": rec.service,
            "instance": rec.instance,
            "pid": rec.pid,
            "state": rec.life.state.value,
            "cpu": rec.cpu,
            "cpu_now": _cpu_now(rec.cpu, info.get("cpu_now", -1)),  # where it runs now (packing)
            "cpu_refused": info.get("cpu_now") == -2,  # the kernel refused to move it
            "rx": info.get("rx", 0),
            "tx": info.get("tx", 0),
            "rx_ring": info.get("rx_ring", 0),
            "tx_ring": info.get("tx_ring", 0),
            "actions": {a.name.lower(): acts[a] for a in Action},
            "drops": _drops(info.get("drops", ())),
            "parse_errors": info.get("parse_errors", 0),  # malformed packets the NF was handed
            "reclaimed": rec.reclaimed,
            "messages": rec.messages_in,
            "latency": latency.summary(info.get("latency")),
        }

    def _print_summary(self) -> None:
        if self.config.quiet:
            return
        st = self.status()
        secs = max(time.monotonic() - self.started_at, 1e-9)
        out = [f"onvm[{self.config.name}] summary after {secs:.1f} s:"]
        for p in st["ports"]:
            out.append(
                f"  port {p['id']} {p['uri']}: in {p['rx']} pkts / {p['rx_bytes']} B, "
                f"out {p['tx']} pkts / {p['tx_bytes']} B, dropped {sum(p['drops'].values())}"
                + (f" {p['drops']}" if p["drops"] else "")
                + (f"; error: {p['error']}" if p["error"] else "")
            )
        for n in st["nfs"] + st["left"]:
            out.append(
                f"  NF {n['id']} {n['name']} (service {n['service']}.{n['instance']}, {n['state']}): "
                f"in {n['rx']}, onward {n['tx']}, dropped {sum(n['drops'].values())}"
                + (f" {n['drops']}" if n["drops"] else "")
            )
        pool = st["pool"]
        out.append(f"  pool: {pool['free']} of {pool['total']} slots free")
        print("\n".join(out), file=sys.stderr, flush=True)


def _cpu_now(home: int | None, now: int) -> int | None:
    """The CPU an NF runs on: the one packing moved it to, else where it was placed."""
    return now if now >= 0 else home


def _drops(values: Any) -> dict[str, int]:
    return {DropReason(i).name.lower(): int(v) for i, v in enumerate(values) if v}
