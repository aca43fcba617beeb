"""Traces: the next packets a filter takes, followed hop by hop (``onvm trace``).

Theory of operation
-------------------
Arming writes a filter and a count into the region (``_native/capture.c``):
the RX worker marks the next packets the filter takes and records how each
was classified; routing records an event for every marked packet it moves,
wherever that happens (RX, an NF, a TX worker).  :meth:`Traces.show` reads
the events that came since, groups them by packet (the RX time and the slot
name one packet while it is in the chain), and describes each hop in the
manager's words: which rule or flow entry chose the chain, which instance
took the packet, what each NF did with it, where it left or why it was
dropped.  :func:`describe` and :func:`render` need no region: they are tested
on made-up events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from onvm.constants import DROP_REASON_NAMES
from onvm.flows.rules import parse_filter

__all__ = ["Names", "Traces", "describe", "render"]

MAX_PACKETS = 10_000  # packets kept for show; count is capped at this
KIND_RX, KIND_HOP, KIND_DROP = 1, 2, 3
CLASSIFIED = {0: "default chain", 1: "flow entry", 2: "rule", 3: "not IP: default chain", 4: "injected"}
INJECTED = 4
ACTION_NAMES = {0: "drop", 1: "next", 2: "tonf", 3: "out"}
ACTION_NEXT = 1


@dataclass
class Names:
    """How the manager names what events hold by number."""

    rule: Callable[[int], str | None] = lambda slot: None  # rule slot -> its text
    chain: Callable[[int], str] = str  # chain id -> its name
    nf: Callable[[int], str] = str  # NF id -> its name


@dataclass
class _Packet:
    rx_ns: int
    slot: int
    events: list[dict[str, Any]] = field(default_factory=list)


def describe(events: Iterable[dict[str, Any]], names: Names) -> list[dict[str, Any]]:
    """Events (as the region gives them) grouped into packets, each described hop by hop."""
    packets: dict[tuple[int, int], _Packet] = {}
    for e in events:
        key = (e["rx_ns"], e["slot"])
        if e["kind"] == KIND_RX or key not in packets:
            packets[key] = _Packet(e["rx_ns"], e["slot"])  # a slot reused by a later packet starts afresh
        packets[key].events.append(e)
    out = []
    for n, p in enumerate(sorted(packets.values(), key=lambda p: (p.rx_ns, p.slot)), 1):
        hops: list[dict[str, Any]] = []
        desc: dict[str, Any] = {"packet": n, "rx_ns": p.rx_ns, "hops": hops, "end": "in flight"}
        for e in sorted(p.events, key=lambda e: (e["t_ns"], e["kind"] != KIND_RX)):
            injected = e["kind"] == KIND_RX and e["reason"] == INJECTED  # an NF made it: no port, no RX
            by = "RX" if e["kind"] == KIND_RX and not injected else f"NF {e['by']}" if e["by"] else "manager"
            hop: dict[str, Any] = {"by": by, "t_us": round(e["t_ns"] / 1000, 3),
                                   "chain": names.chain(e["chain"]), "hop": e["hop"]}
            if e["kind"] == KIND_RX:
                how = CLASSIFIED.get(e["reason"], "?")
                desc.update(len=e["len"], in_port=None if injected else e["nf"], flow_hash=e["flow_hash"],
                            classified=how, chain=names.chain(e["chain"]))
                hop["what"] = f"injected, {ACTION_NAMES.get(e['action'], '?')}" if injected \
                    else f"in port {e['nf']}, {how}"
                if e["rule"]:
                    text = names.rule(e["rule"] - 1)
                    desc["rule"] = text
                    made = " made by rule" if e["reason"] == 1 else ""
                    hop["what"] += f"{made} '{text}'" if text else f"{made} (slot {e['rule'] - 1})"
                if not injected or e["action"] == ACTION_NEXT:
                    hop["what"] += f" -> chain {names.chain(e['chain'])}"
            elif e["kind"] == KIND_DROP:
                reason = DROP_REASON_NAMES.get(e["reason"], str(e["reason"]))
                hop["what"] = f"drop ({reason})"
                hop["drop"] = reason
                desc["end"] = f"dropped by {by}: {reason}"
            else:
                action = ACTION_NAMES.get(e["action"], str(e["action"]))
                hop["action"], hop["dest"] = action, e["dest"]
                if action == "tonf":
                    hop["nf"] = e["nf"]
                    hop["what"] = f"to service {e['dest']}: NF {e['nf']} ({names.nf(e['nf'])})"
                else:
                    hop["what"] = f"out port {e['dest']}"
                    if by == "manager" or by == "RX":
                        desc["end"] = f"out port {e['dest']}"
            if by.startswith("NF "):
                hop["by"] = f"{by} ({names.nf(e['by'])})"
            hops.append(hop)
        out.append(desc)
    return out


def render(packets: list[dict[str, Any]], state: dict[str, Any]) -> str:
    """``onvm trace show``: one block per packet."""
    head = (f"trace: {len(packets)} packets, {state.get('remaining', 0)} still to take"
            + (f", {state['lost']} events lost (the event ring was full)" if state.get("lost") else ""))
    lines = [head]
    for p in packets:
        origin = "made by an NF" if p.get("classified") == "injected" else f"in port {p.get('in_port', '?')}"
        lines.append(f"packet {p['packet']}: {p.get('len', '?')} B, {origin}, "
                     f"{p.get('classified', '?')}, chain {p.get('chain', '?')}: {p['end']}")
        for h in p["hops"]:
            lines.append(f"  {h['t_us']:>10.3f} us  {h['by']:<24} hop {h['hop']:<2} {h['what']}")
    return "\n".join(lines)


class Traces:
    """The manager's trace (see the module docstring); one at a time."""

    def __init__(self, native: Any, names: Names) -> None:
        self.native = native
        self.names = names
        self.events: list[dict[str, Any]] = []
        self.filter = ""

    def add(self, count: int, text: str) -> dict[str, Any]:
        """Trace the next ``count`` packets ``text`` takes (replacing the trace before)."""
        rule = parse_filter(text)
        self.native.trace_arm(rule.match_fields(), min(count, MAX_PACKETS))
        self.events.clear()
        self.filter = text
        return {"armed": True, "count": min(count, MAX_PACKETS), "filter": text}

    def show(self) -> dict[str, Any]:
        self.events.extend(self.native.trace_read())
        del self.events[: max(0, len(self.events) - 16 * MAX_PACKETS)]
        state = self.native.trace_state()
        return {"filter": self.filter, "armed": bool(state["armed"]), "remaining": state["remaining"],
                "lost": state["lost"], "packets": describe(self.events, self.names)}

    def clear(self) -> dict[str, Any]:
        self.native.trace_arm({}, 0)
        self.native.trace_read()
        dropped = len(self.events)
        self.events.clear()
        return {"cleared": dropped}
