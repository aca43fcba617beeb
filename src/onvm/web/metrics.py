"""Prometheus text exposition (format 0.0.4) of a sample, written by hand.

No client library is needed at run time: the format is a few lines per
metric.  Latency histograms use the power-of-two buckets of the packet path,
whose edges are exact bucket boundaries there (1.024 us to 8.6 s).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from onvm.latency import LOG2_BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LE_MIN = 10  # 2^10 ns, about 1 us: the first edge shown


def _esc(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(d: dict[str, Any]) -> str:
    if not d:
        return ""
    return "{" + ",".join(f'{k}="{_esc(v)}"' for k, v in d.items()) + "}"


def _num(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


class _Out:
    """Collects samples per family: the format wants each family's lines together."""

    def __init__(self) -> None:
        self.fams: dict[str, list[str]] = {}

    def family(self, name: str, kind: str, help_: str) -> list[str]:
        if name not in self.fams:
            self.fams[name] = [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
        return self.fams[name]

    def add(self, name: str, kind: str, help_: str, labels: dict[str, Any], value: float,
            suffix: str = "") -> None:
        full = name + suffix  # a counter's family is named with its _total, as the format wants
        self.family(full, kind, help_).append(f"{full}{_labels(labels)} {_num(value)}")

    def histogram(self, name: str, help_: str, labels: dict[str, Any], lat: dict[str, Any]) -> None:
        lines = self.family(name, "histogram", help_)
        log2 = lat.get("log2") or [0] * LOG2_BUCKETS
        below = sum(log2[:_LE_MIN])
        for k in range(_LE_MIN, LOG2_BUCKETS):
            le = repr((1 << k) / 1e9)
            lines.append(f"{name}_bucket{_labels({**labels, 'le': le})} {below}")
            below += log2[k]
        lines.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {lat.get('count', 0)}")
        lines.append(f"{name}_sum{_labels(labels)} {_num(lat.get('sum_ns', 0) / 1e9)}")
        lines.append(f"{name}_count{_labels(labels)} {lat.get('count', 0)}")

    def text(self) -> str:
        return "".join(line + "\n" for lines in self.fams.values() for line in lines)


def _drops(out: _Out, name: str, help_: str, labels: dict[str, Any], drops: dict[str, int]) -> None:
    out.family(name + "_total", "counter", help_)
    for reason, v in sorted(drops.items()):
        out.add(name, "counter", help_, {**labels, "reason": reason}, v, "_total")


def render(sample: dict[str, Any]) -> str:
    """The metrics of one sample (see Sampler) as exposition text."""
    st = sample["status"]
    out = _Out()
    m = st["manager"]
    out.add("onvm_up", "gauge", "1 while the manager runs", {"manager": m["name"]}, 1)
    out.add("onvm_uptime_seconds", "gauge", "seconds since the manager started", {}, float(m["uptime"]))
    out.add("onvm_pool_free_slots", "gauge", "free packet slots", {}, st["pool"]["free"])
    out.add("onvm_pool_slots", "gauge", "packet slots in the pool", {}, st["pool"]["total"])
    out.add("onvm_pool_lent_slots", "gauge", "packet slots lent to the ports' devices", {},
            st["pool"].get("lent", 0))
    for p in st["ports"]:
        lab = {"port": p["id"], "kind": p["kind"]}
        out.add("onvm_port_rx_packets", "counter", "packets received on the port", lab, p["rx"], "_total")
        out.add("onvm_port_rx_bytes", "counter", "bytes received on the port", lab, p["rx_bytes"], "_total")
        out.add("onvm_port_tx_packets", "counter", "packets sent on the port", lab, p["tx"], "_total")
        out.add("onvm_port_tx_bytes", "counter", "bytes sent on the port", lab, p["tx_bytes"], "_total")
    for p in st["ports"]:
        _drops(out, "onvm_port_drops", "packets dropped at the port, by reason",
               {"port": p["id"]}, p["drops"])
    for w in st.get("workers", []):
        lab = {"worker": w["id"], "role": w["role"]}
        out.add("onvm_worker_packets", "counter", "packets the manager's worker handled (RX: read from "
                "its ports; TX: taken from the NFs' TX rings)", lab, w["packets"], "_total")
        out.add("onvm_worker_busy_seconds", "counter", "time the worker spent on bursts", lab,
                w["busy_ns"] / 1e9, "_total")
    for n in st["nfs"]:
        lab = {"nf": n["id"], "name": n["name"], "service": n["service"], "instance": n["instance"]}
        out.add("onvm_nf_busy_seconds", "counter", "time the NF spent on bursts", lab,
                n.get("busy_ns", 0) / 1e9, "_total")
        out.add("onvm_nf_rx_packets", "counter", "packets the NF received", lab, n["rx"], "_total")
        out.add("onvm_nf_tx_packets", "counter", "packets the NF handed onward", lab, n["tx"], "_total")
        out.add("onvm_nf_rx_ring_entries", "gauge", "packets waiting in the NF's RX ring", lab, n["rx_ring"])
        out.add("onvm_nf_tx_ring_entries", "gauge", "packets waiting in the NF's TX ring", lab, n["tx_ring"])
    for n in st["nfs"]:
        lab = {"nf": n["id"], "name": n["name"]}
        for action, v in n["actions"].items():
            out.add("onvm_nf_actions", "counter", "actions the NF's packets took", {**lab, "action": action},
                    v, "_total")
    for n in st["nfs"]:
        _drops(out, "onvm_nf_drops", "packets the NF dropped, by reason",
               {"nf": n["id"], "name": n["name"]}, n["drops"])
    for n in st["nfs"]:
        lab = {"nf": n["id"], "name": n["name"]}
        out.add("onvm_nf_early_drops", "counter", "packets dropped at RX, before any NF, because this NF "
                "was congested", lab, n.get("early", 0), "_total")
        out.add("onvm_nf_late_drops", "counter", "packets this NF handled that were then dropped (the next "
                "ring full or gone)", lab, n.get("late", 0), "_total")
        out.add("onvm_nf_blocked", "counter", "times the NF stopped taking packets because a ring it "
                "feeds was congested", lab, n.get("blocked", 0), "_total")
        out.add("onvm_nf_rx_congested", "gauge", "1 while the NF's RX ring is past its high watermark",
                lab, int(bool(n.get("rx_congested"))))
    for c in st.get("chains", []):
        for hop, d in enumerate(c.get("drops", [])):
            lab = {"chain": c["name"], "hop": hop}
            out.add("onvm_chain_hop_early_drops", "counter", "packets dropped at RX because the chain hop "
                    "was congested or had no instance", lab, d["early"], "_total")
            out.add("onvm_chain_hop_late_drops", "counter", "packets dropped after the chain hop's NF "
                    "handled them", lab, d["late"], "_total")
    for s in sample.get("services", []):
        lab = {"service": s["id"]}
        out.add("onvm_service_instances", "gauge", "NF instances of the service", lab, len(s["instances"]))
        out.add("onvm_service_rx_packets", "counter", "packets the service's instances received",
                lab, s["rx"], "_total")
        out.add("onvm_service_tx_packets", "counter", "packets the service's instances handed onward",
                lab, s["tx"], "_total")
        out.add("onvm_service_drops", "counter", "packets the service's instances dropped",
                lab, s["drops"], "_total")
    for n in st["nfs"]:
        out.histogram("onvm_nf_latency_seconds", "time from RX to the end of the NF's handler",
                      {"nf": n["id"], "name": n["name"], "service": n["service"]}, n["latency"])
    for p in st["ports"]:
        if p["latency"]["count"] or p["kind"] in ("null", "pcap-out"):
            out.histogram("onvm_port_latency_seconds", "end to end: time from RX to leaving by the port",
                          {"port": p["id"]}, p["latency"])
    return out.text()


def names(text: str) -> Iterable[str]:
    """Metric family names in exposition text (for quick checks)."""
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            yield line.split()[2]
