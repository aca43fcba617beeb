"""Port scenarios: ``pcap-replay`` and ``veth-bridge``.

``pcap-replay`` writes a pcap of 1M 64-byte frames (1024 flows), replays it in
a loop into a ``null`` port (the default chain is ``out:1``: the RX worker
hands each burst straight to the port) and counts the frames read per second.

``veth-bridge`` builds a testbed (namespaces A and B, veth links whose root
ends are the manager's AF_PACKET ports), sends 64-byte UDP frames from A for
``seconds`` with one sender (sendmmsg bursts with qdisc bypass, in C), and
counts what B's interface receives: first through pyonvm's ``bridge`` NF, then,
in the same run with the same sender, through a Linux bridge that joins the
same two links.  ``ratio`` is pyonvm's rate over the kernel's.  CPU use of the
manager, the NF, the sender and the whole machine (everyone's load) is reported
for each phase; ``ONVM_BENCH_ARGS`` adds manager options.
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
from onvm.bench._scenario import Scenario
from onvm.bench.pipeline import WARMUP, deployment

PCAP_PACKETS = 1 << 20
# A pool smaller than the rings: when the path is full, frames wait in (and are
# dropped by) the kernel's ring, before we spend any work on them.
VETH_MANAGER_ARGS = ["--burst", "256", "--pool-size", "2048"]


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


def send_and_count(tb: Any, frame: bytes, seconds: float) -> tuple[float, float]:
    """Sends from A for ``seconds``; returns (sender Mpps, Mpps that reached B's interface)."""
    import onvm

    pkg_dir = os.path.dirname(os.path.dirname(os.path.abspath(onvm.__file__)))  # where "import onvm" finds it
    env = dict(os.environ, PYTHONPATH=pkg_dir + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = ("import sys; from onvm import _hooks; "
            f"print(_hooks.afpacket_blast('eth0', bytes.fromhex('{frame.hex()}'), {seconds}))")
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


def veth_bridge(seconds: float, verbose: bool = False) -> dict[str, Any]:
    from onvm.testbed import Testbed

    tb = Testbed(f"vb{uuid.uuid4().hex[:6]}", "10.212.0")
    bridge = f"{tb.prefix}-br"
    try:
        tb.up()
        frame = udp_frame(mac_of(tb.ns("a"), "eth0"), mac_of(tb.ns("b"), "eth0"), tb.addr("a"), tb.addr("b"))
        dep = deployment(["--port", tb.ports[0], "--port", tb.ports[1], "--default-chain", "1",
                          *VETH_MANAGER_ARGS, *os.environ.get("ONVM_BENCH_ARGS", "").split()], verbose)
        try:
            dep.start_manager()
            dep.start_nf(["bridge", "--service", "1"])
            dep.wait_running(1)
            send_and_count(tb, frame, WARMUP)
            s0 = dep.status()
            meter = _CpuMeter({"manager": dep.procs[0].pid, "bridge_nf": dep.procs[1].pid})
            sent, mpps = send_and_count(tb, frame, seconds)
            cpu = meter.done()
            s1 = dep.status()
        finally:
            dep.stop()
        p0 = [s1["ports"][i]["drops"] for i in (0, 1)]
        d0 = [s0["ports"][i]["drops"] for i in (0, 1)]
        drops = {f"port{i}_{k}": v - d0[i].get(k, 0) for i in (0, 1) for k, v in p0[i].items()
                 if v - d0[i].get(k, 0)}
        nf = s1["nfs"][0]["drops"] if s1["nfs"] else {}
        # the same links joined by a kernel bridge instead
        for cmd in (["ip", "link", "add", bridge, "type", "bridge"],
                    ["ip", "link", "set", tb.port_if("a"), "master", bridge],
                    ["ip", "link", "set", tb.port_if("b"), "master", bridge],
                    ["ip", "link", "set", bridge, "up"]):
            subprocess.run(cmd, check=True, capture_output=True)
        send_and_count(tb, frame, WARMUP)
        meter = _CpuMeter({})
        kernel_sent, kernel_mpps = send_and_count(tb, frame, seconds)
        kernel_cpu = meter.done()
    finally:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        tb.down()
    return {"mpps": round(mpps, 3), "kernel_mpps": round(kernel_mpps, 3),
            "ratio": round(mpps / kernel_mpps, 3) if kernel_mpps else 0.0,
            "sender_mpps": round(sent, 3), "kernel_sender_mpps": round(kernel_sent, 3),
            "seconds": seconds, "frame_bytes": 64, "drops": drops, "nf_drops": nf,
            "cpu_percent": cpu, "kernel_cpu_percent": kernel_cpu,
            # CPU time per delivered frame, all our processes and the sender together: what each
            # path costs, whatever share of the (shared) machine it got
            "us_per_frame": round(sum(v for k, v in cpu.items() if k != "machine") / 100 / mpps, 3)
            if mpps else 0.0,
            "kernel_us_per_frame": round(kernel_cpu["sender"] / 100 / kernel_mpps, 3) if kernel_mpps else 0.0}


SCENARIOS = [
    Scenario("pcap-replay", "a pcap of 2^20 64-byte frames replayed in a loop into null (default chain "
             "out:1); frames read per second", key="mpps", target=">= 5 Mpps", run=pcap_replay),
    Scenario("veth-bridge", "64-byte UDP frames from namespace A to B through the bridge NF (AF_PACKET "
             "ports), then, in the same run with the same sender, through a Linux bridge joining the same "
             "links",
             key="ratio", target=">= 80 % of a Linux bridge", run=veth_bridge,
             show=lambda r: f"{r['mpps']:.2f} Mpps vs {r['kernel_mpps']:.2f} Mpps (ratio {r['ratio']:.2f})"),
]
