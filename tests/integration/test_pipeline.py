"""Manager and NFs as real processes over a real region."""

from __future__ import annotations

import json
import os
import signal
import time

from scapy.all import IP, UDP, Ether, rdpcap, wrpcap  # type: ignore[import-untyped]

from onvm._proc import cpu_seconds
from onvm.paths import socket_path
from tests.integration.conftest import onvm, pcap_records, status, wait_for

# Explicit addresses: scapy would otherwise look the destination MAC up on the network.
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"


def test_gen_through_chain_to_pcap(deploy, tmp_path):
    out = tmp_path / "out.pcap"
    # Rings larger than the whole burst: nothing can be dropped, however slow the machine; and
    # fewer packets than a paced port keeps while it is not read (4096): none can be missed.
    dep = deploy(["--port", "gen:size=128,flows=16,count=4000,rate=50k", "--port", f"pcap-out:{out}",
                  "--default-chain", "1,2,out:1", "--exit-when-done", "--ring-size", "8192"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.start_nf(["basic_monitor", "--service", "2", "--interval", "0"])
    mgr = dep.procs[0]
    assert mgr.wait(timeout=30) == 0
    pkts = rdpcap(str(out))
    assert len(pkts) == 4000
    assert all(len(p) == 124 and p.haslayer(UDP) for p in pkts)  # 128 B frames less the FCS
    assert len({(p[IP].src, p[UDP].sport) for p in pkts}) == 16


def test_pcap_replay_is_byte_exact(deploy, tmp_path):
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    sent = [Ether(src=MAC_A, dst=MAC_B) / IP(src=f"10.0.0.{i % 7}", dst="10.9.9.9")
            / UDP(sport=1000 + i, dport=53) / (b"x" * i) for i in range(300)]
    wrpcap(str(src), sent)
    dep = deploy(["--port", f"pcap:{src}?loop=2", "--port", f"pcap-out:{out}",
                  "--default-chain", "1,out:1", "--exit-when-done"])
    dep.start_nf(["simple_forward", "--service", "1"])
    assert dep.procs[0].wait(timeout=30) == 0
    got = [bytes(p) for p in rdpcap(str(out))]
    assert sorted(got) == sorted([bytes(p) for p in sent] * 2)


def test_status_and_stop_commands(deploy):
    dep = deploy(["--port", "gen:rate=10k", "--port", "null", "--default-chain", "1,out:1"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    r = onvm("status", "--name", dep.name, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["manager"]["name"] == dep.name
    assert [n["state"] for n in st["nfs"]] == ["running"]
    assert st["pool"]["total"] == 16384
    r = onvm("status", "--name", dep.name)
    assert "simple_forward" in r.stdout and "gen:rate=10k" in r.stdout
    r = onvm("stop", "--name", dep.name)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(socket_path(dep.name))  # it waited for the manager to stop
    assert dep.procs[0].wait(timeout=15) == 0
    assert dep.procs[1].wait(timeout=15) == 0


def test_stop_returns_once_the_manager_has_stopped(deploy):
    # A frozen NF holds the manager's stop for its NF wait (3 s): onvm stop waits that out too.
    dep = deploy(["--port", "null", "--default-chain", "1,out:0"])
    nf = dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    os.kill(nf.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = onvm("stop", "--name", dep.name)
        took = time.monotonic() - t0
    finally:
        os.kill(nf.pid, signal.SIGCONT)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(socket_path(dep.name)) and took > 2.5, took
    assert dep.procs[0].wait(timeout=15) == 0


def _pool(name):
    st = status(name)
    return st["pool"]["free"], st["pool"]["total"]


def test_sigkill_under_traffic_loses_no_slot(deploy):
    # Unpaced traffic through two NFs; the first is killed while packets are in its hands.
    dep = deploy(["--port", "gen:size=64,flows=256,count=3000000", "--port", "null",
                  "--default-chain", "1,2,out:1"])
    victim = dep.start_nf(["simple_forward", "--service", "1"])
    dep.start_nf(["simple_forward", "--service", "2"])
    wait_for(lambda: status(dep.name)["ports"][0]["rx"] > 200_000, what="traffic")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=5)
    # noticed at once: gone from the NF list, its slots back
    wait_for(lambda: all(n["service"] != 1 for n in status(dep.name)["nfs"]), timeout=2,
             what="the dead NF to be retired")
    st = status(dep.name)
    assert st["left"][-1]["state"] == "failed"
    wait_for(lambda: status(dep.name)["ports"][0]["done"], timeout=30, what="traffic to end")
    wait_for(lambda: _pool(dep.name)[0] == _pool(dep.name)[1], timeout=5, what="the pool to be whole")


def test_sigkill_speed_tester_returns_its_packets(deploy):
    dep = deploy([])
    st_proc = dep.start_nf(["speed_tester", "--service", "1", "--packets", "3000", "--report", "0"])
    dep.wait_running(1)
    wait_for(lambda: status(dep.name)["nfs"][0]["rx"] > 100_000, what="looping")
    free, total = _pool(dep.name)
    assert free == total - 3000
    st_proc.send_signal(signal.SIGKILL)
    st_proc.wait(timeout=5)
    wait_for(lambda: _pool(dep.name)[0] == total, timeout=2, what="the pool to be whole")


def test_nf_stops_cleanly_on_sigterm(deploy):
    dep = deploy(["--port", "gen:rate=50k", "--port", "null", "--default-chain", "1,out:1"])
    nf = dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    nf.send_signal(signal.SIGTERM)
    assert nf.wait(timeout=10) == 0
    wait_for(lambda: status(dep.name)["left"] and status(dep.name)["left"][-1]["state"] == "stopped",
             timeout=10, what="a clean stop")


def test_replicas_share_a_service_by_flow(deploy):
    dep = deploy(["--port", "gen:flows=512,rate=200k", "--port", "null", "--default-chain", "1,out:1"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(2)
    before = {n["id"]: n["rx"] for n in status(dep.name)["nfs"]}
    time.sleep(1.5)
    st = status(dep.name)
    got = [n["rx"] - before[n["id"]] for n in st["nfs"]]
    assert sum(got) > 100_000
    assert min(got) > 0.3 * sum(got)  # 512 flows spread over both instances
    assert sorted(n["instance"] for n in st["nfs"]) == [0, 1]


def test_idle_nfs_sleep(deploy):
    dep = deploy([])
    for svc in (1, 2, 3):
        dep.start_nf(["simple_forward", "--service", str(svc)])
    dep.wait_running(3)

    def cpu():
        return sum(cpu_seconds(p.pid) or 0.0 for p in dep.procs)

    c0, t0 = cpu(), time.monotonic()
    time.sleep(2)
    used = (cpu() - c0) / (time.monotonic() - t0)
    assert used < 0.10, f"idle system used {used:.0%} of a core"


def test_several_workers_account_for_every_packet(deploy, tmp_path):
    # Two inputs on two RX workers, two NFs drained by two TX workers, one output.
    out = tmp_path / "o.pcap"
    dep = deploy(["--port", "gen:count=20000,rate=100k,flows=8", "--port", "gen:count=20000,rate=100k",
                  "--port", f"pcap-out:{out}", "--default-chain", "1,out:2", "--rx-workers", "2",
                  "--tx-workers", "2", "--ring-size", "16384"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(2)

    def settled():
        st = status(dep.name)
        done = all(p["done"] for p in st["ports"][:2]) and st["pool"]["free"] == st["pool"]["total"]
        return done and st

    st = wait_for(settled, timeout=30, what="traffic to end and the pool to be whole")
    ports, nfs = st["ports"], st["nfs"]
    # A paced port that could not deliver (a busy machine kept its worker away) counts missed.
    assert [p["rx"] + p["drops"].get("missed", 0) for p in ports[:2]] == [20000, 20000]
    dropped = sum(sum(x["drops"].values()) for x in ports + nfs)
    assert ports[2]["tx"] + dropped == 40000
    assert ports[2]["tx"] > 0  # how many got through depends on the machine, not on the code
    dep.stop()
    assert len(pcap_records(out)) == ports[2]["tx"]


def test_region_and_socket_are_private(deploy, runtime):
    dep = deploy([])
    for f in os.listdir(runtime):
        if f.endswith((".region", ".sock")):
            assert os.stat(os.path.join(runtime, f)).st_mode & 0o777 == 0o600, f
    assert {f for f in os.listdir(runtime) if not f.endswith(".lock")} == {
        f"onvm-{dep.name}.region", f"onvm-{dep.name}.sock"}
