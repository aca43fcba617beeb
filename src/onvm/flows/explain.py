"""What the manager would do with a flow now, and why (``onvm flow explain``).

Theory of operation
-------------------
RX decides a packet's chain in this order (``_native/flowtable.c``): an
explicit exact entry for its flow (``onvm flow add``, an NF's steer) wins;
otherwise the rules, tried by priority (high first) and age (old first), and
the first that matches names the chain; otherwise the input port's default
chain, or the default chain.  A cached entry (a rule's or the default's
answer, kept for the flow) gives the same answer as the rules while they do
not change; when they do, the next packet is decided again.  So the answer
is the explicit entry, else what the rules say now.

Each hop of the chain is then a service, a port or a drop.  For a service,
the instance is the policy's: with ``hash`` (rendezvous over the instances,
by the packet's symmetric flow hash) and ``least-loaded`` the region's
service table answers now; ``round-robin`` takes turns, so no one instance
is the flow's; with ``local`` it is the one paired with the RX worker that
reads the packet, which the flow key alone does not say.

:func:`explain` decides from a :class:`Situation` (what the manager holds:
rules in order, chains, port defaults, the flow's exact entry, and per
service its instances and pick) without I/O; the manager gathers the
situation.  :func:`frame_of` makes the packet RX would see for a key, so the
flow hash and the key are the parser's own.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from onvm import _native
from onvm.constants import Action
from onvm.flows.chain import Hop
from onvm.flows.keys import FlowKey
from onvm.flows.rules import PacketFields, Rule, rule_mismatch

__all__ = ["Instance", "ServiceView", "Situation", "explain", "frame_of", "render"]

SHOWN_MISSES = 20  # rules above the match listed with why they missed; the rest are counted
EXPLICIT_ORIGINS = ("nf", "api")  # entries that win over the rules (the others cache their answer)


@dataclass(frozen=True)
class Instance:
    """One instance of a service."""

    nf_id: int
    instance: int
    name: str = ""


@dataclass(frozen=True)
class ServiceView:
    """A service as the packet path sees it now: its policy, instances and the one picked
    for the flow (None: the policy takes turns, or there is no instance)."""

    policy: str
    instances: Sequence[Instance] = ()
    pick: int | None = None


@dataclass
class Situation:
    """What the manager holds that decides a packet's path."""

    rules: Sequence[Rule]  # in the order they are tried
    chains: Mapping[int, tuple[str, Sequence[Hop]]]  # id -> (name, hops)
    port_chains: Mapping[int, int] = field(default_factory=dict)  # input port -> chain id
    entry: Mapping[str, Any] | None = None  # the flow's exact entry: chain, origin (a name), counters
    service: Callable[[int, int], ServiceView] = lambda svc, flow_hash: ServiceView("hash")
    # Where in ``rules`` the first rule that matches is, as the region's classifier answers
    # (-1: none), so that a large rule set is not walked; None: found here, by the reference.
    first: int | None = None


def frame_of(key: FlowKey) -> bytes:
    """An Ethernet frame of the flow ``key`` (untagged, or with its VLAN tag): what RX would parse."""
    eth = bytes.fromhex("020000000002020000000001")
    if key.vlan is not None:
        eth += struct.pack("!HH", 0x8100, key.vlan)
    if key.proto == 6:
        l4 = struct.pack("!HHIIBBHHH", key.sport, key.dport, 0, 0, 0x50, 0x02, 8192, 0, 0)
    elif key.proto in (17, 132):
        l4 = struct.pack("!HHHH", key.sport, key.dport, 8, 0)
    else:
        l4 = bytes(8)
    if key.src.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, key.proto, 0, key.src.packed,
                         key.dst.packed)
        return eth + b"\x08\x00" + ip + l4
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(l4), key.proto, 64, key.src.packed, key.dst.packed)
    return eth + b"\x86\xdd" + ip + l4


def packet_of(key: FlowKey) -> tuple[FlowKey, int]:
    """The key RX would take from the flow's packets (ports of a protocol without them are 0)
    and their flow hash."""
    frame = frame_of(key)
    native = _native.packet_key(frame, key.in_port)
    seen = FlowKey.from_native(native) if native is not None else key
    return seen, int(_native.parse(frame)["flow_hash"])


def fields_of(key: FlowKey) -> PacketFields:
    return PacketFields(key.src.version, key.src.packed, key.dst.packed, key.proto, key.sport, key.dport,
                        key.in_port, key.vlan)


def _hop(i: int, hop: Hop, flow_hash: int, s: Situation) -> dict[str, Any]:
    out: dict[str, Any] = {"hop": i}
    if hop.action == Action.OUT:
        out.update(action="out", port=hop.dest, what=f"out port {hop.dest}")
        return out
    if hop.action != Action.TONF:
        out.update(action="drop", what="drop")
        return out
    view = s.service(hop.dest, flow_hash)
    out.update(action="tonf", service=hop.dest, policy=view.policy,
               instances=[{"nf": i.nf_id, "instance": i.instance, "name": i.name} for i in view.instances])
    if not view.instances:
        out["what"] = f"service {hop.dest}: no instance runs (the packet is dropped: no_dest)"
    elif view.pick is None and view.policy == "local":
        pairs = ", ".join(f"RX worker {k}: NF {i.nf_id}" for k, i in enumerate(view.instances))
        out["what"] = (f"service {hop.dest}: local, the NF paired with the RX worker that read the packet "
                       f"({pairs}, and so on in turn); from an NF, by hash")
    elif view.pick is None:
        ids = ", ".join(str(i.nf_id) for i in view.instances)
        out["what"] = f"service {hop.dest}: {view.policy} takes turns among NFs {ids}"
    else:
        name = next((i.name for i in view.instances if i.nf_id == view.pick), "")
        out["nf"] = view.pick
        out["what"] = (f"service {hop.dest}: NF {view.pick}" + (f" ({name})" if name else "")
                       + f", picked by {view.policy} among {len(view.instances)}")
    return out


def explain(key: FlowKey, flow_hash: int, s: Situation) -> dict[str, Any]:
    """Where packets of ``key`` (with ``flow_hash``) go now, and why (see the module docstring)."""
    p = fields_of(key)
    out: dict[str, Any] = {"flow": str(key), "flow_hash": flow_hash, "entry": None, "rule": None,
                           "missed": [], "missed_total": 0}
    entry = s.entry
    if entry is not None:
        out["entry"] = {k: entry[k] for k in ("origin", "packets", "bytes", "age_s") if k in entry}
        out["entry"]["chain"] = s.chains.get(entry["chain"], (str(entry["chain"]), ()))[0]
    if entry is not None and entry.get("origin") in EXPLICIT_ORIGINS:
        chain = int(entry["chain"])
        out["decided_by"] = "flow entry"
        out["why"] = f"an exact flow entry (made by {'an NF' if entry['origin'] == 'nf' else 'the API'})"
    else:
        first = s.first if s.first is not None else next(
            (i for i, r in enumerate(s.rules) if rule_mismatch(r, p) is None), -1)
        hit = s.rules[first] if first >= 0 else None
        out["missed_total"] = first if first >= 0 else len(s.rules)  # every rule above the first match
        for rule in s.rules[: min(out["missed_total"], SHOWN_MISSES)]:
            why = rule_mismatch(rule, p)
            out["missed"].append({"id": rule.id, "priority": rule.priority, "rule": rule.to_text(),
                                  "why": why or "matches by the reference matcher, not by the classifier"})
        if hit is not None and rule_mismatch(hit, p) is not None:
            out["warning"] = (f"the classifier answers rule {hit.id}, which the reference matcher finds "
                              "does not match: packets follow the classifier")
        if hit is not None:
            chain = next((cid for cid, (name, _) in s.chains.items() if name == hit.chain), 0)
            out["decided_by"] = "rule"
            out["rule"] = {"id": hit.id, "priority": hit.priority, "rule": hit.to_text()}
            out["why"] = f"rule {hit.id} is the first that matches"
        elif key.in_port in s.port_chains:
            chain = s.port_chains[key.in_port]
            out["decided_by"] = "port default"
            out["why"] = f"no rule matches; input port {key.in_port} has a default chain"
        else:
            chain = 0
            out["decided_by"] = "default chain"
            out["why"] = "no rule matches and the input port has no default chain of its own"
        if entry is not None and entry["chain"] != chain:
            out["why"] += "; the flow's cached entry is out of date: its next packet is decided again"
    name, hops = s.chains.get(chain, (str(chain), ()))
    out["chain"] = name
    out["chain_id"] = chain
    out["hops"] = [_hop(i, h, flow_hash, s) for i, h in enumerate(hops)]
    return out


def render(e: dict[str, Any]) -> str:
    """``onvm flow explain``'s text."""
    lines = [f"flow {e['flow']} (flow hash {e['flow_hash']:#010x})"]
    if e["entry"] is not None:
        en = e["entry"]
        kind = "exact entry" if en["origin"] in EXPLICIT_ORIGINS else "cached entry (the rules' answer, kept)"
        lines.append(f"  {kind}: chain {en['chain']}, made by {en['origin']}, "
                     f"{en.get('packets', 0)} packets so far")
    for m in e["missed"]:
        lines.append(f"  rule {m['id']} '{m['rule']}': no ({m['why']})")
    more = e["missed_total"] - len(e["missed"])
    if more > 0:
        lines.append(f"  ... and {more} more rules above that do not match")
    if e["rule"] is not None:
        lines.append(f"  rule {e['rule']['id']} '{e['rule']['rule']}': matches")
    lines.append(f"  -> chain {e['chain']} ({e['decided_by']}: {e['why']})")
    for h in e["hops"]:
        lines.append(f"  hop {h['hop']}: {h['what']}")
    return "\n".join(lines)
