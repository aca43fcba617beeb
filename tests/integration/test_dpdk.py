"""dpdk: ports on DPDK's virtual devices (no NIC, no hugepages): packets through
chains byte-exact, memif with dpdk-testpmd as the peer, an NF killed under
traffic, clean stops, and the errors that start nothing.

They need the optional module onvm._dpdk (``make deps`` installs libdpdk-dev,
dpdk and dpdk-dev, and the build makes the module where pkg-config finds DPDK).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from onvm import _testpmd
from onvm.errors import ManagerNotRunning
from tests.integration.conftest import onvm, status, wait_for

try:
    from onvm import _dpdk
except ImportError:
    _dpdk = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(_dpdk is None or not os.path.isdir(_dpdk.PMD_DIR),
                                reason="onvm._dpdk not built or DPDK's PMDs missing: make deps, then make")


def _frames(n: int) -> list[bytes]:
    """UDP and TCP frames of many sizes, 60 to 1514 bytes, and a VLAN-tagged one among them."""
    from scapy.all import IP, TCP, UDP, Dot1Q, Ether, Raw

    out = []
    for i in range(n):
        size = 60 + (i * 97) % (1514 - 60 + 1)
        l2 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        if i % 50 == 7:
            l2 = l2 / Dot1Q(vlan=7)
        l4 = UDP(sport=1024 + i, dport=53) if i % 2 else TCP(sport=1024 + i, dport=80, flags="PA")
        p = l2 / IP(src=f"10.0.{i % 200}.1", dst="10.1.0.1") / l4
        out.append(bytes(p / Raw(bytes((i + k) & 0xFF for k in range(max(0, size - len(p)))))))
    return out


def _write_pcap(path: Path, frames: list[bytes]) -> None:
    from scapy.all import Ether, wrpcap

    wrpcap(str(path), [Ether(f) for f in frames])


def _read_pcap(path: Path) -> list[bytes]:
    from scapy.all import rdpcap

    return [bytes(p) for p in rdpcap(str(path))]


class Manager:
    """A manager process whose log is kept (the tests read its summary)."""

    def __init__(self, runtime: str, logs: Path, args: list[str]) -> None:
        self.name = f"t{uuid.uuid4().hex[:8]}"
        self.log = logs / f"{self.name}.log"
        self.nfs: list[subprocess.Popen[bytes]] = []
        with open(self.log, "wb") as f:
            argv = [sys.executable, "-m", "onvm.cli.main", "manager", "--name", self.name, "--stats", "0",
                    *args]
            self.proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
        sock = Path(runtime) / f"onvm-{self.name}.sock"
        wait_for(lambda: self.proc.poll() is not None or sock.exists(), timeout=20, what="the manager")
        assert self.proc.poll() is None, self.text()

    def nf(self, *argv: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-m", "onvm.cli.main", "nf", argv[0], "--name", self.name,
                              "--quiet", *argv[1:]])
        self.nfs.append(p)
        return p

    def running(self, count: int) -> None:
        wait_for(lambda: sum(n["state"] == "running" for n in status(self.name)["nfs"]) >= count,
                 timeout=15, what=f"{count} NFs running")

    def status(self) -> dict[str, Any]:
        return status(self.name)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=20)
        finally:
            for p in self.nfs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        return rc

    def text(self) -> str:
        return self.log.read_text()


@pytest.fixture
def manager(runtime: str, tmp_path: Path) -> Any:
    made: list[Manager] = []

    def start(*args: str) -> Manager:
        m = Manager(runtime, tmp_path, list(args))
        made.append(m)
        return m

    try:
        yield start
    finally:
        for m in made:
            m.stop()


def _summary_pool(text: str) -> tuple[int, int]:
    m = re.search(r"pool: (\d+) of (\d+) slots free", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


def test_pcap_in_and_out_byte_exact_through_a_chain(manager: Any, tmp_path: Path) -> None:
    frames = _frames(1200)
    _write_pcap(tmp_path / "in.pcap", frames)
    out = tmp_path / "out.pcap"
    m = manager("--port", f"dpdk:net_pcap0,rx_pcap={tmp_path / 'in.pcap'},tx_pcap={out}",
                "--default-chain", "1,2,out:0")
    m.nf("simple_forward", "--service", "1")
    m.nf("basic_monitor", "--service", "2", "--interval", "0")
    m.running(2)
    port = wait_for(lambda: (p := m.status()["ports"][0])["tx"] >= len(frames) and p, timeout=20,
                    what="every frame out")
    assert port["rx"] == len(frames) and port["tx"] == len(frames) and not port["drops"], port
    assert port["rx_bytes"] == port["tx_bytes"] == sum(map(len, frames))
    # the device's own counters, read ten times a second
    dev = wait_for(lambda: (d := m.status()["ports"][0]["device"])["opackets"] == len(frames) and d,
                   what="the device's counters")
    assert dev["ipackets"] == len(frames) and dev["ibytes"] == dev["obytes"] == sum(map(len, frames))
    assert m.stop() == 0
    assert _read_pcap(out) == frames
    assert _summary_pool(m.text()) == (16384, 16384)


def test_nf_killed_under_traffic_leaves_the_pool_whole(manager: Any) -> None:
    m = manager("--port", "dpdk:net_null0", "--port", "dpdk:net_null1?rxq=0", "--default-chain", "1,2,out:1",
                "--pool-size", "8192")
    victim = m.nf("simple_forward", "--service", "1")
    m.nf("simple_forward", "--service", "2")
    m.running(2)
    wait_for(lambda: m.status()["ports"][1]["tx"] > 100_000, timeout=15, what="traffic out of port 1")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=5)
    wait_for(lambda: all(n["service"] != 1 for n in m.status()["nfs"]), timeout=15,
             what="the dead NF retired")
    st = m.status()
    assert st["left"][-1]["state"] == "failed"
    # net_null keeps offering 64-byte frames; with service 1 gone the RX worker drops them as it reads
    # them, so in use is at most what it holds in hand, and nothing the dead NF held stays lost.  The
    # sweep that returns what it held under stamps it wrote over may be put off (a loaded machine, a
    # sanitizer build: the packet path not past a loop iteration in time) and run at the next audit.
    wait_for(lambda: m.status()["pool"]["in_use"] <= 2 * 64, timeout=10, what="the dead NF's slots back")
    for _ in range(20):
        pool = m.status()["pool"]
        assert pool["free"] + pool["lent"] + pool["in_use"] == pool["total"] == 8192
        assert 0 <= pool["lent"] <= 64 and pool["in_use"] <= 2 * 64, pool
        time.sleep(0.02)
    assert m.status()["ports"][0]["drops"].get("no_dest", 0) > 0
    assert m.stop() == 0
    assert _summary_pool(m.text()) == (8192, 8192)


def test_clean_stop_releases_every_device(manager: Any, runtime: str, tmp_path: Path) -> None:
    tap = f"dt{uuid.uuid4().hex[:8]}"
    sock = tmp_path / "memif.sock"
    out = tmp_path / "out.pcap"
    m = manager("--port", f"dpdk:net_tap0,iface={tap}", "--port", "dpdk:net_null0",
                "--port", f"dpdk:net_pcap0,tx_pcap={out}",
                "--port", f"dpdk:net_memif0,role=server,socket={sock},socket-abstract=no",
                "--default-chain", "1,out:2")
    m.nf("simple_forward", "--service", "1")
    m.running(1)
    wait_for(lambda: m.status()["ports"][2]["tx"] > 10_000, timeout=15, what="frames into the pcap file")
    assert os.path.exists(f"/sys/class/net/{tap}") and sock.exists()
    st = m.status()
    # The TAP device holds a buffer for each RX descriptor: slots lent to it, and only to it.
    assert st["ports"][0]["lent"] > 0 and st["ports"][3]["lent"] == 0
    assert st["pool"]["lent"] >= st["ports"][0]["lent"]
    prefix_dir = f"/var/run/dpdk/onvm-{m.name}" if os.getuid() == 0 else None
    assert m.stop(signal.SIGTERM) == 0
    assert not os.path.exists(f"/sys/class/net/{tap}")
    assert not sock.exists()
    assert os.listdir(runtime) == []  # region and socket removed
    assert prefix_dir is None or not os.path.exists(prefix_dir)
    frames = _read_pcap(out)  # flushed and whole
    assert sum(len(f) == 64 for f in frames) >= 10_000  # net_null's frames (and the TAP's own few)
    assert _summary_pool(m.text()) == (16384, 16384)


def _block_dpdk_and_run(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process where onvm._dpdk cannot be imported (a build without DPDK)."""
    code = ("import sys; sys.modules['onvm._dpdk'] = None\n"
            "from onvm.cli.main import main\n"
            f"sys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_missing_dpdk_is_one_clear_line_and_starts_nothing(runtime: str) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    r = _block_dpdk_and_run("manager", "--name", name, "--port", "dpdk:net_null0", "--port", "null")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "dpdk:net_null0" in lines[0] and "libdpdk-dev" in lines[0] and "built without DPDK" in lines[0]
    assert os.listdir(runtime) == []


@pytest.mark.parametrize("port, eal, expect", [
    ("dpdk:net_nul0", "", "DPDK cannot probe 'net_nul0'"),
    ("dpdk:net_null0,bogus=1", "", "DPDK cannot probe 'net_null0,bogus=1'"),
    ("dpdk:net_null0?rxq=4", "", "4 queues need as many RX workers"),
    ("dpdk:net_null0", "--bogus-option", "DPDK's EAL did not start"),
    ("dpdk:net null0", "", "expected dpdk:DEVICE"),
    ("dpdk:0000:99:00.0", "", "Cannot find device (0000:99:00.0)"),  # a PCI device that is not there
    ("dpdk:net_null0", "--no-huge -m 4", "give DPDK more memory"),  # 16384 mbuf headers need more than 4 MB
])
def test_bad_devargs_is_one_clear_line_and_starts_nothing(runtime: str, port: str, eal: str,
                                                            expect: str) -> None:
    name = f"t{uuid.uuid4().hex[:8]}"
    r = onvm("manager", "--name", name, "--port", port, f"--dpdk-eal={eal}", timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expect in lines[0], lines[0]
    assert os.listdir(runtime) == []
    assert not os.path.exists(f"/var/run/dpdk/onvm-{name}")


@pytest.mark.skipif(bool(_testpmd.available()), reason=_testpmd.available() or "testpmd")
@pytest.mark.parametrize("onvm_role", ["server", "client"])
def test_memif_with_testpmd_as_the_peer(manager: Any, tmp_path: Path, onvm_role: str) -> None:
    """testpmd sends a burst into memif; pyonvm forwards it through an NF back out of the same
    memif, testpmd forwards what comes back (io, one port looped), and so on: the burst circulates
    between the two data planes, and each side counts what the other sent."""
    sock = tmp_path / "memif.sock"
    peer_role = "client" if onvm_role == "server" else "server"
    memif = f"socket={sock},socket-abstract=no"
    tp = _testpmd.Testpmd([f"net_memif0,role={peer_role},{memif}"],
                          ["--forward-mode=io", "--port-topology=loop", "--nb-cores=1"])

    def start_onvm() -> Any:
        m = manager("--port", f"dpdk:net_memif0,role={onvm_role},{memif}", "--default-chain", "1,2,out:0")
        m.nf("simple_forward", "--service", "1")
        m.nf("simple_forward", "--service", "2")
        m.running(2)
        return m

    burst = 32  # tx_first: one burst from testpmd starts the loop
    # The server side first: a memif client connects when it starts.
    m = start_onvm() if onvm_role == "server" else None
    with tp:
        m = m or start_onvm()
        wait_for(tp.link_up, timeout=15, what="the memif link up")
        tp.command("start tx_first")
        # Many times round (how fast depends on the CPUs: testpmd's forwarding lcore spins on one of
        # the two, and the manager may have packed the pipeline onto it).
        wait_for(lambda: tp.counts()[0]["rx"] > 20 * burst, timeout=30, what="the burst going round")
        tp.command("stop")
        time.sleep(0.2)  # what was in flight lands
        peer = tp.counts()[0]
        port = m.status()["ports"][0]
    assert peer["rx"] > 20 * burst, (peer, port)  # packets came back
    # Both sides agree: what testpmd sent pyonvm received, and what pyonvm sent testpmd received,
    # save the packets in flight when testpmd stopped.
    assert 0 <= peer["tx"] - port["rx"] <= burst, (peer, port)
    assert 0 <= port["tx"] - peer["rx"] <= burst, (peer, port)
    assert not port["drops"], port
    assert m.stop() == 0
    assert _summary_pool(m.text()) == (16384, 16384)


def test_topology_file_with_dpdk_ports(runtime: str, tmp_path: Path) -> None:
    """manager.dpdk_eal reaches the EAL (a log level it knows), and dpdk: ports run under onvm run
    until it is stopped (however long the NF takes to start on a busy machine)."""
    name = f"t{uuid.uuid4().hex[:8]}"
    f = tmp_path / "t.yaml"
    f.write_text(f"manager:\n  name: {name}\n  stats: 0\n"
                 "  dpdk_eal: \"--log-level=*:notice\"\n"
                 "ports: ['dpdk:net_null0', 'dpdk:net_null1?rxq=0']\n"
                 "nfs:\n  - program: simple_forward\n    service: 1\n"
                 "chains:\n  default: [1, out:1]\n")
    run = subprocess.Popen([sys.executable, "-m", "onvm.cli.main", "run", str(f)], stderr=subprocess.PIPE,
                           text=True)
    try:
        def flowing() -> bool:
            assert run.poll() is None, run.communicate()[1]
            try:
                return bool(status(name)["ports"][1]["tx"] > 10_000)
            except ManagerNotRunning:
                return False
        wait_for(flowing, timeout=60, what="packets out of net_null1")
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    out = re.search(r"port 1 dpdk:net_null1\?rxq=0: in 0 pkts / 0 B, out (\d+) pkts", err)
    assert out and int(out.group(1)) > 10_000, err
    assert _summary_pool(err) == (16384, 16384)


@pytest.mark.skipif(bool(_testpmd.available()), reason=_testpmd.available() or "testpmd is here")
def test_bench_dpdk_runs_both_sides(runtime: str) -> None:
    """onvm bench dpdk, shortened: pyonvm (with and without the NF) and testpmd each
    forward frames between the null devices, and ratio is pyonvm's rate over testpmd's; the
    manager's pool and rings are the sizes asked for."""
    r = onvm("bench", "dpdk", "--seconds", "0.5", "--rounds", "1", "--pool-size", "8192",
             "--ring-size", "2048", "--json", timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["mpps"] > 0 and out["testpmd_mpps"] > 0 and out["direct_mpps"] > 0, out
    assert out["rounds_mpps"] == [out["mpps"]] and out["rounds_testpmd_mpps"] == [out["testpmd_mpps"]]
    assert out["ratio"] == pytest.approx(out["mpps"] / out["testpmd_mpps"], abs=1e-3)
    assert out["testpmd_total_mpps"] >= out["testpmd_mpps"]
    assert out["ns_per_packet"] > 0 and out["testpmd_ns_per_packet"] > 0 and out["direct_ns_per_packet"] > 0
    assert 0 <= out["nf_blocked_share"] <= 1.05 and out["pack_below"] is None, out  # a share of the time
    assert (out["pool_size"], out["ring_size"]) == (8192, 2048)


def test_one_rx_queue_per_rx_worker(manager: Any) -> None:
    """With two RX workers a device gets two RX queues, each polled by its own worker; what the
    NF forwards leaves through the other device, and the pool is whole once the manager stops."""
    m = manager("--rx-workers", "2", "--port", "dpdk:net_null0", "--port", "dpdk:net_null1?rxq=0",
                "--default-chain", "1,out:1", "--pool-size", "8192")
    m.nf("simple_forward", "--service", "1")
    m.running(1)
    port = wait_for(lambda: (p := m.status()["ports"][0])["rx"] > 100_000 and min(p["rx_by_worker"]) > 0
                    and p, timeout=20, what="both RX queues read")
    assert len(port["rx_by_worker"]) == 2, port
    assert m.status()["ports"][1]["tx"] > 0
    assert m.stop() == 0
    assert _summary_pool(m.text()) == (8192, 8192)
