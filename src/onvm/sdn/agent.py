"""The manager's OpenFlow 1.3 agent: controllers program its rules and chains.

Theory of operation
-------------------
``--controller tcp:HOST:PORT`` (several allowed) starts one session thread per
controller.  A session connects, says HELLO, and serves the controller's
requests until the connection ends; then it reconnects with an exponential
back-off (0.1 s doubling to 5 s).  The agent is a client of the manager like
any other: a FLOW_MOD becomes operations of the control table (``chain_add``,
``rule_add``, ``rule_del``; see ``onvm.control.ops``) that it hands to the
manager's handlers in process, with the checks and the lock every client's
requests get, and the RX workers pick the new rule up from the region.

The OpenFlow table (one table, id 0) is kept here: each flow is a match, a
priority, a cookie, timeouts, flags and its actions.  The match becomes a
rule (see :mod:`onvm.sdn.translate`), the actions a chain named after its hops
(flows with the same actions share it).  A flow's packet and byte counts
come from the exact flow-table entries its rule installed (read from the
region by the manager's data plane): the timer thread polls them every 0.2 s
and adds each entry's growth to the rule that owns it
(so a MODIFY, which re-caches entries under the new rule, keeps the counts).
Packets an entry counted after the last poll and before the sweep removed it
are not seen.  An ADD of a flow already in the table with the same actions
only updates cookie, timeouts and flags: the rule is left alone.  Idle
and hard timeouts are enforced by a timer thread here (an idle flow is one
whose count did not move for ``idle_timeout`` seconds); FLOW_REMOVED goes to
the controllers when the flow asked for it.

When every controller is gone the flows stay and keep forwarding
(``--fail-mode secure``, the default); ``--fail-mode standalone`` removes the
flows this agent installed, so the manager's own rules and default chain
forward alone until a controller is back.

Roles: a session starts EQUAL.  ROLE_REQUEST MASTER makes the others SLAVE;
a SLAVE gets IS_SLAVE errors for FLOW_MOD.  Generation ids are checked as the
specification says.

PACKET_IN and PACKET_OUT go through the packet_io NF (service 63, see
:mod:`onvm.sdn.packet_io`): an output to CONTROLLER is a hop into it, it hands
each packet to the manager, and :meth:`OpenFlowAgent.packet_in` queues it for a
sender thread (a slow controller never holds the manager's lock).  The reason
and cookie are those of the flow the packet matches (the native parser reads
the packet as the RX path does; the rules' reference matcher finds the flow):
NO_MATCH for the table-miss flow, ACTION for others.  A PACKET_OUT
becomes a message to packet_io, which injects the packet once per output.

Not supported: packet buffers, groups, meters and more than one table.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import queue
import select
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from onvm import __version__ as onvm_version
from onvm import _native
from onvm.constants import MAX_PORTS, MAX_SERVICES, Action
from onvm.control import ops
from onvm.errors import ConfigError, OnvmError
from onvm.flows.chain import Hop
from onvm.flows.rules import PacketFields
from onvm.ports.uri import PortSpec
from onvm.sdn import FAIL_MODES, parse_controller, wire
from onvm.sdn.translate import (
    CONTROLLER_SERVICE,
    SERVICE_PORT_BASE,
    Match,
    chain_name,
    hops_from_of,
    match_from_of,
    of_port_of,
    outputs_of,
    service_port,
)
from onvm.sdn.wire import OFError

BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
ECHO_INTERVAL = 5.0
ECHO_DEAD = 15.0
TIMER_INTERVAL = 0.2
ROLE_NAMES = {0: "nochange", 1: "equal", 2: "master", 3: "slave"}


def datapath_id(name: str) -> int:
    """A stable datapath id from the manager's name (48 bits, so it reads as a MAC)."""
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:6], "big")


@dataclass
class OFFlow:
    """One flow of table 0."""

    match: Match
    of_match: Any  # os-ken OFPMatch, echoed in stats
    priority: int
    cookie: int
    idle: int
    hard: int
    flags: int
    hops: list[Hop]
    instructions: list[Any]
    rule_id: int = 0
    slot: int = -1  # its rule's slot in the region's classifier
    installed: float = field(default_factory=time.monotonic)
    last_active: float = field(default_factory=time.monotonic)
    last_packets: int = 0
    base_packets: int = 0
    base_bytes: int = 0

    @property
    def key(self) -> tuple[int, Match]:
        """What tells flows apart in the table (OpenFlow's strict identity)."""
        return self.priority, self.match


Control = Callable[[ops.Op], dict[str, Any]]
#: (key, rule slot, packets, bytes) of each flow-table entry a rule installed.
FlowCounts = Callable[[], list[tuple[Any, int, int, int]]]
#: The slot of the rule the manager's classifier picks for a flow key (-1: none).
RuleOf = Callable[[tuple[Any, ...]], int]


class FlowTable:
    """Table 0 on top of the manager's rules and chains.  Callers hold ``self.lock``.

    ``control`` runs an operation in the manager; ``ports`` are the manager's
    ports; ``flow_counts`` reads the counters of the entries rules installed;
    ``rule_of`` asks the manager's classifier which rule a flow key takes.

    A FLOW_MOD costs the same however many flows the table holds: flows are
    found by their (priority, match) and by their rule's slot, an ADD or a
    DELETE_STRICT is one rule operation, a MODIFY swaps a flow's rule for the
    new one in one change, and a chain goes when the count of flows using it
    falls to zero.  Only what OpenFlow defines as a scan (non-strict MODIFY and
    DELETE, stats requests) looks at every flow.

    Lock order: the table's lock, then the manager's (``control`` takes it).
    Code that runs under the manager's lock (status, packet_in) must not take
    the table's."""

    def __init__(self, control: Control, ports: Sequence[PortSpec], flow_counts: FlowCounts,
                 rule_of: RuleOf | None = None) -> None:
        self.control = control
        self.ports = list(ports)
        self.flow_counts = flow_counts
        self.rule_of = rule_of
        self.lock = threading.RLock()
        self.flows: dict[tuple[int, Match], OFFlow] = {}  # by key, in the order they came
        self.timed: dict[tuple[int, Match], OFFlow] = {}  # those with an idle or hard timeout
        self.chains: Counter[str] = Counter()  # chains this table made -> its flows that use them
        self.slots: dict[int, OFFlow] = {}  # rule slot in the region -> the flow whose rule it is
        self.seen: dict[Any, tuple[int, int, int]] = {}  # entry key -> (rule id, packets, bytes) last poll
        self.acc: dict[int, list[int]] = {}  # rule id -> [packets, bytes] counted so far

    def port_ok(self, port: int) -> bool:
        return 0 <= port < len(self.ports) and self.ports[port].is_output

    def _install(self, fl: OFFlow, replacing: OFFlow | None = None) -> None:
        """Give fl its rule; with ``replacing``, that flow's rule goes in the same change."""
        name = chain_name(fl.hops)
        text = fl.match.rule(name, fl.priority).to_text()
        old = [replacing.rule_id] if replacing is not None and replacing.rule_id else []
        rule: ops.Op = ops.RuleChange(add=[text], delete=old) if old else ops.RuleAdd(rules=[text])
        try:
            if name not in self.chains:
                self.control(ops.ChainAdd(name, ",".join(str(h) for h in fl.hops)))
            try:
                added = self.control(rule)
            except OnvmError as e:
                if "no chain named" not in e.message:
                    raise
                # Someone removed the chain under us: make it again, once.
                self.control(ops.ChainAdd(name, ",".join(str(h) for h in fl.hops)))
                added = self.control(rule)
        except OnvmError as e:
            if not self.chains[name]:
                self._drop_chain(name)
            code = ofp.OFPFMFC_TABLE_FULL if e.code == "busy" else ofp.OFPFMFC_UNKNOWN
            raise OFError(ofp.OFPET_FLOW_MOD_FAILED, code, str(e)) from None
        fl.rule_id, fl.slot = added["ids"][0], added["slots"][0]
        self.slots[fl.slot] = fl
        self.chains[name] += 1
        if replacing is not None:
            self._forget(replacing)

    def _uninstall(self, fl: OFFlow) -> None:
        """Remove the flow's rule, and its chain once no other flow of the table uses it."""
        if not fl.rule_id:
            return
        try:
            self.control(ops.RuleDel(fl.rule_id))
        except OnvmError:
            pass  # gone already (the manager is stopping, or someone removed it)
        self._forget(fl)

    def _forget(self, fl: OFFlow) -> None:
        """fl's rule is gone: forget its slot, and its chain if no flow of the table uses it."""
        if self.slots.get(fl.slot) is fl:
            del self.slots[fl.slot]
        name = chain_name(fl.hops)
        self.chains[name] -= 1
        if self.chains[name] <= 0:
            self._drop_chain(name)
        fl.rule_id, fl.slot = 0, -1

    def _drop_chain(self, name: str) -> None:
        del self.chains[name]
        try:
            self.control(ops.ChainDel(name))
        except OnvmError:
            pass  # a rule of someone else's still uses it

    def _enter(self, fl: OFFlow) -> None:
        self.flows[fl.key] = fl
        if fl.idle or fl.hard:
            self.timed[fl.key] = fl
        else:
            self.timed.pop(fl.key, None)

    def _leave(self, fl: OFFlow) -> None:
        self.flows.pop(fl.key, None)
        self.timed.pop(fl.key, None)

    def match_packet(self, fields: PacketFields) -> OFFlow | None:
        """The flow whose rule the manager's classifier picks for a packet (None: none of ours).

        Runs under the manager's lock, without the table's: one dict read."""
        if self.rule_of is None:
            return None
        ports = (fields.sport, fields.dport) if fields.proto in (6, 17) else (0, 0)
        key = (fields.ipver, fields.src, fields.dst, fields.proto, *ports, fields.in_port,
               0 if fields.vlan is None else fields.vlan + 1)
        return self.slots.get(self.rule_of(key))

    def poll(self) -> None:
        """Fold what the exact entries counted since the last poll into their rules' totals.

        An entry keeps its counters when it moves to another rule (a MODIFY
        re-caches it), so what is added is the growth since the last poll, to
        the rule that owns it now."""
        if not self.slots and not self.seen:
            return
        seen: dict[Any, tuple[int, int, int]] = {}
        for key, slot, p, b in self.flow_counts():
            fl = self.slots.get(slot)
            if fl is None:
                continue
            rid = fl.rule_id
            old = self.seen.get(key)
            dp, db = (p, b) if old is None or p < old[1] else (p - old[1], b - old[2])
            acc = self.acc.setdefault(rid, [0, 0])
            acc[0] += dp
            acc[1] += db
            seen[key] = (rid, p, b)
        self.seen = seen

    def stats_of(self, fl: OFFlow) -> tuple[int, int]:
        p, b = self.acc.get(fl.rule_id, (0, 0))
        return fl.base_packets + p, fl.base_bytes + b

    def _retire_counts(self, fl: OFFlow) -> None:
        """The flow's rule is about to go: its totals move into the flow's base."""
        fl.base_packets, fl.base_bytes = self.stats_of(fl)
        self.acc.pop(fl.rule_id, None)

    # ---- FLOW_MOD ----------------------------------------------------------
    def flow_mod(self, msg: Any) -> list[tuple[OFFlow, int]]:
        """Apply one FLOW_MOD; returns the flows removed (with a reason) for FLOW_REMOVED."""
        cmd = msg.command
        if cmd in (ofp.OFPFC_DELETE, ofp.OFPFC_DELETE_STRICT):
            if msg.table_id not in (0, ofp.OFPTT_ALL):
                raise OFError(ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_BAD_TABLE_ID)
            match = match_from_of(list(msg.match.items()))
            return self.delete(match, msg.priority, cmd == ofp.OFPFC_DELETE_STRICT, msg.cookie,
                               msg.cookie_mask, msg.out_port)
        if msg.table_id != 0:
            raise OFError(ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_BAD_TABLE_ID)
        if cmd not in (ofp.OFPFC_ADD, ofp.OFPFC_MODIFY, ofp.OFPFC_MODIFY_STRICT):
            raise OFError(ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_BAD_COMMAND)
        match = match_from_of(list(msg.match.items()))
        hops = hops_from_of(msg.instructions, self.port_ok)
        if cmd == ofp.OFPFC_ADD:
            self.add(OFFlow(match, msg.match, msg.priority, msg.cookie, msg.idle_timeout, msg.hard_timeout,
                            msg.flags, hops, list(msg.instructions)))
        else:
            self.modify(match, msg.priority, cmd == ofp.OFPFC_MODIFY_STRICT, msg.cookie, msg.cookie_mask,
                        hops, list(msg.instructions), bool(msg.flags & ofp.OFPFF_RESET_COUNTS))
        return []

    def add(self, fl: OFFlow) -> None:
        old = self.flows.get(fl.key)
        if old is None and fl.flags & ofp.OFPFF_CHECK_OVERLAP:
            for f in self.flows.values():
                if f.priority == fl.priority and (f.match.covers(fl.match) or fl.match.covers(f.match)):
                    raise OFError(ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_OVERLAP)
        if old is not None and old.hops == fl.hops:
            # The same flow again (a controller that reconnected, say): the rule
            # stays as it is, so nothing forwarding it is disturbed.
            self.poll()
            if fl.flags & ofp.OFPFF_RESET_COUNTS:
                self.acc.pop(old.rule_id, None)
                old.base_packets = old.base_bytes = 0
            old.cookie, old.idle, old.hard, old.flags = fl.cookie, fl.idle, fl.hard, fl.flags
            old.of_match, old.instructions = fl.of_match, fl.instructions
            old.installed = old.last_active = time.monotonic()
            self._enter(old)
            return
        if old is not None:  # an identical match with other actions replaces it, in one change
            self.poll()
            if not fl.flags & ofp.OFPFF_RESET_COUNTS:
                fl.base_packets, fl.base_bytes = self.stats_of(old)
            self.acc.pop(old.rule_id, None)
        self._install(fl, replacing=old)
        self._enter(fl)

    def _selected(self, match: Match, priority: int, strict: bool, cookie: int, mask: int,
                  out_port: int = ofp.OFPP_ANY) -> list[OFFlow]:
        if strict:
            one = self.flows.get((priority, match))
            candidates = [one] if one is not None else []
        else:
            candidates = list(self.flows.values())
        out = []
        for f in candidates:
            if mask and (f.cookie & mask) != (cookie & mask):
                continue
            if strict:
                if f.priority != priority or f.match != match:
                    continue
            elif not match.covers(f.match):
                continue
            if out_port != ofp.OFPP_ANY and out_port not in outputs_of(f.hops):
                continue
            out.append(f)
        return out

    def modify(self, match: Match, priority: int, strict: bool, cookie: int, mask: int, hops: list[Hop],
               instructions: list[Any], reset: bool) -> None:
        targets = self._selected(match, priority, strict, cookie, mask)
        if targets:
            self.poll()
        for f in targets:
            p, b = self.stats_of(f) if not reset else (0, 0)
            self.acc.pop(f.rule_id, None)
            new = dataclasses.replace(f, hops=hops, instructions=instructions, base_packets=p, base_bytes=b)
            self._install(new, replacing=f)
            self._enter(new)

    def delete(self, match: Match, priority: int, strict: bool, cookie: int, mask: int,
               out_port: int, reason: int = ofp.OFPRR_DELETE) -> list[tuple[OFFlow, int]]:
        targets = self._selected(match, priority, strict, cookie, mask, out_port)
        return self.remove(targets, reason)

    def remove(self, targets: list[OFFlow], reason: int) -> list[tuple[OFFlow, int]]:
        if not targets:
            return []
        self.poll()
        for f in targets:
            self._retire_counts(f)
            self._uninstall(f)
            self._leave(f)
        return [(f, reason) for f in targets]

    def clear(self) -> None:
        self.remove(list(self.flows.values()), ofp.OFPRR_DELETE)

    def expired(self) -> list[tuple[OFFlow, int]]:
        """Remove and return the flows whose idle or hard timeout passed (counters polled for idle ones)."""
        timed = list(self.timed.values())
        if not timed:
            return []
        if any(f.idle for f in timed):
            self.poll()
        now = time.monotonic()
        gone: list[tuple[OFFlow, int]] = []
        for f in timed:
            if f.idle:
                p, _ = self.stats_of(f)
                if p != f.last_packets:
                    f.last_packets, f.last_active = p, now
            if f.hard and now - f.installed >= f.hard:
                gone.append((f, ofp.OFPRR_HARD_TIMEOUT))
            elif f.idle and now - f.last_active >= f.idle:
                gone.append((f, ofp.OFPRR_IDLE_TIMEOUT))
        for f, reason in gone:
            self.remove([f], reason)
        return gone


class Session(threading.Thread):
    """One controller connection, reconnected for ever until the agent stops."""

    def __init__(self, agent: OpenFlowAgent, scheme: str, host: str, port: int) -> None:
        super().__init__(name=f"onvm-of-{host}:{port}", daemon=True)
        self.agent = agent
        self.scheme, self.host, self.port = scheme, host, port
        self.tls_failures = 0  # TLS handshakes that failed (a controller without a certificate we trust)
        self._last_tls_error = ""
        self.sock: socket.socket | None = None
        self.send_lock = threading.Lock()
        self.role = ofp.OFPCR_ROLE_EQUAL
        self.connected = threading.Event()
        self.connects = 0
        self.negotiated = False
        self.miss_send_len = 128
        self.config_flags = 0

    @property
    def target(self) -> str:
        return f"{self.scheme}:{self.host}:{self.port}"

    # ---- connection ------------------------------------------------------------
    def run(self) -> None:
        backoff = BACKOFF_MIN
        stop = self.agent.stopping
        while not stop.is_set():
            try:
                sock = self._connect()
            except OSError:
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_MIN
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(5.0)
            self.sock = sock
            self.role = ofp.OFPCR_ROLE_EQUAL
            self.negotiated = False
            self.connects += 1
            self.agent.log(f"OpenFlow: connected to controller {self.target}")
            try:
                self.send(wire.hello())
                self.serve(sock)
            except OSError:
                pass
            finally:
                self.connected.clear()
                self.sock = None
                try:
                    sock.close()
                except OSError:
                    pass
            if not stop.is_set():
                self.agent.log(f"OpenFlow: controller {self.target} is gone; reconnecting")
                self.agent.session_lost()
                stop.wait(backoff)

    def _connect(self) -> socket.socket:
        """A TCP connection to the controller; for ``ssl:``, TLS with its certificate checked."""
        sock = socket.create_connection((self.host, self.port), timeout=2.0)
        if self.scheme != "ssl":
            return sock
        assert self.agent.tls is not None  # OpenFlowAgent.__init__
        try:
            return self.agent.tls.wrap_socket(sock, server_hostname=self.host)
        except OSError as e:  # ssl.SSLError included: not the controller we were told to trust
            sock.close()
            self.tls_failures += 1
            text = str(getattr(e, "reason", None) or e)
            if text != self._last_tls_error:  # logged once per kind of failure, counted always
                self._last_tls_error = text
                self.agent.log(f"OpenFlow: TLS with controller {self.target} failed: {text}")
            raise

    def close(self) -> None:
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def send(self, data: bytes) -> None:
        sock = self.sock
        if sock is None:
            return
        with self.send_lock:
            sock.sendall(data)

    def serve(self, sock: socket.socket) -> None:
        buf = bytearray()
        last_rx = time.monotonic()
        echo_sent = 0.0
        tls = isinstance(sock, ssl.SSLSocket)
        while not self.agent.stopping.is_set():
            # TLS: what the last read decrypted beyond what it returned waits in the session,
            # not in the socket, so select alone would not see it.
            ready = (tls and sock.pending()) or select.select([sock], [], [], 0.5)[0]  # type: ignore[attr-defined]
            now = time.monotonic()
            if ready:
                if tls:  # one TLS session is not used by two threads at once: reads and sends take turns
                    with self.send_lock:
                        data = sock.recv(65536)
                else:
                    data = sock.recv(65536)
                if not data:
                    return
                last_rx = now
                echo_sent = 0.0
                buf += data
                while len(buf) >= wire.HEADER.size:
                    version, mtype, length, xid = wire.HEADER.unpack_from(buf)
                    if length < wire.HEADER.size:
                        # No way to find the next message: say why and start over.
                        self.send(wire.error(xid, ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN, bytes(buf[:64])))
                        return
                    if len(buf) < length:
                        break
                    raw = bytes(buf[:length])
                    del buf[:length]
                    self.handle(version, mtype, xid, raw)
            elif self.negotiated:
                if now - last_rx > ECHO_DEAD:
                    return
                if now - last_rx > ECHO_INTERVAL and not echo_sent:
                    self.send(wire.message(ofp.OFPT_ECHO_REQUEST, 0))
                    echo_sent = now

    # ---- messages ---------------------------------------------------------------
    def handle(self, version: int, mtype: int, xid: int, raw: bytes) -> None:
        try:
            self.dispatch(version, mtype, xid, raw)
        except OFError as e:
            self.agent.errors += 1
            self.send(wire.error(xid, e.type, e.code, raw))
        except OSError:
            raise
        except Exception as e:  # a message the decoder chokes on must not end the session
            self.agent.errors += 1
            self.agent.log(f"OpenFlow: {self.target}: message type {mtype}: {type(e).__name__}: {e}")
            self.send(wire.error(xid, ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_EPERM, raw))

    def dispatch(self, version: int, mtype: int, xid: int, raw: bytes) -> None:
        body = raw[wire.HEADER.size:]
        if mtype == ofp.OFPT_HELLO:
            if wire.VERSION not in wire.hello_versions(version, body):
                self.send(wire.error(xid, ofp.OFPET_HELLO_FAILED, ofp.OFPHFC_INCOMPATIBLE,
                                     b"pyonvm speaks OpenFlow 1.3 only"))
                raise OSError("no common OpenFlow version")
            self.negotiated = True
            self.connected.set()
            return
        if not self.negotiated:
            raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_TYPE, "HELLO first")
        if version != wire.VERSION:
            raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_VERSION)
        agent = self.agent
        if mtype == ofp.OFPT_ECHO_REQUEST:
            self.send(wire.message(ofp.OFPT_ECHO_REPLY, xid, body))
        elif mtype in (ofp.OFPT_ECHO_REPLY, ofp.OFPT_ERROR, ofp.OFPT_EXPERIMENTER):
            if mtype == ofp.OFPT_EXPERIMENTER:
                raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_EXPERIMENTER)
        elif mtype == ofp.OFPT_FEATURES_REQUEST:
            self.send(wire.features_reply(xid, agent.dpid))
        elif mtype == ofp.OFPT_GET_CONFIG_REQUEST:
            self.send(wire.config_reply(xid, self.config_flags, self.miss_send_len))
        elif mtype == ofp.OFPT_SET_CONFIG:
            if len(body) < 4:
                raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN)
            self.config_flags, self.miss_send_len = struct.unpack_from("!HH", body)
        elif mtype == ofp.OFPT_BARRIER_REQUEST:
            # Every earlier message is applied: they are handled in order, synchronously.
            self.send(wire.message(ofp.OFPT_BARRIER_REPLY, xid))
        elif mtype == ofp.OFPT_ROLE_REQUEST:
            role, gen = wire.parse_role_request(body)
            self.send(wire.role_reply(xid, *agent.set_role(self, role, gen)))
        elif mtype == ofp.OFPT_FLOW_MOD:
            if self.role == ofp.OFPCR_ROLE_SLAVE:
                raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE)
            agent.flow_mod(wire.parse_flow_mod(raw))
        elif mtype == ofp.OFPT_MULTIPART_REQUEST:
            mp_type, _, mp_body = wire.parse_multipart_request(body)
            for reply in agent.multipart(xid, mp_type, mp_body):
                self.send(reply)
        elif mtype == ofp.OFPT_PACKET_OUT:
            if self.role == ofp.OFPCR_ROLE_SLAVE:
                raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE)
            agent.packet_out(*wire.parse_packet_out(body))
        elif mtype in (ofp.OFPT_GROUP_MOD, ofp.OFPT_METER_MOD, ofp.OFPT_TABLE_MOD, ofp.OFPT_PORT_MOD):
            raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_TYPE)
        elif mtype == ofp.OFPT_GET_ASYNC_REQUEST or mtype == ofp.OFPT_SET_ASYNC:
            raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_TYPE)
        else:
            raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_TYPE)


class OpenFlowAgent:
    """The OpenFlow datapath of manager ``name`` (see the module docstring).

    ``control`` runs an operation in the manager, ``ports`` are its ports,
    ``flow_counts`` reads the counters of the entries its rules installed,
    ``rule_of`` asks its classifier which rule a flow key takes."""

    def __init__(self, name: str, controllers: list[str], fail_mode: str = "secure", *,
                 control: Control, ports: Sequence[PortSpec], flow_counts: FlowCounts,
                 rule_of: RuleOf | None = None, log: Callable[[str], None] = print,
                 tls: ssl.SSLContext | None = None) -> None:
        if fail_mode not in FAIL_MODES:
            raise ConfigError(f"--fail-mode {fail_mode}: expected one of {', '.join(FAIL_MODES)}")
        self.name = name
        self.control = control
        self._log = log
        self.fail_mode = fail_mode
        self.dpid = datapath_id(name)
        self.table = FlowTable(control, ports, flow_counts, rule_of)
        self.stopping = threading.Event()
        self.tls = tls
        self.sessions = [Session(self, *parse_controller(c)) for c in controllers]
        if any(s.scheme == "ssl" for s in self.sessions) and tls is None:
            raise ConfigError("an ssl: controller needs the TLS context (--private-key, --certificate, "
                              "--ca-cert)")
        self.generation: int | None = None
        self.errors = 0
        self.flow_mods = 0
        self.started = time.monotonic()
        self._timer: threading.Thread | None = None
        self._up: queue.Queue[bytes] = queue.Queue(maxsize=4096)  # PACKET_INs waiting to be sent
        self._sender: threading.Thread | None = None
        self.packet_ins = 0
        self.packet_ins_dropped = 0
        self.packet_outs = 0

    def log(self, text: str) -> None:
        try:
            self._log(text)
        except Exception:
            print(text, file=sys.stderr)

    def start(self) -> None:
        for s in self.sessions:
            s.start()
        self._timer = threading.Thread(target=self._tick, name="onvm-of-timer", daemon=True)
        self._timer.start()
        self._sender = threading.Thread(target=self._send_up, name="onvm-of-packet-in", daemon=True)
        self._sender.start()

    def stop(self) -> None:
        self.stopping.set()
        for s in self.sessions:
            s.close()
        for s in self.sessions:
            s.join(timeout=3)
        for t in (self._timer, self._sender):
            if t:
                t.join(timeout=3)

    def describe(self) -> dict[str, Any]:
        # Called under the manager's lock: the table's lock would invert the order
        # FLOW_MODs take them in (table, then manager).  A length needs no lock.
        flows = len(self.table.flows)
        return {"datapath_id": f"{self.dpid:016x}", "fail_mode": self.fail_mode, "flows": flows,
                "flow_mods": self.flow_mods, "errors": self.errors, "packet_ins": self.packet_ins,
                "packet_ins_dropped": self.packet_ins_dropped, "packet_outs": self.packet_outs,
                "controllers": [{"target": s.target, "connected": s.connected.is_set(),
                                 "connects": s.connects, "role": ROLE_NAMES.get(s.role, "?"),
                                 "tls_failures": s.tls_failures}
                                for s in self.sessions]}

    # ---- table changes ---------------------------------------------------------
    def flow_mod(self, msg: Any) -> None:
        with self.table.lock:
            removed = self.table.flow_mod(msg)
            self.flow_mods += 1
        self._notify_removed(removed)

    def _notify_removed(self, removed: list[tuple[OFFlow, int]]) -> None:
        for fl, reason in removed:
            if not fl.flags & ofp.OFPFF_SEND_FLOW_REM:
                continue
            data = wire.flow_removed(cookie=fl.cookie, priority=fl.priority, reason=reason,
                                     duration=time.monotonic() - fl.installed, idle=fl.idle, hard=fl.hard,
                                     packets=fl.base_packets, byte_count=fl.base_bytes, match=fl.of_match)
            for s in self.sessions:
                if s.connected.is_set() and s.role != ofp.OFPCR_ROLE_SLAVE:
                    try:
                        s.send(data)
                    except OSError:
                        pass

    def _tick(self) -> None:
        while not self.stopping.wait(TIMER_INTERVAL):
            try:
                with self.table.lock:
                    gone = self.table.expired()
                self._notify_removed(gone)
            except Exception as e:  # the manager may be stopping under us
                if not self.stopping.is_set():
                    self.log(f"OpenFlow: timeout check failed: {e}")

    # ---- packets to and from controllers ----------------------------------------
    def packet_in(self, data: bytes, in_port: int, total_len: int) -> bool:
        """Queue a PACKET_IN (called by the manager for packet_io; never blocks)."""
        fields = packet_fields(data, in_port)
        reason, cookie = ofp.OFPR_NO_MATCH, 0xFFFFFFFFFFFFFFFF
        f = self.table.match_packet(fields) if fields is not None else None
        if f is not None:
            miss = f.priority == 0 and f.match == Match()
            reason, cookie = (ofp.OFPR_NO_MATCH if miss else ofp.OFPR_ACTION), f.cookie
        msg = wire.packet_in(data=data, total_len=total_len, reason=reason, cookie=cookie,
                             in_port=of_port_of(in_port) if in_port < MAX_PORTS else ofp.OFPP_CONTROLLER)
        try:
            self._up.put_nowait(msg)
        except queue.Full:
            self.packet_ins_dropped += 1
            return False
        return True

    def _send_up(self) -> None:
        while not self.stopping.is_set():
            try:
                msg = self._up.get(timeout=0.2)
            except queue.Empty:
                continue
            sent = False
            for s in self.sessions:
                if s.connected.is_set() and s.role != ofp.OFPCR_ROLE_SLAVE:
                    try:
                        s.send(msg)
                        sent = True
                    except OSError:
                        pass
            if sent:
                self.packet_ins += 1
            else:
                self.packet_ins_dropped += 1

    def packet_out(self, in_port: int, ports: list[int], data: bytes) -> None:
        """Hand a controller's packet to packet_io, which injects it once per output."""
        outputs = []
        for p in ports:
            if SERVICE_PORT_BASE <= p < SERVICE_PORT_BASE + CONTROLLER_SERVICE:
                outputs.append((int(Action.TONF), p - SERVICE_PORT_BASE))
            elif 1 <= p <= MAX_PORTS and self.table.port_ok(p - 1):
                outputs.append((int(Action.OUT), p - 1))
            else:
                raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_PORT, f"port {p}")
        if not outputs or not data:
            return
        message = {"packet_out": base64.b64encode(data).decode(), "outputs": outputs}
        try:
            sent = self.control(ops.Send(message, service=CONTROLLER_SERVICE))
        except OnvmError as e:
            raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_EPERM, str(e)) from None
        if not sent["delivered"]:
            raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_EPERM, "no packet_io NF runs (service 63)")
        self.packet_outs += 1

    def session_lost(self) -> None:
        if self.fail_mode == "standalone" and not any(s.connected.is_set() for s in self.sessions):
            with self.table.lock:
                n = len(self.table.flows)
                self.table.clear()
            if n:
                self.log(f"OpenFlow: no controller (fail-mode standalone): {n} flows removed")

    def set_role(self, session: Session, role: int, gen: int) -> tuple[int, int]:
        if role not in (ofp.OFPCR_ROLE_NOCHANGE, ofp.OFPCR_ROLE_EQUAL, ofp.OFPCR_ROLE_MASTER,
                        ofp.OFPCR_ROLE_SLAVE):
            raise OFError(ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_BAD_ROLE)
        if role in (ofp.OFPCR_ROLE_MASTER, ofp.OFPCR_ROLE_SLAVE):
            if self.generation is not None and ((gen - self.generation) & (1 << 64) - 1) >= 1 << 63:
                raise OFError(ofp.OFPET_ROLE_REQUEST_FAILED, ofp.OFPRRFC_STALE)
            self.generation = gen
        if role == ofp.OFPCR_ROLE_MASTER:
            for s in self.sessions:
                if s is not session and s.role == ofp.OFPCR_ROLE_MASTER:
                    s.role = ofp.OFPCR_ROLE_SLAVE
        if role != ofp.OFPCR_ROLE_NOCHANGE:
            session.role = role
        return session.role, self.generation or 0

    # ---- multipart -----------------------------------------------------------
    def _ports(self) -> list[tuple[int, str, bool, dict[str, int]]]:
        """(OpenFlow port, name, up, counters) of the manager's ports and of the services."""
        st = self.control(ops.Status())
        out = []
        for p in st["ports"]:
            counts = {"rx": p["rx"], "tx": p["tx"], "rx_bytes": p["rx_bytes"], "tx_bytes": p["tx_bytes"],
                      "tx_dropped": sum(p["drops"].values())}
            out.append((of_port_of(p["id"]), f"p{p['id']}-{p['kind']}", True, counts))
        up = {n["service"] for n in st["nfs"] if n["state"] == "running"}
        svc_rx: dict[int, list[int]] = {}
        for n in st["nfs"]:
            acc = svc_rx.setdefault(n["service"], [0, 0])
            acc[0] += n["rx"]
            acc[1] += n["tx"]
        for svc in range(MAX_SERVICES):
            rx, tx = svc_rx.get(svc, [0, 0])
            # Seen from the switch, packets sent into a service are its port's TX.
            out.append((service_port(svc), f"svc{svc}", svc in up, {"tx": rx, "rx": tx}))
        return out

    def multipart(self, xid: int, mp_type: int, body: bytes) -> list[bytes]:
        items: list[bytes]
        if mp_type == ofp.OFPMP_DESC:
            items = [wire.desc_body("pyonvm", "pyonvm shared-memory NFV manager", onvm_version,
                                    self.name, f"manager {self.name}")]
        elif mp_type == ofp.OFPMP_PORT_DESC:
            items = [wire.port_body(no, (self.dpid + no).to_bytes(8, "big")[2:], name, up)
                     for no, name, up, _ in self._ports()]
        elif mp_type == ofp.OFPMP_PORT_STATS:
            want = wire.parse_port_stats_request(body)
            dur = time.monotonic() - self.started
            items = [wire.port_stats_body(no, st, dur) for no, _, _, st in self._ports()
                     if want in (no, ofp.OFPP_ANY)]
        elif mp_type in (ofp.OFPMP_FLOW, ofp.OFPMP_AGGREGATE):
            req = wire.parse_flow_stats_request(body)
            match = match_from_of(list(req["match"].items()))
            with self.table.lock:
                flows = [] if req["table_id"] not in (0, ofp.OFPTT_ALL) else self.table._selected(
                    match, 0, False, req["cookie"], req["cookie_mask"], req["out_port"])
                if flows:
                    self.table.poll()
                now = time.monotonic()
                stats = [(f, *self.table.stats_of(f)) for f in flows]
            if mp_type == ofp.OFPMP_AGGREGATE:
                items = [wire.aggregate_body(sum(s[1] for s in stats), sum(s[2] for s in stats), len(stats))]
            else:
                items = [wire.flow_stats_body(priority=f.priority, cookie=f.cookie, idle=f.idle, hard=f.hard,
                                              flags=f.flags, duration=now - f.installed, packets=p,
                                              byte_count=b, match=f.of_match, instructions=f.instructions)
                         for f, p, b in stats]
        elif mp_type == ofp.OFPMP_TABLE:
            with self.table.lock:
                items = [wire.table_stats_body(len(self.table.flows), 0, 0)]
        else:
            raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_MULTIPART)
        return wire.multipart_replies(xid, mp_type, items)


def packet_fields(data: bytes, in_port: int) -> PacketFields | None:
    """What the rules look at in a frame, read by the native parser as the RX path reads it
    (None if it is not IPv4 or IPv6)."""
    key = _native.packet_key(data, in_port)
    if key is None:
        return None
    ipver, src, dst, proto, sport, dport, port, vlan = key
    return PacketFields(ipver, src, dst, proto, sport, dport, port, vlan - 1 if vlan else None)


__all__ = ["OpenFlowAgent", "parse_controller", "datapath_id", "FlowTable", "OFFlow", "parser"]
