"""The NF manager's composition root: builds its parts, runs them, stops them.

Theory of operation
-------------------
A manager is three parts and their helpers, each with its own module:

* the **registry** (``registry.py``): NFs, ids, instances, services and
  their lifecycle; pure, it only says what the packet path must now see;
* the **data plane** (``dataplane.py``): the one owner of the shared region,
  the native workers and the ports;
* the **operations** (``onvm.control.ops``, handled in ``handlers.py``):
  every change and question, from the control socket or from inside.

:meth:`Manager.start` opens the data plane (region, ports), publishes the
chains and rules of the configuration, starts the workers (input ports held
until the chains' services run), then serves the control socket, and last
the live stats, the autoscaler, the web endpoint and the OpenFlow agent,
each given only what it needs.  :meth:`Manager.run` waits for a signal,
``onvm stop``, the duration or the inputs' end, with a periodic look at the
ports and the packing; :meth:`Manager.stop` holds the inputs, lets what is in
flight drain, asks the NFs to stop and waits for them (each retirement wakes
it), then stops the rest in reverse and prints the summary.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from onvm.control import ops
from onvm.control.server import ControlServer
from onvm.flows.chain import format_chain
from onvm.manager.config import ManagerConfig
from onvm.manager.dataplane import DataPlane, Layout
from onvm.manager.events import EventLog
from onvm.manager.fencing import Warden
from onvm.manager.flows import FlowRegistry
from onvm.manager.handlers import Handlers
from onvm.manager.nfs import NFs
from onvm.manager.packing import Packing, PackSettings
from onvm.manager.placement import format_cpus
from onvm.manager.registry import Registry
from onvm.manager.services import Services
from onvm.manager.stats import StatsPrinter
from onvm.manager.status import StatusView, summary
from onvm.paths import socket_path

__all__ = ["Manager", "ManagerConfig"]

DRAIN_AT_STOP = 1.0  # seconds for what is in flight to reach its end
NF_STOP_WAIT = 3.0  # seconds for the NFs to leave


class Part(Protocol):
    """A part the manager starts last and stops first (the web endpoint, the OpenFlow agent)."""

    def stop(self) -> None: ...


class Manager:
    """One manager process (see the module docstring)."""

    def __init__(self, config: ManagerConfig) -> None:
        self.config = cfg = config
        self.log = EventLog(cfg.name, cfg.quiet)
        self.lock = threading.RLock()  # serializes operations and the readers of the registry
        self.stopping = threading.Event()
        self.nf_cpus = cfg.nf_cpus or tuple(sorted(os.sched_getaffinity(0)))
        workers = cfg.rx_workers + cfg.tx_workers
        self.registry = Registry(rx_workers=cfg.rx_workers, tx_workers=cfg.tx_workers, nf_cpus=self.nf_cpus,
                                 worker_cpus=[cfg.cpus[i % len(cfg.cpus)] for i in range(workers)]
                                 if cfg.cpus else [], pin=cfg.pin)
        for svc, pol in cfg.policy_map.items():
            self.registry.set_policy(svc, pol)
        self.dp: DataPlane | None = None
        self.flows: FlowRegistry | None = None
        self.handlers: Handlers | None = None
        self.view: StatusView | None = None
        self.server: ControlServer | None = None
        self.services: Services | None = None
        self.packing: Packing | None = None
        self.stats: StatsPrinter | None = None
        self.web: Part | None = None  # the web endpoint, with --web
        self.sdn: Part | None = None  # the OpenFlow agent, with --controller (needs os-ken)
        self.start_in_use = 0  # slots in use once started (nothing in flight)
        self.warden: Warden | None = None  # fences NFs that broke the region's rules
        self.final_status: dict[str, Any] = {}  # the status when it stopped
        self._web_refused: Callable[[], dict[str, int]] | None = None

    # ---- start ------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.config
        if threading.current_thread() is threading.main_thread():
            # Before the socket answers: whoever sees it may stop us with a signal at once.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, frame: self.stopping.set())
        layout = Layout(cfg.name, cfg.pool_size, cfg.slot_size, cfg.ring_size, cfg.flow_table_size,
                        cfg.rx_workers, cfg.tx_workers, cfg.burst, cfg.cpus, dpdk_eal=cfg.dpdk_eal,
                        max_rules=cfg.max_rules)
        self.dp = dp = DataPlane.open(layout, cfg.port_specs, self.log)
        try:
            self.flows = flows = FlowRegistry(dp.region, dp.is_output)
            flows.set_default(cfg.chain)
            for name, hops in cfg.chains.items():
                flows.add_chain(name, hops)
            flows.set_flow_idle(cfg.flow_idle)
            flows.add_rules(cfg.rules)
            flows.start_sweeper()
            packs = cfg.pin and cfg.pack_below > 0
            candidates = sorted(set(os.sched_getaffinity(0)) & set(self.nf_cpus)) if packs else []
            self.packing = packing = Packing(
                PackSettings(below=cfg.pack_below), dataplane=dp, registry=self.registry, lock=self.lock,
                log=self.log, candidates=candidates, move_workers=not cfg.cpus)
            nfs = NFs(self.registry, dp, self.lock, self.log, on_register=packing.apply)
            self.warden = Warden(dp, self.registry, nfs, self.lock, self.log)
            self.services = Services(self.registry, cfg.autoscale_specs, stop_nf=nfs.stop, nf_info=dp.nf_info,
                                     ring_size=cfg.ring_size, lock=self.lock, log=self.log)
            self.view = view = StatusView(
                name=cfg.name, registry=self.registry, dataplane=dp, flows=flows, services=self.services,
                packing=packing, events=self.log,
                facts={"default_chain": format_chain(cfg.chain), "ring_size": cfg.ring_size,
                       "cpus": format_cpus(cfg.cpus) if cfg.cpus else "",
                       "nf_cpus": format_cpus(self.nf_cpus)})
            self.handlers = handlers = Handlers(
                name=cfg.name, nfs=nfs, flows=flows, services=self.services, dataplane=dp, lock=self.lock,
                log=self.log, status=view.status, stopping=self.stopping, default_chain=cfg.chain,
                hold_input=cfg.wait)
            dp.start(hold_input=handlers.held)
            self.server = ControlServer(socket_path(cfg.name), handlers.on_request, handlers.on_close)
            self.server.start()
            view.extra["refused"] = self._refused
        except BaseException:
            self._teardown()
            raise
        self.start_in_use = dp.pool()["in_use"]
        self.log(f"running: {dp.summary_line()}, default chain {format_chain(cfg.chain)}")
        if cfg.stats > 0 and not cfg.quiet:
            self.stats = StatsPrinter(self.locked_status, cfg.stats)
            self.stats.start()
        self.services.start()
        if cfg.web:
            self._start_web()
        if cfg.controllers:
            self._start_sdn()

    def _start_web(self) -> None:
        from onvm.control.capture import collect
        from onvm.control.client import Client
        from onvm.web.api import MAX_CAPTURE_BYTES
        from onvm.web.server import WebServer

        def control(op: ops.Op) -> dict[str, Any]:  # as a client, on the socket, like every other
            with Client(self.config.name) as c:
                return c.call(op)

        try:
            host, port = self.config.web_addr or ("127.0.0.1", 0)
            web = WebServer(self.config.name, host, port, source=self._web_sample, log=self.log,
                            control=control, capture=lambda op, seconds: collect(
                                self.config.name, op, seconds, MAX_CAPTURE_BYTES))
            web.start()
        except BaseException:
            self.stop()
            raise
        self.web = web
        self._web_refused = web.refused
        assert self.view is not None
        self.view.web_url = web.url
        self.log(f"web dashboard and API at {web.url}; changes need the token in {web.token_path}")
        # Not in the event log: anyone who can read the API can read that.
        print(f"onvm[{self.config.name}]: web token: {web.token}", file=sys.stderr, flush=True)

    def _start_sdn(self) -> None:
        from onvm.sdn import tls_context
        from onvm.sdn.agent import OpenFlowAgent

        cfg = self.config
        assert self.handlers is not None and self.view is not None and self.dp is not None
        key, cert, ca = cfg.tls_files
        tls = tls_context(key, cert, ca) if key and cert and ca else None
        sdn = OpenFlowAgent(cfg.name, cfg.controllers, cfg.fail_mode, control=self.handlers.call,
                            ports=cfg.port_specs, flow_counts=self.dp.rule_flow_counts,
                            rule_of=self.dp.rule_of, log=self.log, tls=tls)
        self.sdn = sdn
        self.handlers.packet_in_sink = sdn.packet_in
        self.view.extra["openflow"] = sdn.describe
        sdn.start()
        self.log(f"OpenFlow 1.3 datapath {sdn.dpid:016x}: controllers {', '.join(cfg.controllers)}")

    # ---- reading ----------------------------------------------------------------
    def locked_status(self) -> dict[str, Any]:
        """The status, as the ``status`` operation answers it."""
        assert self.handlers is not None
        return self.handlers.call(ops.Status())

    def nf_running(self, service: int, instance: int) -> bool:
        """Whether instance ``instance`` of ``service`` runs (a topology's supervisor asks)."""
        with self.lock:
            rec = self.registry.find(service, instance)
            return rec is not None and rec.state.value == "running"

    def wait_nfs(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``done()``, looking again whenever an NF registers, starts or leaves."""
        assert self.handlers is not None
        return self.handlers.nfs.wait(done, timeout)

    def _refused(self) -> dict[str, Any]:
        """Connections and streams refused for a cap (control socket, web)."""
        return {"control": self.server.refused if self.server is not None else 0,
                "web": self._web_refused() if self._web_refused is not None else {}}

    def _web_sample(self) -> dict[str, Any] | None:
        with self.lock:
            if self.view is None or self.dp is None or not self.dp.is_open:
                return None
            return self.view.web_sample()

    # ---- run and stop -----------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGINT/SIGTERM, ``onvm stop``, the duration or exhausted inputs."""
        cfg, dp = self.config, self.dp
        assert dp is not None and self.packing is not None and self.warden is not None
        started = time.monotonic()
        deadline = started + cfg.duration if cfg.duration else None
        # A wake-up costs CPU even on an idle machine: wake often only to watch the inputs end.
        interval = 0.1 if cfg.exit_when_done else 0.5
        while not self.stopping.is_set():
            left = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
            self.stopping.wait(left)
            if dp.damaged():
                self.log(f"the region file {dp.region.path} was cut short by another process: "
                         "what it held is gone; stopping")
                self.stop()
                return 1
            for line in dp.new_port_errors():
                self.log(line)
            self.warden.look()
            self.packing.tick()
            if deadline and time.monotonic() >= deadline:
                self.log(f"ran for {cfg.duration:g} s")
                break
            if cfg.exit_when_done and dp.inputs_done(self.start_in_use):
                self.log("every input port is done and the pipeline drained")
                break
        self.stop()
        return 0

    def stop(self) -> None:
        """Ask NFs to stop, wait for them, stop the rest, flush the ports, print the summary."""
        dp = self.dp
        if dp is None or not dp.is_open or self.handlers is None:
            self._teardown()
            return
        self.stopping.set()
        if self.services is not None:
            self.services.stop()
        # Inputs first, then let what is in flight reach its end before NFs leave.
        dp.pause_input(True)
        dp.drain(DRAIN_AT_STOP)
        with self.lock:
            self.handlers.nfs.stop_all(NF_STOP_WAIT)
        if self.services is not None:
            self.services.wait_spawned(timeout=3.0)
        for part in (self.sdn, self.stats, self.web, self.server):
            if part is not None:
                part.stop()  # the server closes what is left; closing retires them
        dp.flush_ports()  # a write that fails only now is logged and summed up too
        for line in dp.new_port_errors():
            self.log(line)
        dp.close_ports()
        if self.view is not None:
            with self.lock:
                self.final_status = st = self.view.status()
            if not self.config.quiet:
                print(summary(st, time.monotonic() - self.view.started_at), file=sys.stderr, flush=True)
        self._teardown()

    def _teardown(self) -> None:
        for part in (self.sdn, self.web, self.server):
            if part is not None:
                part.stop()
        self.sdn = self.web = self.server = None
        if self.flows is not None:
            self.flows.stop_sweeper()
        if self.dp is not None:
            self.dp.close()
