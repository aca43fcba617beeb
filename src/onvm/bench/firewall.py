"""``firewall``: the firewall NF with 1,000 prefix rules, and the same logic over dpkt and scapy.

The native scenario loops speed_tester's packets through ``onvm nf firewall``
with 1,000 prefix rules (``--handler batch|packet``).  The references run the
same decision (parse the frame, take the IPv4 source, find the first matching
rule) in this process, parsing each frame with dpkt or scapy instead of the
native views, after the NFs have stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from typing import Any

from onvm.bench._scenario import Option, Scenario
from onvm.bench.pipeline import WARMUP, deployment, nf_rate, start_pipeline

RULES = 1000
SERVICE = 2


def write_rules(tmp: str) -> None:
    """rules.json: 1,000 random prefixes (none covering 10.0.0.0/8) that drop; the rest loops back."""
    rng = random.Random(1)
    rules: list[dict[str, str]] = []
    while len(rules) < RULES:
        length = rng.randint(8, 32)
        net = rng.getrandbits(32) & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF)
        if net >> 24 == 10:
            continue
        rules.append({"prefix": f"{net >> 24}.{net >> 16 & 255}.{net >> 8 & 255}.{net & 255}/{length}",
                      "action": "drop"})
    with open(os.path.join(tmp, "rules.json"), "w", encoding="utf-8") as f:
        json.dump({"default": f"tonf:{SERVICE}", "rules": rules}, f)


def _frames() -> list[bytes]:
    from onvm.nfs.speed_tester import udp_packet

    base = bytearray(udp_packet(64))
    out = []
    for i in range(256):
        b = bytearray(base)
        b[26:30] = bytes([10, 0, i >> 8 & 255, i & 255])
        out.append(bytes(b))
    return out


def _rate(fn: Any, frames: list[bytes], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for f in frames:
            fn(f)
        n += len(frames)
    return n / (time.perf_counter() - t0) / 1e6


def references(tmp: str, seconds: float = 1.0) -> dict[str, Any]:
    """dpkt_mpps and scapy_mpps for the same rules (None when the library is missing)."""
    from onvm.nfs.firewall import Rules

    with open(os.path.join(tmp, "rules.json"), encoding="utf-8") as f:
        rules = Rules(json.load(f))
    lookup = rules.table._t.lookup
    acts = rules.actions.tolist()
    frames = _frames()
    out: dict[str, Any] = {"dpkt_mpps": None, "scapy_mpps": None}
    try:
        import dpkt  # type: ignore[import-untyped]

        def with_dpkt(buf: bytes) -> int:
            ip = dpkt.ethernet.Ethernet(buf).data
            if not isinstance(ip, dpkt.ip.IP):
                return int(acts[-1])
            return int(acts[lookup(int.from_bytes(ip.src, "big"))])

        out["dpkt_mpps"] = round(_rate(with_dpkt, frames, seconds), 4)
    except ImportError:
        pass
    try:
        from scapy.layers.inet import IP
        from scapy.layers.l2 import Ether

        def with_scapy(buf: bytes) -> int:
            p = Ether(buf)
            if IP not in p:
                return int(acts[-1])
            a, b, c, d = (int(x) for x in p[IP].src.split("."))
            return int(acts[lookup(a << 24 | b << 16 | c << 8 | d)])

        out["scapy_mpps"] = round(_rate(with_scapy, frames, seconds), 4)
    except ImportError:
        pass
    return out


def run(seconds: float, verbose: bool, handler: str = "batch") -> dict[str, Any]:
    """The firewall NF's rate with ``handler``, then the dpkt and scapy references."""
    tmp = tempfile.mkdtemp(prefix="onvm-bench-")
    try:
        write_rules(tmp)
        dep = deployment(verbose=verbose)
        try:
            svc, rules = str(SERVICE), os.path.join(tmp, "rules.json")
            start_pipeline(dep, [["speed_tester", "--service", "1", "--dest", svc, "--report", "0"],
                                 ["firewall", "--service", svc, "--rules", rules, "--handler", handler]])
            time.sleep(WARMUP)
            result = {**nf_rate(dep, seconds, "firewall"), "handler": handler}
        finally:
            dep.stop()
        return {**result, **references(tmp)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SCENARIOS = [
    Scenario("firewall", "firewall with 1,000 prefix rules looping speed_tester's packets; also dpkt_mpps "
             "and scapy_mpps: the same decision parsing with dpkt and scapy in one process", key="mpps",
             target=">= 8 Mpps", run=run,
             options=(Option("--handler", "batch", "the firewall's handler kind",
                             choices=("batch", "packet")),)),
]
