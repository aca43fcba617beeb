"""Overload: backpressure through a chain, gen's missed count, and producers released
when the NF they wait for dies (see README: Overload)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

from tests.integration.conftest import onvm, status, wait_for

# An NF whose cost per packet a message sets, in microseconds.
BURNER = textwrap.dedent('''
    import sys, time
    from onvm import NF

    nf = NF("burner", service=int(sys.argv[2]), manager=sys.argv[1], quiet=True)
    work = {"us": float(sys.argv[3]) if len(sys.argv) > 3 else 0.0}

    @nf.batch
    def handle(b):
        end = time.perf_counter() + work["us"] * 1e-6 * b.n
        while time.perf_counter() < end:
            pass

    @nf.message
    def on_message(nf, sender, data):
        work["us"] = float(data)

    nf.run()
''')


def start_burner(dep: Any, tmp_path: Any, service: int, us: float = 0.0) -> subprocess.Popen[bytes]:
    script = tmp_path / "burner.py"
    script.write_text(BURNER)
    p = subprocess.Popen([sys.executable, str(script), dep.name, str(service), str(us)])
    dep.procs.append(p)
    return p


def by_service(st: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {n["service"]: n for n in st["nfs"]}


def rate(name: str, what: Any, seconds: float = 1.0) -> float:
    """Packets per second of a counter read from the status, over a window."""
    a, t0 = what(status(name)), time.monotonic()
    time.sleep(seconds)
    return (what(status(name)) - a) / (time.monotonic() - t0)


def thread_cpu(pid: int, name: str) -> float:
    """CPU seconds of a named thread of a process."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as f:
            stat = f.read()
        if stat[stat.index("(") + 1:stat.rindex(")")] == name:
            fields = stat[stat.rindex(")") + 2:].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    raise AssertionError(f"no thread {name} in process {pid}")


def late_drops(st: dict[str, Any]) -> int:
    return sum(n["late"] for n in st["nfs"])


def test_a_slow_nf_in_the_middle_stops_the_chain_upstream_and_nothing_is_dropped_late(deploy, tmp_path):
    dep = deploy(["--port", "gen:mix=http,flows=64", "--port", "null", "--default-chain", "1,2,3,out:1",
                  "--ring-size", "1024"])
    dep.start_nf(["simple_forward", "--service", "1"])
    start_burner(dep, tmp_path, 2)
    dep.start_nf(["simple_forward", "--service", "3"])
    dep.wait_running(3)

    def delivered(st: dict[str, Any]) -> int:
        return int(st["ports"][1]["tx"])

    wait_for(lambda: delivered(status(dep.name)) > 10000, what="traffic through the chain")
    fast = rate(dep.name, delivered)
    # 100 us a packet: at most 10k packets/s through service 2.
    assert onvm("send", "100", "--service", "2", "--name", dep.name).returncode == 0
    wait_for(lambda: by_service(status(dep.name))[1]["blocked"] > 0, what="NF 1 to stop for service 2")
    slow = rate(dep.name, delivered, 2.0)
    st = status(dep.name)
    assert slow < 20000 < fast, (slow, fast)
    # Upstream stopped: the gen port was left unread rather than read and dropped.
    port_in = rate(dep.name, lambda s: int(s["ports"][0]["rx"]))
    assert port_in < 20000, f"the port was still read at {port_in:.0f}/s with the chain at {slow:.0f}/s"
    assert late_drops(st) == 0 and all(not n["drops"] for n in st["nfs"]), st["nfs"]
    assert not st["ports"][0]["drops"], st["ports"][0]
    # The slow NF speeds up: the chain goes back to its full rate.
    assert onvm("send", "0", "--service", "2", "--name", dep.name).returncode == 0
    wait_for(lambda: rate(dep.name, delivered, 0.5) > 0.5 * fast, timeout=15, what="the chain to resume")
    st = status(dep.name)
    assert late_drops(st) == 0 and not st["ports"][0]["drops"]


def test_packets_of_a_congested_chain_are_dropped_at_rx_and_the_other_chains_go_on(deploy, tmp_path):
    # One port, two chains: a rule sends 4 of its 8 flows to chain slow, whose NF takes 200 us a packet.
    dep = deploy(["--port", "gen:size=64,flows=8,rate=200k", "--port", "null", "--default-chain", "1,out:1",
                  "--chain", "slow=2,out:1", "--rule", "udp src 10.0.0.0/30 -> chain slow"])
    dep.start_nf(["simple_forward", "--service", "1"])
    start_burner(dep, tmp_path, 2, us=200)
    dep.wait_running(2)

    def fast_nf(st: dict[str, Any]) -> int:
        return int(by_service(st)[1]["rx"])

    wait_for(lambda: by_service(status(dep.name))[2]["early"] > 1000, what="early drops for chain slow")
    assert rate(dep.name, fast_nf) > 50000  # half of 200k: the default chain keeps its share
    st = status(dep.name)
    slow = next(c for c in st["chains"] if c["name"] == "slow")
    assert slow["drops"][0]["early"] > 1000 and st["ports"][0]["drops"].get("early", 0) > 1000
    assert late_drops(st) == 0


def test_a_paced_gen_port_counts_what_it_could_not_deliver_as_missed(deploy, tmp_path):
    asked = 6_000_000  # 2 s at 3 Mpps against an NF that takes 5k packets/s
    dep = deploy(["--port", f"gen:size=64,flows=8,rate=3M,count={asked}", "--port", "null",
                  "--default-chain", "1,out:1", "--ring-size", "1024"])
    start_burner(dep, tmp_path, 1, us=200)
    dep.wait_running(1)
    mgr = status(dep.name)["manager"]["pid"]
    cpu0, t0 = thread_cpu(mgr, "onvm-rx0"), time.monotonic()
    st = wait_for(lambda: (s := status(dep.name))["ports"][0]["done"] and s, timeout=30,
                  what="the port to finish")
    rx_cpu = (thread_cpu(mgr, "onvm-rx0") - cpu0) / (time.monotonic() - t0)
    port = st["ports"][0]
    missed = port["drops"].get("missed", 0)
    assert port["rx"] + missed == asked, port
    assert missed > asked // 2 and port["rx"] > 0, port
    assert set(port["drops"]) == {"missed"}, port["drops"]
    assert late_drops(st) == 0
    # What was missed was never made: the RX worker idled while the port was held.
    assert rx_cpu < 0.25, f"the RX worker used {rx_cpu:.0%} of a CPU on a port it could not deliver"


def test_producers_waiting_for_an_nf_that_dies_are_released(deploy, tmp_path):
    dep = deploy(["--port", "gen:size=64,flows=1024,rate=200k", "--port", "null",
                  "--default-chain", "1,2,out:1", "--ring-size", "1024"])
    dep.start_nf(["simple_forward", "--service", "1"])
    a = start_burner(dep, tmp_path, 2)
    dep.wait_running(2)
    b = start_burner(dep, tmp_path, 2)
    dep.wait_running(3)
    nfs = status(dep.name)["nfs"]
    first = next(n for n in nfs if n["service"] == 1)
    ida = next(n["id"] for n in nfs if n["pid"] == a.pid)

    def nf1(st: dict[str, Any]) -> dict[str, Any]:
        return next(n for n in st["nfs"] if n["id"] == first["id"])

    os.kill(a.pid, signal.SIGSTOP)  # instance A stops draining: half the flows wait for it
    try:
        wait_for(lambda: nf1(status(dep.name))["blocked_on"] == ida, what="NF 1 to wait for instance A")
    finally:
        os.kill(a.pid, signal.SIGKILL)
    a.wait()
    # Released: NF 1 waits no more and the service's packets go to instance B.
    wait_for(lambda: nf1(status(dep.name))["blocked_on"] == 0, what="NF 1 to be released")
    wait_for(lambda: rate(dep.name, lambda s: int(s["ports"][1]["tx"]), 0.5) > 50000, timeout=15,
             what="traffic through the instance left")
    st = status(dep.name)
    assert [n["pid"] for n in st["nfs"] if n["service"] == 2] == [b.pid]
    assert nf1(st)["late"] < 1024, nf1(st)  # at most what was on its way when A died
    # The last instance dies: the chain has no service 2, and RX drops its packets early.
    b.kill()
    b.wait()
    wait_for(lambda: len(status(dep.name)["nfs"]) == 1, what="instance B to leave")
    # What NF 1's ring held when B died is dropped late, once NF 1 gets to it (a busy
    # machine may keep NF 1 away for a while); from then on nothing reaches NF 1.
    before = wait_for(lambda: (s := status(dep.name)) and nf1(s)["rx_ring"] == 0 and s,
                      what="NF 1 to drain its ring")
    time.sleep(1)
    after = status(dep.name)
    early = after["ports"][0]["drops"].get("no_dest", 0) - before["ports"][0]["drops"].get("no_dest", 0)
    assert early > 50000, after["ports"][0]
    assert nf1(after)["blocked_on"] == 0
    assert nf1(after)["late"] - nf1(before)["late"] == 0


def test_a_loop_of_congested_rings_keeps_moving(deploy):
    # Two NFs feeding each other, 2 x 700 packets in rings that congest at 512: both rings
    # can be past their high watermark at once, each NF waiting for the other.  Neither
    # may wait then (a loop of waits never ends), so the packets keep circling.
    dep = deploy(["--ring-size", "1024"])
    dep.start_nf(["speed_tester", "--service", "2", "--dest", "1", "--packets", "700", "--report", "0"])
    dep.wait_running(1)
    dep.start_nf(["speed_tester", "--service", "1", "--dest", "2", "--packets", "700", "--report", "0"])
    dep.wait_running(2)
    for _ in range(4):
        moved = rate(dep.name, lambda s: sum(n["rx"] for n in s["nfs"]), 0.5)
        assert moved > 10000, f"the loop stalled ({moved:.0f} packets/s): {status(dep.name)['nfs']}"


def test_a_running_port_changes_its_rate_at_once(deploy):
    """`onvm port rate` paces a running gen port anew: the new rate holds from the change
    on (a worker asleep until its next packet was due is woken), 'unpaced' lets it run
    free, nothing is missed on the way; a port that cannot be paced is refused by name."""
    dep = deploy(["--port", "gen:size=64,flows=8,rate=1", "--port", "null", "--default-chain", "out:1"])

    def sent(st: dict[str, Any]) -> int:
        return int(st["ports"][1]["tx"])

    def set_rate(pps: str) -> str:
        r = onvm("port", "rate", "0", pps, "--name", dep.name)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    wait_for(lambda: sent(status(dep.name)) >= 1, what="the first packet")
    assert set_rate("50k") == "port 0: 50000 packets/s"
    t0, n0 = time.monotonic(), sent(status(dep.name))
    wait_for(lambda: sent(status(dep.name)) - n0 >= 5000, timeout=2.0, what="50k packets/s at once")
    assert time.monotonic() - t0 < 0.5  # not after the 1 s sleep the old rate set
    assert 35_000 < rate(dep.name, sent) < 65_000
    st = status(dep.name)["ports"][0]
    assert st["rate_pps"] == 50_000 and "missed" not in st["drops"], st

    def status_line() -> str:
        out = onvm("status", "--name", dep.name).stdout
        return next(line for line in out.splitlines() if line.strip().startswith("0 "))

    assert status_line().endswith("  rate 50000 packets/s"), status_line()
    assert set_rate("unpaced") == "port 0: unpaced"
    assert status_line().endswith("  unpaced"), status_line()
    assert rate(dep.name, sent, 0.5) > 500_000
    assert set_rate("2k") == "port 0: 2000 packets/s"
    assert 1_000 < rate(dep.name, sent) < 3_000
    assert "missed" not in status(dep.name)["ports"][0]["drops"]
    for args, said in ((("1", "1k"), "port 1 'null': cannot be paced: only gen ports"),
                       (("7", "1k"), "port 7: the manager has 2 ports"),
                       (("0", "fast"), "rate fast is not a number"),
                       (("0", "99G"), "rate 99G is out of range")):
        r = onvm("port", "rate", *args, "--name", dep.name)
        assert r.returncode != 0 and said in r.stderr, (args, r.stderr)
