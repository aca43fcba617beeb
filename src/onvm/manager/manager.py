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
from onvm.errors import ConfigError, OnvmError
from onvm.flows.chain import Hop, format_chain, parse_chain
from onvm.flows.keys import FlowKey
from onvm.manager.dataplane import DataPlane, Layout, drops_by_reason
from onvm.manager.fencing import kill_process, read_audit
from onvm.manager.flows import FlowRegistry
from onvm.manager.packing import Packing, PackSettings
from onvm.manager.placement import check_available, format_cpus
from onvm.manager.registry import NFRecord, Registry
from onvm.manager.services import POLICY_NAMES, AutoscaleSpec, Services, parse_policy
from onvm.manager.stats import StatsPrinter
from onvm.paths import socket_path, validate_name
from onvm.ports.uri import PortSpec, parse_port


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
        for pid, spec in enumerate(self.port_specs):
            if spec.kind in ("afpacket", "afxdp") and spec.options["queues"] > self.rx_workers:
                raise ConfigError(f"port {pid} '{spec.uri}': {spec.options['queues']} queues need as many "
                                  f"RX workers (--rx-workers is {self.rx_workers})")
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


class Manager:
    """One manager process (see the module docstring)."""

    def __init__(self, config: ManagerConfig) -> None:
        self.config = config
        self.dp: DataPlane | None = None
        self.server: ControlServer | None = None
        nf_cpus = config.nf_cpus or tuple(sorted(os.sched_getaffinity(0)))
        self.registry = Registry(rx_workers=config.rx_workers, tx_workers=config.tx_workers,
                                 nf_cpus=nf_cpus, worker_cpus=self._worker_cpus(), pin=config.pin_nfs)
        self.nf_cpus = nf_cpus
        self.conns: dict[int, Connection] = {}  # an NF's control connection
        self._refused: dict[int, int] = {}  # invalid packets each NF refused, as last reported
        self.inboxes: dict[int, Connection] = {}  # its message connection
        self.lock = threading.RLock()
        self._gone = threading.Condition(self.lock)  # notified when an NF is retired
        self.stopping = threading.Event()
        self.started_at = time.monotonic()
        self.stats: StatsPrinter | None = None
        self.flows: FlowRegistry | None = None
        for svc, pol in config.policy_map.items():
            self.registry.set_policy(svc, pol)
        self.services = Services(self.registry, config.autoscale_specs, stop_nf=self._ask_stop,
                                 nf_info=self._nf_info, ring_size=config.ring_size, lock=self.lock,
                                 log=self.log)
        self.web: Any = None  # onvm.web.server.WebServer when --web is given
        self.sdn: Any = None  # onvm.sdn.agent.OpenFlowAgent when --controller is given
        self.packing: Packing | None = None
        self.events: list[tuple[float, str]] = []
        self.start_in_use = 0  # slots in use once started (nothing in flight)
        self._held = False

    @property
    def region(self) -> _native.Region | None:
        return self.dp.region if self.dp is not None and self.dp.is_open else None

    # ---- start and stop -----------------------------------------------------
    def log(self, text: str) -> None:
        self.events.append((time.time(), text))
        if not self.config.quiet:
            print(f"onvm[{self.config.name}]: {text}", file=sys.stderr, flush=True)

    def _worker_cpus(self) -> list[int]:
        cpus = self.config.cpus
        if not cpus:
            return []
        n = self.config.rx_workers + self.config.tx_workers
        return [cpus[i % len(cpus)] for i in range(n)]

    def start(self) -> None:
        cfg = self.config
        layout = Layout(cfg.name, cfg.pool_size, cfg.slot_size, cfg.ring_size, cfg.flow_table_size,
                        cfg.rx_workers, cfg.tx_workers, cfg.burst, cfg.cpus)
        if threading.current_thread() is threading.main_thread():
            # Before the socket answers: whoever sees it may stop us with a signal at once.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, frame: self.stopping.set())
        self.dp = dp = DataPlane.open(layout, cfg.port_specs, self.log)
        try:
            self.flows = FlowRegistry(dp.region, dp.is_output)
            self.flows.set_default(cfg.chain)
            for c in cfg.chains:
                name, _, spec = c.partition("=")
                self.flows.add_chain(name.strip(), spec)
            for text in cfg.rules:
                self.flows.add_rule(text)
            self.flows.start_sweeper()
            self._held = cfg.wait_for_chain and self._chain_services() != set()
            dp.start(hold_input=self._held)
            packs = cfg.pin_nfs and cfg.pack_below > 0
            candidates = set(os.sched_getaffinity(0)) & set(self.nf_cpus) if packs else set()
            self.packing = Packing(PackSettings(below=cfg.pack_below), dataplane=dp, registry=self.registry,
                                   lock=self.lock, log=self.log, candidates=sorted(candidates),
                                   move_workers=not cfg.cpus)
            self.server = ControlServer(socket_path(cfg.name), self._on_request, self._on_close)
            self.server.start()
        except BaseException:
            self._teardown()
            raise
        self.start_in_use = dp.pool()["in_use"]
        self.started_at = time.monotonic()
        self.log(f"running: {dp.summary_line()}, default chain {format_chain(cfg.chain)}")
        if cfg.stats_interval > 0:
            self.stats = StatsPrinter(self.locked_status, cfg.stats_interval)
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

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM, ``onvm stop``, the duration or exhausted inputs."""
        deadline = self.started_at + self.config.duration if self.config.duration else None
        # A wake-up costs CPU even on an idle machine: wake often only to watch the inputs end.
        interval = 0.1 if self.config.exit_when_done else 0.5
        while not self.stopping.is_set():
            self.stopping.wait(interval if deadline is None
                               else max(0.0, min(interval, deadline - time.monotonic())))
            if self.dp is not None and self.dp.damaged():
                self.log(f"the region file {self.dp.region.path} was cut short by another process: "
                         "what it held is gone; stopping")
                self.stop()
                return 1
            self._check_ports()
            self._audit()
            if self.packing:
                self.packing.tick()
            if deadline and time.monotonic() >= deadline:
                self.log(f"ran for {self.config.duration:g} s")
                break
            if self.config.exit_when_done and self.dp is not None and self.dp.inputs_done(self.start_in_use):
                self.log("every input port is done and the pipeline drained")
                break
        self.stop()
        return 0

    def _check_ports(self) -> None:
        """Log, once, each port whose driver reported an error (a corrupt file, a failed send)."""
        if self.dp is not None and self.dp.is_open:
            for line in self.dp.new_port_errors():
                self.log(line)

    def stop(self) -> None:
        """Ask NFs to stop, wait for them, stop workers, flush ports, print the summary."""
        dp = self.dp
        if dp is None or not dp.is_open:
            return
        self.stopping.set()
        self.services.stop()
        # Inputs first, then let what is in flight reach its end before NFs leave.
        dp.pause_input(True)
        dp.drain(timeout=1.0)
        with self.lock:
            live = self.registry.live()
            for rec in live:
                self._ask_stop(rec)
            self._gone.wait_for(lambda: not self.registry.live(), timeout=3.0)
        self.services.wait_spawned(timeout=3.0)
        if self.sdn:
            self.sdn.stop()
        if self.stats:
            self.stats.stop()
        if self.web:
            self.web.stop()
        if self.server:
            self.server.stop()  # closes what is left; on_close retires them
        dp.flush_ports()  # a write that fails only now is logged and summed up too
        self._check_ports()
        dp.close_ports()
        self._print_summary()
        self._teardown()

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
        if self.dp is not None:
            self.dp.close()

    def _ask_stop(self, rec: NFRecord) -> None:
        self._dp().publish(self.registry.stop(rec.nf_id))
        self._dp().request_stop(rec.nf_id)
        conn = self.conns.get(rec.nf_id)
        if conn is not None:
            conn.send_event("stop", {"reason": "manager"})

    def _dp(self) -> DataPlane:
        assert self.dp is not None
        return self.dp

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
        service = args.get("service")
        if service is None:
            service = 1
        if not isinstance(service, int) or isinstance(service, bool):
            raise ConfigError(f"service {service!r} is out of range (0..{_native.MAX_SERVICES - 1})")
        instance = args.get("instance")
        if instance is not None and (not isinstance(instance, int) or isinstance(instance, bool)):
            raise ConfigError(f"instance {instance!r} must be a non-negative integer")
        requested = args.get("cpus")
        if requested:
            if not isinstance(requested, list) or not all(isinstance(c, int) for c in requested):
                raise ConfigError(f"cpus {requested!r}: expected a list of CPU numbers")
            check_available(requested)
        pid = conn.pid or int(args.get("pid") or 0)
        rec = self.registry.register(str(args.get("name") or "nf"), service, pid, instance,
                                     tuple(requested) if requested else None)
        dp = self._dp()
        dp.activate(rec)
        self.conns[rec.nf_id] = conn
        if self.packing:
            self.packing.apply()  # joins a packed pipeline at once
        conn.data["nf_id"] = rec.nf_id
        self.log(f"{rec.describe()} registered (pid {pid}, CPU {rec.cpu})")
        return {"cpu": rec.cpu, "nf_id": rec.nf_id, "service": rec.service, "instance": rec.instance,
                "region": dp.region.path}

    def _record(self, conn: Connection) -> NFRecord:
        nf_id = conn.data.get("nf_id")
        if nf_id is None or nf_id not in self.registry:
            raise OnvmError("this connection has no registered NF", code="no_such_nf")
        return self.registry.get(nf_id)

    def _op_start(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        rec = self._record(conn)
        self._dp().publish(self.registry.start(rec.nf_id))
        self.log(f"{rec.describe()} running")
        if self._held and self._chain_services() <= self.registry.running_services():
            self._held = False
            self._dp().pause_input(False)
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
        self._dp().publish(self.registry.stop(rec.nf_id))
        return {"state": rec.life.state.value}

    def _op_status(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    def _op_shutdown(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        self.log("asked to stop")
        self.stopping.set()
        return {"stopping": True}

    def _op_stop_nf(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        nf_id = args.get("nf_id")
        rec = self.registry.get(nf_id) if isinstance(nf_id, int) else None
        if rec is None:
            raise OnvmError(f"no NF with id {nf_id!r}", code="no_such_nf")
        self.registry.stop(rec.nf_id, strict=True)  # raises the exact lifecycle error
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
        nf_id = self._arg(args, "nf_id", int)
        rec = self.registry.get(nf_id) if nf_id in self.registry else None
        if rec is None or (conn.pid and rec.pid and conn.pid != rec.pid):
            raise OnvmError("only an NF's own process may take its messages", code="forbidden")
        self.inboxes[rec.nf_id] = conn
        return {"nf_id": rec.nf_id}

    def _op_send(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        """Send ``data`` to one NF (``nf``) or to every running instance of a ``service``."""
        if "data" not in args:
            raise ConfigError("'data' is required")
        sender: dict[str, Any] = {"manager": True}
        if "nf_id" in conn.data and conn.data["nf_id"] in self.registry:
            src = self.registry.get(conn.data["nf_id"])
            sender = {"nf": src.nf_id, "service": src.service, "instance": src.instance}
        if "nf" in args:
            targets = [self.registry.get(self._arg(args, "nf", int))]
        else:
            targets = self.registry.running(self._arg(args, "service", int))
        delivered = 0
        message = {"from": sender, "data": args["data"]}
        for rec in targets:
            inbox = self.inboxes.get(rec.nf_id)
            if inbox is not None and inbox.send_event("message", message):
                rec.messages_in += 1
                delivered += 1
        return {"delivered": delivered, "targets": len(targets)}

    def _op_service_list(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        return {"services": self.services.describe()}

    def _op_service_policy(self, conn: Connection, args: dict[str, Any]) -> dict[str, Any]:
        svc = self._arg(args, "service", int)
        if not 0 <= svc < _native.MAX_SERVICES:
            raise ConfigError(f"service {svc} is out of range (0..{_native.MAX_SERVICES - 1})")
        self._dp().publish(self.registry.set_policy(svc, parse_policy(self._arg(args, "policy", str))))
        name = POLICY_NAMES[self.registry.policy_of(svc)]
        self.log(f"service {svc}: policy {name}")
        return {"service": svc, "policy": name}

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

    # ---- fencing ---------------------------------------------------------------
    def _audit(self) -> None:
        """Fence the NFs that broke the rules of the region; log the repairs (see fencing.py)."""
        dp = self.dp
        if dp is None or not dp.is_open or dp.damaged():
            return  # a region cut short reads zeros: nothing in it says anything about an NF
        for finding in read_audit(dp.audit()):
            if finding.fence:
                self._fence(finding.fence, finding.text)
            else:
                self.log(finding.text)
        with self.lock:
            for rec in self.registry.live():  # NFs refusing what another NF sent them
                refused = dp.nf_info(rec.nf_id)["drops"][DropReason.INVALID]
                if refused > self._refused.get(rec.nf_id, 0):
                    self.log(f"{rec.describe()} refused {refused - self._refused.get(rec.nf_id, 0)} invalid "
                             "packets handed to it (not slots sent to it, or records outside their slots)")
                    self._refused[rec.nf_id] = refused

    def _fence(self, nf_id: int, why: str) -> None:
        """Stop an NF that broke the rules: out of its service, its process killed, then reclaimed."""
        dp = self._dp()
        with self.lock:
            dp.fence(nf_id)  # the manager's packet path takes nothing more from it at once
            fenced = self.registry.fenced(nf_id)
            if fenced is None:
                return
            rec, image = fenced
            dp.publish(image)
            conn = self.conns.pop(nf_id, None)
            inbox = self.inboxes.pop(nf_id, None)
            self.log(f"{rec.describe()} fenced off: {why}")
        # Reclaimed only once it is gone: it must not write into slots others are given.
        err = kill_process(conn.pid if conn is not None else 0)
        for c in (conn, inbox):
            if c is not None:
                c.close()
        with self.lock:
            if err:
                self.log(f"{rec.describe()} stays fenced and its slots are not reclaimed: {err}")
                return
            gone = dp.retire(nf_id)
            self.registry.retired(nf_id, gone.final, gone.reclaimed)
            self._refused.pop(nf_id, None)
            self._gone.notify_all()
            self.log(f"{rec.describe()} stopped; {rec.reclaimed} slots returned to the pool")

    # ---- retirement -----------------------------------------------------------
    def _on_close(self, conn: Connection) -> None:
        nf_id = conn.data.get("nf_id")
        if nf_id is None:
            return
        with self.lock:
            closed = self.registry.closed(nf_id)
            if closed is None:
                return
            rec, how, image = closed
            self.conns.pop(nf_id, None)
            self.inboxes.pop(nf_id, None)
            dp = self._dp()
            dp.publish(image)
            gone = dp.retire(nf_id)
            self.registry.retired(nf_id, gone.final, gone.reclaimed)
            self._gone.notify_all()
            self.log(f"{rec.describe()} {how}; {rec.reclaimed} slots returned to the pool")

    # ---- status ---------------------------------------------------------------
    def locked_status(self) -> dict[str, Any]:
        with self.lock:
            return self.status()

    def status(self) -> dict[str, Any]:
        dp = self._dp()
        nfs = [self._nf_status(r, self._nf_info(r.nf_id)) for r in self.registry]
        return {
            "manager": {
                "name": self.config.name,
                "pid": os.getpid(),
                "uptime": round(time.monotonic() - self.started_at, 3),
                "region": dp.region.path,
                "layout": _native.LAYOUT_VERSION,
                "protocol": PROTOCOL_VERSION,
                "default_chain": format_chain(self.config.chain),
                "cpus": format_cpus(self.config.cpus) if self.config.cpus else "",
                "nf_cpus": format_cpus(self.nf_cpus),
                "ring_size": self.config.ring_size,
                "web": self.web.url if self.web else "",
                "packing": self.packing.describe() if self.packing else {"enabled": False},
            },
            "pool": dp.pool(),
            "ports": dp.port_status(),
            "nfs": nfs,
            "chains": self.flows.list_chains() if self.flows else [],
            "services": self.services.describe(),
            "flows": self.flows.stats() if self.flows else {},
            **({"openflow": self.sdn.describe()} if self.sdn else {}),
            "left": [self._nf_status(r, r.final) for r in list(self.registry.left)[-16:]],
            "events": [{"time": t, "text": text} for t, text in self.events[-20:]],
        }

    def _nf_info(self, nf_id: int) -> dict[str, Any]:
        return self._dp().nf_info(nf_id)

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
            "drops": drops_by_reason(info.get("drops", ())),
            "parse_errors": info.get("parse_errors", 0),  # malformed packets the NF was handed
            "reclaimed": rec.reclaimed,
            "fenced": bool(info.get("fenced")),  # broke the rules of the region (see fencing.py)
            "faults": info.get("faults", 0),  # what it handed over that failed validation
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
                + (f"; {p['lost']} packets lost after being counted as sent" if p.get("lost") else "")
            )
        for n in st["nfs"] + st["left"]:
            out.append(
                f"  NF {n['id']} {n['name']} (service {n['service']}.{n['instance']}, {n['state']}): "
                f"in {n['rx']}, onward {n['tx']}, dropped {sum(n['drops'].values())}"
                + (f" {n['drops']}" if n["drops"] else "")
            )
        pool = st["pool"]  # after the ports closed: their devices hold nothing
        out.append(f"  pool: {pool['free']} of {pool['total']} slots free"
                   + (f", {pool['lent']} still lent to ports" if pool["lent"] else ""))
        print("\n".join(out), file=sys.stderr, flush=True)


def _cpu_now(home: int | None, now: int) -> int | None:
    """The CPU an NF runs on: the one packing moved it to, else where it was placed."""
    return now if now >= 0 else home

