"""The data plane: the one owner of the shared region and of the native workers and ports.

Theory of operation
-------------------
:meth:`DataPlane.open` creates the region (replacing a stale one left by a
manager that died; refusing when a live manager holds it), opens the ports
and gets the native RX/TX workers ready; :meth:`start` runs them.  Everything
else in the manager reaches the packet path through this class: it publishes
what the registry decided (service images, NF slots), asks NFs to stop,
retires NFs that left, reads counters for status and packing, and closes the
ports and the region at the end.  Nothing else holds the region or the native
manager.

Retiring an NF is one native call (``retire.c``): the NF is marked draining,
the manager sleeps until every other NF and worker has passed a loop
iteration or sleeps (a grace period: nobody still routes to it), its slots go
back to the pool and its TX ring drains, each wait bounded.  Waiting for the
rings to empty at shutdown is another (``drain``).  Both sleep on a futex that
the packet path wakes; nothing here polls.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from onvm import _native, latency
from onvm.constants import FLOW_ORIGINS, PORT_KINDS, drop_counts
from onvm.errors import ConfigError, OnvmError, RegionError
from onvm.manager.placement import NumaTopology, format_cpus, numa_plan
from onvm.manager.region_path import region_path
from onvm.manager.registry import NFRecord, ServiceImage
from onvm.ports.dpdk import DpdkPorts
from onvm.ports.uri import PortSpec

__all__ = ["GRACE_TIMEOUT", "DRAIN_TIMEOUT", "DataPlane", "Retired"]

GRACE_TIMEOUT = 0.5  # at most this long for the others to pass a loop iteration
DRAIN_TIMEOUT = 1.0  # at most this long for a leaving NF's TX ring to drain


@dataclass(frozen=True)
class Layout:
    """The sizes the region and workers are made with."""

    name: str
    pool_size: int
    slot_size: int
    ring_size: int
    flow_table_size: int
    rx_workers: int
    tx_workers: int
    burst: int
    cpus: tuple[int, ...] | None = None  # pin the manager and its workers
    max_rules: int = _native.RULES_DEFAULT  # rule slots reserved (only those in use are resident)
    dpdk_eal: str = ""  # DPDK EAL options for dpdk: ports (onvm.ports.dpdk.eal_args)


@dataclass(frozen=True)
class Retired:
    """What retiring an NF found."""

    reclaimed: int  # slots returned to the pool
    final: dict[str, Any]  # its counters at the end
    grace_ok: bool  # every other NF and worker passed an iteration in time
    drained: bool  # its TX ring emptied in time


class DataPlane:
    """The region, the native manager and the ports of one manager (see the module docstring)."""

    def __init__(self, layout: Layout, ports: Sequence[PortSpec], region: _native.Region,
                 native: _native.Manager, log: Callable[[str], None]) -> None:
        self.layout = layout
        self.ports = list(ports)
        self.region = region
        self.native = native
        self.log = log
        self.is_open = True
        self._port_state: dict[int, dict[str, Any]] = {}  # last driver state, kept past close
        self._port_errors: set[int] = set()  # ports whose error was logged
        self.dpdk: DpdkPorts | None = None  # the EAL and the mbuf pool, once a dpdk: port opens
        self.before_close: list[Callable[[], None]] = []  # what must end before the region goes (captures)
        self.sweep_due = False  # a sweep found the packet path held up and freed nothing: sweep again

    # ---- opening and closing ------------------------------------------------
    @classmethod
    def open(cls, layout: Layout, ports: Sequence[PortSpec], log: Callable[[str], None]) -> DataPlane:
        """Create the region, open the ports; the workers wait for :meth:`start`."""
        _place_self(layout, ports, log)
        path = region_path(layout.name)
        try:
            # A free stack per RX worker: each writes slots of its own (onvm_layout.h)
            region = _native.Region.create(path, layout.name, layout.pool_size, layout.slot_size,
                                           layout.ring_size, layout.flow_table_size, layout.max_rules,
                                           layout.rx_workers)
        except RegionError as e:
            if e.errno == errno.EBUSY:  # the lock of a live manager
                raise OnvmError(f"a manager named '{layout.name}' is already running (region {path})",
                                code="busy") from None
            raise
        if region.info()["replaced"]:
            log(f"replaced a stale region at {path} left by a manager that is gone")
        native = _native.Manager(region, layout.rx_workers, layout.tx_workers, layout.burst)
        dp = cls(layout, ports, region, native, log)
        try:
            dp._open_ports()
        except BaseException:
            dp.close()
            raise
        return dp

    def _open_ports(self) -> None:
        lay, native = self.layout, self.native
        for pid, spec in enumerate(self.ports):
            o = spec.options
            try:
                if spec.kind == "null":
                    native.add_null(pid)
                elif spec.kind == "gen":
                    native.add_gen(pid, size=o["size"], mix=o["mix"], flows=o["flows"], proto=o["proto"],
                                   rate=o["rate"], count=o["count"], seed=o["seed"] or pid + 1,
                                   src_ip=o["src"], dst_ip=o["dst"], sport=o["sport"], dport=o["dport"])
                elif spec.kind == "pcap":
                    native.add_pcap_in(pid, spec.path, loops=o["loop"], rate=o["rate"],
                                       timing=bool(o["timing"]), speed=o["speed_milli"] / 1000,
                                       loss=bool(o["loss"]))
                elif spec.kind == "pcap-out":
                    native.add_pcap_out(pid, spec.path, snaplen=o["snaplen"])
                elif spec.kind == "afpacket":
                    native.add_afpacket(pid, spec.path, queues=o["queues"] or lay.rx_workers,
                                        promisc=bool(o["promisc"]), qdisc_bypass=bool(o["bypass"]),
                                        block_size=o["block_size"], blocks=o["blocks"])
                elif spec.kind == "afxdp":
                    native.add_afxdp(pid, spec.path, queues=o["queues"] or lay.rx_workers, mode=o["mode"],
                                     ring=o["ring"], fill=o["fill"], promisc=bool(o["promisc"]))
                elif spec.kind == "tap":
                    native.add_tap(pid, spec.path)
                elif spec.kind == "dpdk":
                    self._add_dpdk(pid, spec)
            except RegionError as e:
                raise ConfigError(f"port {pid} '{spec.uri}': {e.message}") from None
            self.region.set_port_info(pid, PORT_KINDS[spec.kind], spec.uri)
            if notice := (native.port_state(pid) or {}).get("notice"):  # a stale XDP program replaced
                self.log(f"port {pid} '{spec.uri}': {notice}")

    def _add_dpdk(self, pid: int, spec: PortSpec) -> None:
        lay = self.layout
        if self.dpdk is None:
            self.dpdk = DpdkPorts(self.region, lay.name, lay.dpdk_eal, lay.pool_size, self.ports)
        f = self.dpdk.add(self.native, pid, spec)
        self.log(f"port {pid} '{spec.uri}': DPDK port {f['port_id']} ({f['driver']}), "
                 f"{f['rx_queues']} RX and {f['tx_queues']} TX queues")

    def start(self, hold_input: bool) -> None:
        """Run the workers; input ports wait while ``hold_input``."""
        self.native.pause_input(hold_input)
        self.native.start()

    def pause_input(self, paused: bool) -> None:
        self.native.pause_input(paused)

    def set_port_rate(self, port: int, pps: int) -> dict[str, Any]:
        """Pace an input port at pps packets a second from now on (0: unpaced)."""
        if port >= len(self.ports):
            raise ConfigError(f"port {port}: the manager has {len(self.ports)} ports")
        try:
            self.native.set_rate(port, pps)
        except ValueError as e:
            raise ConfigError(f"port {port} '{self.ports[port].uri}': {e}") from None
        return {"port": port, "pps": pps}

    def flush_ports(self) -> None:
        """Stop the workers and have output ports write what they hold (errors show in port_states)."""
        self.native.flush_ports()

    def close_ports(self) -> None:
        """Stop the workers, flush and close the ports (their last state stays readable)."""
        self.port_states()
        self.native.close_ports()

    def close(self) -> None:
        """Close the ports and the region (which removes its file); safe to call twice."""
        if not self.is_open:
            return
        for end in self.before_close:
            end()
        self.is_open = False
        self.native.close_ports()
        if self.dpdk is not None:
            self.dpdk.close()  # after the ports: the mbuf pool goes with the last of them
            self.dpdk = None
        self.region.close()

    # ---- what the registry decided -----------------------------------------
    def publish(self, image: ServiceImage) -> None:
        """Make a service's instances and policy what the packet path sees."""
        self.region.set_service(image.service, list(image.members), image.policy)

    def activate(self, rec: NFRecord) -> None:
        """Give a newly registered NF its slot and rings."""
        self.region.nf_activate(rec.nf_id, rec.service, rec.instance, rec.pid, rec.tx_worker, rec.name)

    def request_stop(self, nf_id: int) -> None:
        """Ask an NF to leave its loop (a flag in its slot; wakes it)."""
        self.region.nf_request_stop(nf_id)

    def retire(self, nf_id: int) -> Retired:
        """Take an NF that left its service out of the packet path and free its slot.

        Its slots come back by their stamps; those it held under stamps it wrote over
        name nobody, and the sweep that follows finds them (see fence.c)."""
        res = self.native.retire(nf_id, grace=GRACE_TIMEOUT, drain=DRAIN_TIMEOUT)
        final = self.nf_info(nf_id)
        if not res["grace_ok"]:  # named now: the sweep's grace period below records its own
            self.log(f"NF {nf_id} ({final['name'] or 'unnamed'}) was retired without a full grace period: "
                     f"{self._stalled()} did not pass a loop iteration within {GRACE_TIMEOUT:g} s (stopped?)")
        self.region.nf_release(nf_id)
        swept = self.sweep(GRACE_TIMEOUT)
        return Retired(int(res["reclaimed"]) + swept, final, bool(res["grace_ok"]), bool(res["drained"]))

    def sweep(self, grace: float) -> int:
        """Return to the pool the slots nobody can free any more (fence.c); how many.

        Only after a grace period: while an NF or a worker has not passed a loop iteration
        (stopped in a debugger, its vCPU preempted) it may still free or send the slots that
        look lost, so nothing is freed and :attr:`sweep_due` says to sweep again later (the
        warden does, on the manager's lock: two sweeps must not overlap).  Tried again, it
        looks at the pool only once the packet path has moved on (``settle``)."""
        n = self.native.sweep(grace, settle=self.sweep_due)
        if n is None and not self.sweep_due:
            self.log(f"the pool's sweep is put off: {self._stalled()} did not pass a loop iteration "
                     f"within {grace:g} s (stopped?); it is tried again twice a second")
        elif n is not None and self.sweep_due:
            self.log("the pool's sweep ran")
        self.sweep_due = n is None
        return n or 0

    def _stalled(self) -> str:
        """Who held up the grace period that just timed out: "NF 3 (nat), the TX worker 0"."""
        st = self.native.stalled()
        who = [f"NF {i} ({self.region.nf_info(i)['name'] or 'unnamed'})" for i in st["nfs"]]
        rx = self.layout.rx_workers  # worker rows: the RX workers', then the TX workers'
        who += [f"the RX worker {w}" if w < rx else f"the TX worker {w - rx}" for w in st["workers"]]
        more = st["nfs_total"] + st["workers_total"] - len(who)
        if more > 0:
            who.append(f"{more} more")
        return ", ".join(who) or "an NF or a worker"

    def damaged(self) -> bool:
        """The region's file was cut short under us (a SIGBUS caught, see mapguard.c)."""
        return bool(self.region.damaged())

    def audit(self) -> list[dict[str, Any]]:
        """What the packet path could not settle itself: NFs to fence, repairs made (fence.c)."""
        events: list[dict[str, Any]] = self.native.audit()
        return events

    def fence(self, nf_id: int) -> None:
        """Take nothing more from the NF and send it nothing more (its process is stopped apart)."""
        self.native.fence(nf_id)

    def drain(self, timeout: float) -> bool:
        """Wait until no NF ring holds packets; False if the timeout came first."""
        return self.native.drain(timeout)

    def chains(self) -> list[tuple[int, list[tuple[int, int]], list[tuple[int, int]]]]:
        """The chains the packet path sees, the default and each used one: (id,
        [(action, dest)], [(early, late) drops per hop])."""
        out = []
        for cid in range(_native.MAX_CHAINS):
            hops = self.region.chain(cid)
            if hops or cid == 0:
                out.append((cid, hops, self.region.chain_drops(cid)))
        return out

    # ---- counters -------------------------------------------------------------
    def nf_info(self, nf_id: int) -> dict[str, Any]:
        """An NF's slot and counters, with its latency histogram."""
        info: dict[str, Any] = self.region.nf_info(nf_id)
        info["latency"] = _native.nf_latency(self.region, nf_id)
        return info

    def port_states(self) -> dict[int, dict[str, Any]]:
        """Each port's driver state (done, error), the last one seen once a port closed."""
        if self.is_open:
            for pid in range(len(self.ports)):
                state = self.native.port_state(pid)
                if state:
                    self._port_state[pid] = state
        return self._port_state

    def port_status(self) -> list[dict[str, Any]]:
        """Ports as ``onvm status`` shows them: counters, drops, driver state, latency."""
        states = self.port_states()
        out = []
        for pid, spec in enumerate(self.ports):
            info = self.region.port_info(pid)
            state = states.get(pid, {})
            out.append({
                "id": pid, "uri": spec.uri, "kind": spec.kind,
                "rx": info["rx"], "rx_bytes": info["rx_bytes"],
                "tx": info["tx"], "tx_bytes": info["tx_bytes"],
                "drops": drop_counts(info["drops"]),
                "rx_by_worker": list(info["rx_by_worker"][: self.layout.rx_workers]),
                "lent": info["lent"],  # slots the port's device holds (fill and TX rings)
                "done": bool(state.get("done")), "error": state.get("error", ""),
                "mode": state.get("mode", ""),  # how the driver runs (afxdp: zc, copy or skb)
                **({"rate_pps": state["rate"]} if state.get("pacable") else {}),  # 0: unpaced
                "lost": state.get("lost", 0),  # counted as sent, never reached the file (pcap-out)
                # records or frames left out, by reason: empty or cut (runt), larger than a slot
                # (oversize), cooked or raw-IP with no EtherType to give them (no_ethertype)
                "skipped": {k: state[s] for k, s in (("runt", "runt"), ("oversize", "skipped"),
                                                     ("no_ethertype", "no_ethertype")) if state.get(s)},
                "latency": latency.summary(_native.port_latency(self.region, pid)),
                **({"device": state["device"]} if "device" in state else {}),  # its own counters
            })
        return out

    def new_port_errors(self) -> list[str]:
        """A line for each port whose driver newly reported an error (a corrupt file, a failed send),
        and what DPDK warned of meanwhile."""
        out = self.dpdk.new_log_lines() if self.dpdk else []
        for pid, state in self.port_states().items():
            err = state.get("error", "")
            if err and pid not in self._port_errors:
                self._port_errors.add(pid)
                what = "stopped" if state.get("done") else "error"
                out.append(f"port {pid} '{self.ports[pid].uri}' {what}: {err}")
        return out

    def inputs_done(self, start_in_use: int) -> bool:
        """Every input port is exhausted and no more slots are in use than at the start."""
        if not any(s.is_input for s in self.ports):
            return False
        states = self.port_states()
        if not all(states.get(pid, {}).get("done") for pid, s in enumerate(self.ports) if s.is_input):
            return False
        return self.pool()["in_use"] <= start_in_use

    def pool(self) -> dict[str, int]:
        """The pool's balance: free + lent to ports' devices + in use = total."""
        info = self.region.info()
        free, lent, total = info["pool_free"], info["pool_lent"], info["pool_size"]
        return {"free": free, "lent": lent, "in_use": total - free - lent, "total": total,
                "slot_size": info["slot_size"]}

    def rule_flow_counts(self) -> list[tuple[Any, int, int, int]]:
        """(key, rule slot, packets, bytes) of each flow-table entry a rule installed.

        Reads the region's seqlocked entries: no lock needed."""
        fs = self.region.flow_stats()
        if not fs["used"] or not fs["size"]:
            return []
        return [(e["key"], e["rule_slot"], e["packets"], e["bytes"])
                for e in self.region.flow_list(fs["size"], -1, FLOW_ORIGINS["rule"])]

    def rule_of(self, key: tuple[Any, ...]) -> int:
        """The slot of the rule the classifier picks for a flow key (-1: none), as RX would."""
        slot: int = self.region.rule_lookup(key)[0]
        return slot

    def is_output(self, port: int) -> bool:
        return 0 <= port < len(self.ports) and self.ports[port].is_output

    def busy_ns(self, nf_ids: Sequence[int]) -> int:
        """Time the workers and these NFs spent on bursts, in all (packing's load)."""
        return self.region.busy_ns(self.layout.rx_workers + self.layout.tx_workers, list(nf_ids))

    def busy_each(self, workers: int, nf_ids: Sequence[int]) -> dict[tuple[str, int], int]:
        """Busy ns of worker rows 0..workers-1 and of these NFs, each on its own (balancing)."""
        out = {("worker", w): int(self.region.worker_info(w)["busy_ns"]) for w in range(workers)}
        out.update({("nf", i): int(self.region.nf_info(i)["busy_ns"]) for i in nf_ids})
        return out

    def worker_status(self, ports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The manager's RX and TX workers as ``onvm status`` shows them: where each runs, the
        packets it handled and the time it spent on bursts (``add_rates`` makes these a busy share
        and a cost per packet).  An RX worker's packets are what it read from ``ports`` (as
        ``port_status`` gives them: its share of each port's rx); a TX worker counts its own."""
        out = []
        for w in range(self.layout.rx_workers + self.layout.tx_workers):
            info = self.region.worker_info(w)
            rx = w < self.layout.rx_workers
            out.append({"id": w, "role": "rx" if rx else "tx",
                        "index": w if rx else w - self.layout.rx_workers,
                        "cpu": info["cpu_now"] if info["cpu_now"] >= 0 else None,  # None: where it started
                        "packets": sum(p["rx_by_worker"][w] for p in ports) if rx else info["packets"],
                        "busy_ns": info["busy_ns"],
                        "sleeps": info["sleeps"], **({"held": info["held"]} if rx else {})})
        return out

    def rx_pressure(self) -> tuple[int, int, int]:
        """The RX workers' loops, the loops that found packets, and the times they left a port
        unread because its chain was congested: each summed over the RX workers."""
        infos = [self.region.worker_info(w) for w in range(self.layout.rx_workers)]
        return (sum(int(i["loops"]) for i in infos), sum(int(i["busy_loops"]) for i in infos),
                sum(int(i["held"]) for i in infos))

    def set_cpu(self, kind: str, index: int, cpu: int) -> None:
        """Ask a worker or an NF to run on ``cpu`` (-1: where it started)."""
        self.region.set_cpu(kind, index, cpu)

    def summary_line(self) -> str:
        info = self.region.info()
        lay = self.layout
        return (f"region {self.region.path} ({info['size'] >> 20} MiB, {lay.pool_size} slots of "
                f"{lay.slot_size} B), {len(self.ports)} ports, "
                f"{lay.rx_workers} RX + {lay.tx_workers} TX workers")


def _place_self(layout: Layout, ports: Sequence[PortSpec], log: Callable[[str], None]) -> None:
    """Pin the manager (and so its workers and the pool's first touch) as configured."""
    if layout.cpus:
        os.sched_setaffinity(0, layout.cpus)
        log(f"manager and workers pinned to CPUs {format_cpus(layout.cpus)}")
        return
    plan = numa_plan(NumaTopology.from_sysfs(), [None for _ in ports])
    if plan.worker_cpus:
        os.sched_setaffinity(0, plan.worker_cpus)
        log(plan.reason)
