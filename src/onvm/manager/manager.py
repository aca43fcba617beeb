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
from onvm.manager._lifecycle import Lifecycle, NFEvent, NFState
from onvm.manager.region_path import region_path
from onvm.manager.stats import StatsPrinter
from onvm.paths import socket_path, validate_name
from onvm.ports.uri import PortSpec, parse_port

PORT_KINDS = {"null": 1, "gen": 2, "pcap": 3, "pcap-out": 4}
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
    quiet: bool = False
    web: str = ""  # HOST:PORT of the web dashboard and API ("" = none)

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.web:
            from onvm.web.server import parse_listen

            self.web_addr: tuple[str, int] = parse_listen(self.web)
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
        self.web: Any = None  # onvm.web.server.WebServer when --web is given
        self.events: list[tuple[float, str]] = []
        self.start_free = 0
        self._held = False
        self._port_state: dict[int, dict[str, Any]] = {}  # last driver state, kept past close

    # ---- start and stop -----------------------------------------------------
    def log(self, text: str) -> None:
        self.events.append((time.time(), text))
        if not self.config.quiet:
            print(f"onvm[{self.config.name}]: {text}", file=sys.stderr, flush=True)

    def start(self) -> None:
        cfg = self.config
        path = region_path(cfg.name)
        try:
            stale = os.path.exists(path)
            self.region = _native.Region.create(
                path, cfg.name, cfg.pool_size, cfg.slot_size, cfg.ring_size
            )
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
            self.region.set_chain(0, [h.as_tuple() for h in cfg.chain])
            self._held = cfg.wait_for_chain and self._chain_services() != set()
            self.native.pause_input(self._held)
            self.native.start()
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
        if cfg.web:
            self._start_web()

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
                    )
                elif spec.kind == "pcap":
                    self.native.add_pcap_in(pid, spec.path, loops=o["loop"], rate=o["rate"])
                elif spec.kind == "pcap-out":
                    self.native.add_pcap_out(pid, spec.path, snaplen=o["snaplen"])
            except _native.RegionError as e:
                raise ConfigError(f"port {pid} '{spec.uri}': {e.strerror or e}") from None
            self.region.set_port_info(pid, PORT_KINDS[spec.kind], spec.uri)

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM, ``onvm stop``, the duration or exhausted inputs."""
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, lambda signum, frame: self.stopping.set())
        deadline = self.started_at + self.config.duration if self.config.duration else None
        while not self.stopping.is_set():
            self.stopping.wait(0.1)
            if deadline and time.monotonic() >= deadline:
                self.log(f"ran for {self.config.duration:g} s")
                break
            if self.config.exit_when_done and self._inputs_done():
                self.log("every input port is done and the pipeline drained")
                break
        self.stop()
        return 0

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
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            with self.lock:
                if not any(not r.life.terminal for r in self.nfs.values()):
                    break
            time.sleep(0.01)
        if self.stats:
            self.stats.stop()
        if self.web:
            self.web.stop()
        if self.server:
            self.server.stop()  # closes what is left; on_close retires them
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
        rec = NFRecord(nf_id, name, service, instance, pid, tx_worker, Lifecycle(nf_id), conn)
        self.region.nf_activate(nf_id, service, instance, pid, tx_worker, name)
        rec.life.apply(NFEvent.REGISTERED)
        self.nfs[nf_id] = rec
        conn.data["nf_id"] = nf_id
        self.log(f"{rec.describe()} registered (pid {pid})")
        return {
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
                self.log("every service of the default chain runs: input ports start")
        return {"state": rec.life.state.value}

    def _chain_services(self) -> set[int]:
        return {h.dest for h in self.config.chain if h.action == Action.TONF}

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

    # ---- services and retirement ------------------------------------------
    def _publish_service(self, service: int) -> None:
        members = sorted(
            (r.instance, r.nf_id)
            for r in self.nfs.values()
            if r.service == service and r.life.state == NFState.RUNNING
        )
        self.region.set_service(service, [(nf, inst) for inst, nf in members])

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
                "ring_size": self.config.ring_size,
                "web": self.web.url if self.web else "",
            },
            "pool": {"free": info["pool_free"], "total": info["pool_size"], "slot_size": info["slot_size"]},
            "ports": ports,
            "nfs": nfs,
            "left": [self._nf_status(r, r.final) for r in self.retired[-16:]],
            "events": [{"time": t, "text": text} for t, text in self.events[-20:]],
        }

    def _nf_info(self, nf_id: int) -> dict[str, Any]:
        info: dict[str, Any] = self.region.nf_info(nf_id)
        info["latency"] = _native.nf_latency(self.region, nf_id)
        return info

    def _nf_status(self, rec: NFRecord, info: dict[str, Any]) -> dict[str, Any]:
        acts = info.get("actions", (0, 0, 0, 0))
        return {
            "id": rec.nf_id,
            "name": rec.name,
            "service": rec.service,
            "instance": rec.instance,
            "pid": rec.pid,
            "state": rec.life.state.value,
            "rx": info.get("rx", 0),
            "tx": info.get("tx", 0),
            "rx_ring": info.get("rx_ring", 0),
            "tx_ring": info.get("tx_ring", 0),
            "actions": {a.name.lower(): acts[a] for a in Action},
            "drops": _drops(info.get("drops", ())),
            "reclaimed": rec.reclaimed,
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


def _drops(values: Any) -> dict[str, int]:
    return {DropReason(i).name.lower(): int(v) for i, v in enumerate(values) if v}
