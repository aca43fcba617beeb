"""Port scenarios: ``pcap-replay`` and ``veth-bridge``.

``pcap-replay`` writes a pcap of 1M 64-byte frames (1024 flows), replays it in
a loop into a ``null`` port (the default chain is ``out:1``: the RX worker
hands each burst straight to the port) and counts the frames read per second.

``veth-bridge`` builds a testbed (namespaces A and B, veth links whose root
ends are the manager's ports), sends 64-byte UDP frames from A for ``seconds``
with one sender, and counts what B's interface receives: through pyonvm's
``bridge`` NF on ``afxdp`` ports, on ``afpacket`` ports, and through a Linux
bridge joining the same two links, in turn, ``repeats`` times (see the theory
above ``veth_bridge``).  ``--port-kind`` picks the kind ``mpps`` and ``ratio``
(its rate over the kernel's) are about; ``afxdp_vs_afpacket`` compares the two
kinds.  CPU use of the manager, the NF, the sender and the whole machine
(everyone's load), and CPU per delivered frame, are reported for each path;
``ONVM_BENCH_ARGS`` adds manager options.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from onvm._proc import cpu_seconds
from onvm.bench._scenario import Option, Scenario
from onvm.bench.pipeline import WARMUP, deployment
from onvm.errors import ConfigError

PCAP_PACKETS = 1 << 20


def write_pcap(path: str, packets: int = PCAP_PACKETS, size: int = 64, flows: int = 1024) -> None:
    """A classic pcap of ``packets`` UDP/IPv4 frames of ``size`` bytes over ``flows`` flows."""
    import numpy as np

    head = bytes.fromhex("020000000002020000000001" "0800" "4500") + (size - 14).to_bytes(2, "big")
    head += bytes.fromhex("00004000" "4011" "0000" "0a000001" "0a010001" "04000050")
    head += (size - 34).to_bytes(2, "big") + b"\0\0"
    rec = np.zeros((packets, 16 + size), dtype=np.uint8)
    rec[:, 16:16 + len(head)] = np.frombuffer(head, dtype=np.uint8)
    lens = np.frombuffer(np.array([size, size], dtype="<u4").tobytes(), dtype=np.uint8)
    rec[:, 8:16] = lens
    flow = (np.arange(packets) % flows).astype(np.uint16)
    rec[:, 16 + 28] = 10
    rec[:, 16 + 30] = (flow >> 8).astype(np.uint8)  # vary the source address per flow
    rec[:, 16 + 31] = (flow & 0xFF).astype(np.uint8) + 1
    with open(path, "wb") as f:
        f.write(np.array([0xA1B2C3D4, 0x00040002, 0, 0, 65535, 1], dtype="<u4").tobytes())
        f.write(rec.tobytes())


def pcap_replay(seconds: float, verbose: bool = False) -> dict[str, Any]:
    tmpdir = tempfile.mkdtemp(prefix="onvm-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    path = os.path.join(tmpdir, "replay.pcap")
    try:
        write_pcap(path)
        dep = deployment(["--port", f"pcap:{path}?loop=0", "--port", "null", "--default-chain", "out:1",
                          "--no-wait", "--burst", "256"], verbose)
        try:
            dep.start_manager()
            time.sleep(WARMUP)
            t0, s0 = time.monotonic(), dep.status()["ports"]
            time.sleep(seconds)
            t1, s1 = time.monotonic(), dep.status()["ports"]
        finally:
            dep.stop()
        dt = t1 - t0
        n = s1[0]["rx"] - s0[0]["rx"]
        out = s1[1]["tx"] - s0[1]["tx"]
        return {"mpps": round(n / dt / 1e6, 3), "packets": n,
                "delivered": out, "seconds": round(dt, 3), "pcap_packets": PCAP_PACKETS,
                "frame_bytes": 64}
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# ---- veth-bridge -------------------------------------------------------------------

def rx_packets(ns: str, ifname: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", ifname], capture_output=True,
                         text=True, check=True).stdout
    return int(json.loads(out)[0]["stats64"]["rx"]["packets"])


def mac_of(ns: str, ifname: str) -> bytes:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", ifname], capture_output=True, text=True,
                         check=True).stdout
    return bytes.fromhex(json.loads(out)[0]["address"].replace(":", ""))


def udp_frame(src_mac: bytes, dst_mac: bytes, src: str, dst: str) -> bytes:
    def ip4(a: str) -> bytes:
        return bytes(int(x) for x in a.split("."))
    ip = bytearray(bytes.fromhex("4500002e00004000401100 00".replace(" ", "")) + ip4(src) + ip4(dst))
    s = sum(int.from_bytes(ip[i:i + 2], "big") for i in range(0, 20, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    ip[10:12] = (~s & 0xFFFF).to_bytes(2, "big")
    udp = bytes.fromhex("04000009001a0000")  # port 1024 -> 9 (discard), no checksum
    return dst_mac + src_mac + b"\x08\x00" + bytes(ip) + udp + bytes(18)  # 60 bytes: 64 with FCS


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(v) - v[3] - v[4]) / hz, sum(v) / hz


class _CpuMeter:
    """CPU use (percent of one core) of processes and of the machine over an interval."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.t0 = time.monotonic()
        self.c0 = {k: self._read(p) for k, p in pids.items()}
        self.m0 = _machine_busy()
        self.r0 = resource.getrusage(resource.RUSAGE_CHILDREN)

    @staticmethod
    def _read(pid: int) -> float:
        return cpu_seconds(pid) or 0.0

    def done(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        out = {k: round(100 * (self._read(p) - self.c0[k]) / dt, 1) for k, p in self.pids.items()}
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["sender"] = round(100 * (r1.ru_utime + r1.ru_stime - self.r0.ru_utime - self.r0.ru_stime) / dt, 1)
        m1 = _machine_busy()
        out["machine"] = round(100 * (m1[0] - self.m0[0]) / dt, 1)  # all cores, everyone's load
        return out


def send_and_count(tb: Any, frame: bytes, seconds: float, sender: str = "socket") -> tuple[float, float]:
    """Sends from A for ``seconds``; returns (sender Mpps, Mpps that reached B's interface)."""
    import onvm

    pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(onvm.__file__)))  # where "import onvm" finds it
    env = dict(os.environ, PYTHONPATH=pkg_dir + os.pathsep + os.environ.get("PYTHONPATH", ""))
    blast = "xdp_blast" if sender == "xdp" else "afpacket_blast"
    code = ("import sys; from onvm import _hooks; "
            f"print(_hooks.{blast}('eth0', bytes.fromhex('{frame.hex()}'), {seconds}))")
    before = rx_packets(tb.ns("b"), "eth0")
    t0 = time.monotonic()
    r = subprocess.run(tb.exec_argv("a", sys.executable, "-c", code), capture_output=True, text=True,
                       env=env, timeout=seconds + 30)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"the sender failed: {r.stderr.strip()}")
    time.sleep(0.3)  # what is in flight arrives
    got = rx_packets(tb.ns("b"), "eth0") - before
    sent = int(r.stdout.split()[-1])
    return sent / seconds / 1e6, got / min(dt, seconds + 0.2) / 1e6


# ---- veth-bridge: the scenario ----------------------------------------------------------
#
# Theory of operation: the same sender and the same links carry three paths in turn:
# pyonvm's bridge NF on afxdp ports, on afpacket ports, and a Linux bridge, alternated
# ``repeats`` times in one run, so that whatever else the (shared) machine does falls
# on all three alike; each figure is the median of its phases.  The frames go to a MAC
# that no host has: host B's stack drops them in ip_rcv, so the run measures the
# forwarding, not B's UDP and ICMP work (which falls on whoever transmits into B:
# pyonvm's TX worker, or the bridge in the sender's softirq).  Each frame is counted as
# it enters B's interface.  CPU per delivered frame is each process's CPU time over
# the frames delivered; the sender's includes the receive work of the port's link,
# which the kernel does in the sender's softirq.

SINK_MAC = bytes.fromhex("02000000000b")
PORT_KINDS = ("afxdp", "afpacket")
# The sender.  A socket (sendmmsg with qdisc bypass) makes each frame an skb of host A's
# stack; veth must then copy it into a page of its own before an XDP program may see it,
# work that a NIC's driver never does and that lands on the sender's CPU.  The XDP
# sender makes frames in the kernel as XDP frames (BPF_PROG_TEST_RUN with live frames)
# and redirects them out of A's eth0: the other end takes them into its NAPI the way a
# NIC's driver takes frames off the wire, before any skb.  GRO on the root ends gives
# them a NAPI in every phase.
SENDERS = ("xdp", "socket")
# Each path buffers about 16k frames while the manager waits for a CPU.  An AF_PACKET
# ring is memory of its own (16 blocks of 128 KiB hold about 16k small frames), so a
# small pool keeps the excess waiting (and dropped) there.  An AF_XDP port's buffers
# are pool slots lent to its fill ring: 16384 of them, from a pool of 65536.
KIND_ARGS = {"afpacket": ("", ["--pool-size", "2048"]),
             "afxdp": ("?ring=16384&fill=16384", ["--pool-size", "65536"])}


def _bridge(tb: Any, up: bool) -> None:
    br = f"{tb.prefix}-br"
    if not up:
        subprocess.run(["ip", "link", "del", br], capture_output=True)
        return
    for cmd in (["ip", "link", "add", br, "type", "bridge"],
                ["ip", "link", "set", tb.port_if("a"), "master", br],
                ["ip", "link", "set", tb.port_if("b"), "master", br],
                ["ip", "link", "set", br, "up"]):
        subprocess.run(cmd, check=True, capture_output=True)


def _phase(tb: Any, kind: str, frame: bytes, seconds: float, sender: str, verbose: bool) -> dict[str, Any]:
    """One run of one path: delivered Mpps, CPU of each process, CPU per delivered frame."""
    if kind == "kernel":
        _bridge(tb, True)
        try:
            send_and_count(tb, frame, WARMUP, sender)
            meter = _CpuMeter({})
            sent, mpps = send_and_count(tb, frame, seconds, sender)
            cpu = meter.done()
        finally:
            _bridge(tb, False)
        drops: dict[str, int] = {}
    else:
        query, args = KIND_ARGS[kind]
        ports = [f"{kind}:{tb.port_if(side)}{query}" for side in "ab"]
        dep = deployment(["--port", ports[0], "--port", ports[1], "--default-chain", "1", "--burst", "256",
                          *args, *os.environ.get("ONVM_BENCH_ARGS", "").split()], verbose)
        try:
            dep.start_manager()
            dep.start_nf(["bridge", "--service", "1"])
            dep.wait_running(1)
            send_and_count(tb, frame, WARMUP, sender)
            s0 = dep.status()
            meter = _CpuMeter({"manager": dep.procs[0].pid, "nf": dep.procs[1].pid})
            sent, mpps = send_and_count(tb, frame, seconds, sender)
            cpu = meter.done()
            s1 = dep.status()
        finally:
            dep.stop()
        drops = {f"port{i}_{k}": v - s0["ports"][i]["drops"].get(k, 0) for i in (0, 1)
                 for k, v in s1["ports"][i]["drops"].items() if v - s0["ports"][i]["drops"].get(k, 0)}
    per = {k: round(v / 100 / mpps, 3) for k, v in cpu.items() if k != "machine"} if mpps else {}
    per["total"] = round(sum(per.values()), 3)
    return {"mpps": mpps, "sent_mpps": sent, "cpu_percent": cpu, "us_per_frame": per, "drops": drops}


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def veth_bridge(seconds: float, verbose: bool = False, port_kind: str = "afxdp", sender: str = "xdp",
                repeats: int = 3) -> dict[str, Any]:
    from onvm import _native
    from onvm.testbed import Testbed

    kinds = [port_kind, *(k for k in PORT_KINDS if k != port_kind)]
    if not _native.HAVE_AFXDP:  # no libbpf either: the XDP sender is missing too
        sender = "socket"
        if port_kind == "afxdp":
            raise ConfigError("bench veth-bridge --port-kind afxdp: this build has no AF_XDP (apt-get "
                              "install libxdp-dev libbpf-dev, then rebuild)")
        kinds.remove("afxdp")
    tb = Testbed(f"vb{uuid.uuid4().hex[:6]}", "10.212.0")
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in [*kinds, "kernel"]}
    try:
        tb.up()
        if sender == "xdp":
            # veth takes XDP frames only into a NAPI: GRO on the root ends gives every path one
            for side in "ab":
                subprocess.run(["ethtool", "-K", tb.port_if(side), "gro", "on"], check=True,
                               capture_output=True)
        frame = udp_frame(mac_of(tb.ns("a"), "eth0"), SINK_MAC, tb.addr("a"), tb.addr("b"))
        for _ in range(repeats):
            for kind in runs:
                runs[kind].append(_phase(tb, kind, frame, seconds, sender, verbose))
    finally:
        _bridge(tb, False)
        tb.down()
    out: dict[str, Any] = {"port_kind": port_kind, "sender": sender, "repeats": repeats, "seconds": seconds,
                           "frame_bytes": 64}
    for kind, rs in runs.items():
        out[f"{kind}_mpps"] = round(_median([r["mpps"] for r in rs]), 3)
        out[f"{kind}_sender_mpps"] = round(_median([r["sent_mpps"] for r in rs]), 3)
        keys = rs[0]["us_per_frame"].keys()
        out[f"{kind}_us_per_frame"] = {k: round(_median([r["us_per_frame"].get(k, 0.0) for r in rs]), 3)
                                       for k in keys}
        out[f"{kind}_runs"] = [round(r["mpps"], 3) for r in rs]
        out[f"{kind}_drops"] = rs[-1]["drops"]
        out[f"{kind}_cpu_percent"] = rs[-1]["cpu_percent"]
    out["mpps"] = out[f"{port_kind}_mpps"]
    out["ratio"] = round(out["mpps"] / out["kernel_mpps"], 3) if out["kernel_mpps"] else 0.0
    if "afxdp" in runs and out["afpacket_mpps"]:
        out["afxdp_vs_afpacket"] = round(out["afxdp_mpps"] / out["afpacket_mpps"], 3)
    return out


SCENARIOS = [
    Scenario("pcap-replay", "a pcap of 2^20 64-byte frames replayed in a loop into null (default chain "
             "out:1); frames read per second", key="mpps", target=">= 5 Mpps", run=pcap_replay),
    Scenario("veth-bridge", "64-byte UDP frames from namespace A to B through the bridge NF on afxdp "
             "ports, on afpacket ports and through a Linux bridge joining the same links, in turn, with the "
             "same sender",
             key="ratio", target=">= 80 % of a Linux bridge; afxdp >= 1.3 x afpacket", run=veth_bridge,
             show=lambda r: (f"{r['mpps']:.2f} Mpps ({r['port_kind']}) vs {r['kernel_mpps']:.2f} Mpps (ratio "
                             f"{r['ratio']:.2f})" + (f"; afxdp/afpacket {r['afxdp_vs_afpacket']:.2f}"
                                                     if "afxdp_vs_afpacket" in r else "")),
             options=(Option("--port-kind", "afxdp", "the ports' kind that mpps and ratio are about",
                             choices=PORT_KINDS),
                      Option("--sender", "xdp", "xdp: XDP frames redirected out of A's eth0, which the "
                             "link's other end receives as a NIC's driver would, before any skb; socket: "
                             "sendmmsg, each frame an skb of A's stack", choices=SENDERS),
                      Option("--repeats", 3, "how many times each path runs (the figures are medians)"))),
]
