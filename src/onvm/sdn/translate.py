"""OpenFlow matches and actions in terms of the manager's rules and chains.

Port numbering (what a controller sees in PORT_DESC):

================  ==============================================================
OpenFlow port     meaning
================  ==============================================================
1..16             the manager's port N-1 (``--port`` order; port 0 is OpenFlow 1)
1000 + S          service S as a logical port (1000..1062): an output to it
                  sends the packet into that service (TONF)
CONTROLLER        service 63, where the packet_io NF sends packets up as
                  PACKET_IN (port 1063 is the same service)
================  ==============================================================

A flow's actions become a chain: its outputs, in order.  Outputs to service
ports are hops through those services; the last output may be a manager port,
which ends the chain (``out:N``); no output at all drops.  So
``output:1001, output:1002, output:3`` is the chain ``1,2,out:2``.

Matches become rules: ``in_port``, ``vlan_vid``, ``eth_type`` (IPv4 or IPv6),
``ip_proto``, ``ipv4_src``/``ipv4_dst``/``ipv6_src``/``ipv6_dst`` (prefix masks)
and exact ``tcp``/``udp``/``sctp`` ports.  Other fields are refused with a
BAD_MATCH error, as are actions other than OUTPUT (BAD_ACTION).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp

from onvm.constants import MAX_HOPS, MAX_PORTS, MAX_SERVICES, Action
from onvm.flows.chain import Hop
from onvm.flows.rules import ANY, Rule
from onvm.sdn import CONTROLLER_SERVICE
from onvm.sdn.wire import OFError

SERVICE_PORT_BASE = 1000


def of_port_of(port: int) -> int:
    return port + 1


def service_port(service: int) -> int:
    return SERVICE_PORT_BASE + service


@dataclass(frozen=True)
class Match:
    """A match in the rule's terms; compared and ordered like OpenFlow's."""

    in_port: int = ANY
    vlan: int = ANY
    ipver: int = 0
    proto: int = 0
    src: Any = None
    dst: Any = None
    sport: int | None = None
    dport: int | None = None

    def rule(self, chain: str, priority: int) -> Rule:
        src = self.src
        if self.proto and self.ipver and src is None and self.dst is None:
            # A rule's text names one protocol ("tcp", IPv4 or IPv6); a /0 prefix keeps the version.
            src = ipaddress.ip_network("0.0.0.0/0" if self.ipver == 4 else "::/0")
        return Rule(chain=chain, priority=priority, proto=self.proto, ipver=self.ipver, src=src,
                    dst=self.dst, sport=(self.sport, self.sport) if self.sport is not None else (0, 65535),
                    dport=(self.dport, self.dport) if self.dport is not None else (0, 65535),
                    in_port=self.in_port, vlan=self.vlan)

    def covers(self, other: Match) -> bool:
        """True if every packet ``other`` matches, this matches too (OpenFlow's non-strict match)."""
        for a, b in ((self.in_port, other.in_port), (self.vlan, other.vlan)):
            if a != ANY and a != b:
                return False
        for a, b in ((self.ipver, other.ipver), (self.proto, other.proto)):
            if a and a != b:
                return False
        for pa, pb in ((self.sport, other.sport), (self.dport, other.dport)):
            if pa is not None and pa != pb:
                return False
        for na, nb in ((self.src, other.src), (self.dst, other.dst)):
            if na is not None and (nb is None or nb.version != na.version or not nb.subnet_of(na)):
                return False
        return True


def _bad_match(code: int, text: str) -> OFError:
    return OFError(ofp.OFPET_BAD_MATCH, code, text)


def _prefix(value: Any, version: int) -> Any:
    addr, mask = value if isinstance(value, tuple) else (value, None)
    try:
        if mask is None:
            return ipaddress.ip_network(addr)
        net = ipaddress.ip_network(f"{addr}/{mask}", strict=False)
    except ValueError:
        raise _bad_match(ofp.OFPBMC_BAD_WILDCARDS, f"{addr}/{mask} is not a prefix") from None
    if net.version != version:
        raise _bad_match(ofp.OFPBMC_BAD_VALUE, f"{addr} is not IPv{version}")
    return net


def match_from_of(fields: list[tuple[str, Any]]) -> Match:
    """Translate an os-ken OFPMatch's ``items()``; raises OFError for what rules cannot express."""
    f = dict(fields)
    out: dict[str, Any] = {}
    eth = f.pop("eth_type", None)
    if eth is not None:
        if eth == 0x0800:
            out["ipver"] = 4
        elif eth == 0x86DD:
            out["ipver"] = 6
        else:
            raise _bad_match(ofp.OFPBMC_BAD_VALUE, f"eth_type {eth:#x}: only IPv4 and IPv6 are classified")
    if "in_port" in f:
        port = f.pop("in_port")
        if not 1 <= port <= MAX_PORTS:
            raise _bad_match(ofp.OFPBMC_BAD_VALUE, f"in_port {port} is not a manager port")
        out["in_port"] = port - 1
    if "vlan_vid" in f:
        vid = f.pop("vlan_vid")
        if isinstance(vid, tuple) or not vid & ofp.OFPVID_PRESENT:
            raise _bad_match(ofp.OFPBMC_BAD_VALUE, "vlan_vid: only an exact, present VLAN id")
        out["vlan"] = vid & 0xFFF
    if "ip_proto" in f:
        if eth is None:
            raise _bad_match(ofp.OFPBMC_BAD_PREREQ, "ip_proto needs eth_type")
        out["proto"] = f.pop("ip_proto")
    for name, key, ver in (("ipv4_src", "src", 4), ("ipv4_dst", "dst", 4), ("ipv6_src", "src", 6),
                           ("ipv6_dst", "dst", 6)):
        if name in f:
            if out.get("ipver") != ver:
                raise _bad_match(ofp.OFPBMC_BAD_PREREQ, f"{name} needs eth_type for IPv{ver}")
            out[key] = _prefix(f.pop(name), ver)
    l4 = ((6, ("tcp_src", "tcp_dst")), (17, ("udp_src", "udp_dst")), (132, ("sctp_src", "sctp_dst")))
    for proto, names in l4:
        for name, key in zip(names, ("sport", "dport"), strict=True):
            if name in f:
                if out.get("proto") != proto:
                    raise _bad_match(ofp.OFPBMC_BAD_PREREQ, f"{name} needs ip_proto {proto}")
                value = f.pop(name)
                if isinstance(value, tuple):
                    raise _bad_match(ofp.OFPBMC_BAD_WILDCARDS, f"{name}: ports match exactly")
                out[key] = value
    if f:
        raise _bad_match(ofp.OFPBMC_BAD_FIELD, f"unsupported match field(s): {', '.join(sorted(f))}")
    return Match(**out)


def hops_from_of(instructions: list[Any], port_ok: Any) -> list[Hop]:
    """Translate a FLOW_MOD's instructions into chain hops (see the module docstring)."""
    outputs: list[int] = []
    seen_actions = False
    for ins in instructions:
        if ins.type == ofp.OFPIT_CLEAR_ACTIONS:
            continue
        if ins.type not in (ofp.OFPIT_APPLY_ACTIONS, ofp.OFPIT_WRITE_ACTIONS):
            raise OFError(ofp.OFPET_BAD_INSTRUCTION, ofp.OFPBIC_UNSUP_INST, f"instruction type {ins.type}")
        if seen_actions:
            raise OFError(ofp.OFPET_BAD_INSTRUCTION, ofp.OFPBIC_UNSUP_INST, "one action list per flow")
        seen_actions = True
        for act in ins.actions:
            if act.type != ofp.OFPAT_OUTPUT:
                raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_TYPE, f"action type {act.type}")
            outputs.append(act.port)
    if not outputs:
        return [Hop(Action.DROP)]
    if len(outputs) > MAX_HOPS:
        raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_TOO_MANY, f"at most {MAX_HOPS} outputs")
    hops = []
    for i, port in enumerate(outputs):
        last = i == len(outputs) - 1
        if SERVICE_PORT_BASE <= port < SERVICE_PORT_BASE + MAX_SERVICES or port == ofp.OFPP_CONTROLLER:
            svc = CONTROLLER_SERVICE if port == ofp.OFPP_CONTROLLER else port - SERVICE_PORT_BASE
            if svc == CONTROLLER_SERVICE and not last:
                raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_UNSUPPORTED_ORDER,
                              "an output to the controller ends the chain")
            hops.append(Hop(Action.TONF, svc))
        elif 1 <= port <= MAX_PORTS and port_ok(port - 1):
            if not last:
                raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_UNSUPPORTED_ORDER,
                              "an output to a manager port ends the chain")
            hops.append(Hop(Action.OUT, port - 1))
        else:
            raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_PORT, f"port {port} is not an output")
    return hops


def outputs_of(hops: list[Hop]) -> list[int]:
    """The OpenFlow output ports a chain stands for (the inverse of hops_from_of)."""
    out = []
    for h in hops:
        if h.action == Action.TONF and h.dest == CONTROLLER_SERVICE:
            out.append(ofp.OFPP_CONTROLLER)
        elif h.action == Action.TONF:
            out.append(service_port(h.dest))
        elif h.action == Action.OUT:
            out.append(of_port_of(h.dest))
    return out


def chain_name(hops: list[Hop]) -> str:
    """A stable chain name for a list of hops (at most 23 characters)."""
    text = "-".join(str(h).replace(":", "") for h in hops)
    name = f"of-{text}"
    if len(name) > 23:
        import hashlib

        name = "of-h" + hashlib.sha1(text.encode()).hexdigest()[:12]
    return name
