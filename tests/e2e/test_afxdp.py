"""afxdp ports end to end: hosts in network namespaces with the real Linux stack, on
both sides of a bump in the wire whose ports are AF_XDP sockets sharing the pool as
UMEM.  ARP, ping, HTTP and UDP both ways through bridge and a chain of three NFs;
two queues served by two RX workers; an NF killed under traffic with the pool whole
afterwards; the XDP program gone after a clean stop and after a killed manager;
what is refused (another program on the interface, a running manager, too little
locked memory), each with its message."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from onvm import _native
from onvm._proc import cpu_seconds
from onvm.control.client import Client
from onvm.errors import ManagerNotRunning
from onvm.testbed import Testbed
from tests.e2e.conftest import needs_root
from tests.e2e.test_wire import CHAINS, _http_transfer, _in_ns, _mac, _neighbor, _ping, _start, _udp_echo
from tests.integration.conftest import wait_for

pytestmark = [needs_root, pytest.mark.usefixtures("region_in_tmpfs"), pytest.mark.skipif(
    not _native.HAVE_AFXDP, reason="built without AF_XDP: apt-get install libxdp-dev libbpf-dev, rebuild")]

FOREIGN_PROG = "/usr/lib/x86_64-linux-gnu/bpf/xsk_def_xdp_prog.o"  # libxdp's own, from libxdp1


def _xdp_prog(ifname: str) -> str:
    """The name of the XDP program attached to an interface, '' when none."""
    out = subprocess.run(["ip", "-j", "link", "show", ifname], capture_output=True, text=True, check=True)
    return str(json.loads(out.stdout)[0].get("xdp", {}).get("prog", {}).get("name", ""))


def _balanced(st: dict[str, Any]) -> bool:
    """Nothing in flight: every slot is free or lent to a port, and the books add up."""
    pool = st["pool"]
    lent = sum(p["lent"] for p in st["ports"])
    return bool(pool["in_use"] == 0 and pool["lent"] == lent
                and pool["free"] + pool["lent"] + pool["in_use"] == pool["total"])


@pytest.fixture
def afxdp_testbed(make_testbed: Callable[..., Testbed]) -> Testbed:
    return make_testbed(kind="afxdp")


class Manager:
    """A manager run by hand, whose log lines the test reads."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None,
                 wrap: tuple[str, ...] = ()) -> None:
        self.name = name
        self.proc = subprocess.Popen([*wrap, sys.executable, "-m", "onvm.cli.main", "manager", "--name", name,
                                      "--stats", "0", *args], stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        self.nfs: list[subprocess.Popen[bytes]] = []

    def wait_up(self) -> Manager:
        def up() -> bool:
            assert self.proc.poll() is None, self.proc.communicate()[1]
            try:
                with Client(self.name) as c:
                    c.request("hello")
                return True
            except ManagerNotRunning:
                return False
        wait_for(up, timeout=30, what=f"manager {self.name}")
        return self

    def nf(self, *argv: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-m", "onvm.cli.main", "nf", argv[0], "--name", self.name,
                              "--quiet", *argv[1:]])
        self.nfs.append(p)
        return p

    def status(self) -> dict[str, Any]:
        with Client(self.name) as c:
            return c.request("status")

    def running(self, count: int) -> None:
        wait_for(lambda: sum(n["state"] == "running" for n in self.status()["nfs"]) >= count, timeout=30,
                 what="NFs")

    def stop(self) -> str:
        """SIGTERM, then its log (stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        for p in self.nfs:
            p.wait(timeout=10)
        return err

    def refused(self) -> str:
        """Waits for a manager that must not start; its log."""
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 1, err
        return err

    def kill(self) -> None:
        self.proc.kill()
        self.proc.communicate(timeout=10)
        for p in self.nfs:  # a dead manager takes its NFs with it
            p.wait(timeout=10)


@pytest.fixture
def managers(runtime: str) -> Iterator[Callable[..., Manager]]:
    made: list[Manager] = []

    def start(args: list[str], name: str | None = None, env: dict[str, str] | None = None,
              wrap: tuple[str, ...] = ()) -> Manager:
        m = Manager(name or f"t{uuid.uuid4().hex[:8]}", args, env, wrap)
        made.append(m)
        return m

    try:
        yield start
    finally:
        for m in made:
            if m.proc.poll() is None:
                m.stop()
            for p in m.nfs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


# ---- traffic through afxdp ports ----------------------------------------------------

@pytest.mark.parametrize("kind", sorted(CHAINS))
def test_bump_in_the_wire(kind: str, afxdp_testbed: Testbed, deploy: Any, tmp_path: Any) -> None:
    tb = afxdp_testbed
    chain, nfs = CHAINS[kind]
    dep = _start(deploy, tb, chain, nfs)
    assert _xdp_prog(tb.port_if("a")) == _xdp_prog(tb.port_if("b")) == "onvm_xsk"
    assert _neighbor(tb, "a", tb.addr("b")) == ""
    _ping(tb, "a", "b")
    assert _neighbor(tb, "a", tb.addr("b")) == _mac(tb, "b")  # ARP went through
    _ping(tb, "b", "a")
    _http_transfer(tb, "b", "a", tmp_path)
    _http_transfer(tb, "a", "b", tmp_path)
    _udp_echo(tb, "b", "a")
    _udp_echo(tb, "a", "b")
    st = dep.status()
    p0, p1 = st["ports"]
    assert p0["rx"] > 2000 and p1["rx"] > 2000
    assert p0["mode"] == p1["mode"] == "copy"  # veth offers no zero-copy
    assert p0["lent"] > 0 and p1["lent"] > 0  # the fill rings hold slots
    assert all(n["rx"] > 2000 for n in st["nfs"]), st["nfs"]
    wait_for(lambda: _balanced(dep.status()), timeout=30, what="the pool to balance")
    dep.stop()
    assert _xdp_prog(tb.port_if("a")) == _xdp_prog(tb.port_if("b")) == ""


def test_afpacket_in_afxdp_out_and_back(make_testbed: Callable[..., Testbed], deploy: Any) -> None:
    """Slots an AF_PACKET port filled leave through an XSK's TX ring, and the other way."""
    tb = make_testbed()
    dep = _start(deploy, tb, "1", [["bridge", "--service", "1"]],
                 ports=[tb.ports[0], f"afxdp:{tb.port_if('b')}"])
    _ping(tb, "a", "b")
    _udp_echo(tb, "a", "b")
    _udp_echo(tb, "b", "a")
    st = dep.status()
    assert [p["kind"] for p in st["ports"]] == ["afpacket", "afxdp"]
    assert st["ports"][1]["tx"] > 400 and st["ports"][0]["tx"] > 400


def test_generated_packets_leave_through_afxdp(afxdp_testbed: Testbed, deploy: Any) -> None:
    """A gen port's slots go straight onto the XSK's TX ring (default chain out:1)."""
    from onvm.bench.ports import rx_packets

    tb = afxdp_testbed
    before = rx_packets(tb.ns("a"), "eth0")
    dep = deploy(["--port", "gen:count=3000,rate=100k", "--port", f"afxdp:{tb.port_if('a')}",
                  "--default-chain", "out:1", "--no-wait"])
    wait_for(lambda: rx_packets(tb.ns("a"), "eth0") - before >= 3000, timeout=30,
             what="3000 frames at host A")
    # What host A sends meanwhile (IPv6 neighbour discovery, say) takes the default chain
    # out of the same port: it is sent back, beside the 3000 generated frames.
    wait_for(lambda: (p := dep.status()["ports"][1])["tx"] == 3000 + p["rx"], timeout=30,
             what="3000 generated frames and what host A sent, out of the afxdp port")
    assert not dep.status()["ports"][1]["drops"]
    wait_for(lambda: _balanced(dep.status()), timeout=30, what="completions back in the pool")


def test_generic_mode(afxdp_testbed: Testbed, deploy: Any) -> None:
    tb = afxdp_testbed
    dep = _start(deploy, tb, "1", [["bridge", "--service", "1"]],
                 ports=[f"{u}?mode=skb" for u in tb.ports])
    _ping(tb, "a", "b")
    assert [p["mode"] for p in dep.status()["ports"]] == ["skb", "skb"]


def test_topology_file_with_afxdp_ports(make_testbed: Callable[..., Testbed], tmp_path: Any) -> None:
    """afxdp ports with two queues each in a topology file: onvm run serves them with two RX
    workers, the bridge NF carries ARP and pings both ways, and once it stops the pool is
    whole and both interfaces are as they were."""
    from tests.integration.conftest import status

    tb = make_testbed(kind="afxdp", queues=2)
    name = f"t{uuid.uuid4().hex[:8]}"
    f = tmp_path / "bump.yaml"
    f.write_text(f"manager:\n  name: {name}\n  stats: 0\n  rx_workers: 2\n"
                 f"ports: ['{tb.ports[0]}', '{tb.ports[1]}']\n"
                 "nfs:\n  - program: bridge\n    service: 1\n"
                 "chains:\n  default: [1]\n")
    run = subprocess.Popen([sys.executable, "-m", "onvm.cli.main", "run", str(f)], stderr=subprocess.PIPE,
                           text=True)
    try:
        def bridge_running() -> bool:
            assert run.poll() is None, run.communicate()[1]
            try:
                return any(n["state"] == "running" for n in status(name)["nfs"])
            except ManagerNotRunning:
                return False
        wait_for(bridge_running, timeout=60, what="the topology's bridge NF")
        _ping(tb, "a", "b")
        _ping(tb, "b", "a")
        ports = status(name)["ports"]
        assert [(p["kind"], p["mode"]) for p in ports] == [("afxdp", "copy")] * 2, ports
        assert all(p["rx"] >= 6 and p["lent"] > 0 for p in ports), ports
        assert _xdp_prog(tb.port_if("a")) == _xdp_prog(tb.port_if("b")) == "onvm_xsk"
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    m = re.search(r"pool: (\d+) of (\d+) slots free", err)
    assert m and m.group(1) == m.group(2), err
    assert _xdp_prog(tb.port_if("a")) == _xdp_prog(tb.port_if("b")) == ""


def test_kernel_drops_are_counted(afxdp_testbed: Testbed, deploy: Any) -> None:
    """Input held (no NF yet): the socket's RX ring fills, and what the kernel drops for want
    of room shows in the port's drops as kernel; an idle port sleeps, and a frame wakes it."""
    from onvm.bench.ports import mac_of, send_and_count, udp_frame

    tb = afxdp_testbed
    dep = deploy(["--port", f"{tb.ports[0]}?ring=256", "--port", tb.ports[1], "--default-chain", "1"])
    frame = udp_frame(mac_of(tb.ns("a"), "eth0"), mac_of(tb.ns("b"), "eth0"), tb.addr("a"), tb.addr("b"))
    sent = send_and_count(tb, frame, 0.3)[0] * 0.3e6
    dep.start_nf(["bridge", "--service", "1"])
    dep.wait_running(1)
    port = wait_for(lambda: (p := dep.status()["ports"][0])["drops"].get("kernel") and p, timeout=30,
                    what="kernel drops on port 0")
    assert sent > 2000 and port["rx"] < 1000, (sent, port)  # the RX ring held 256 of them
    assert port["rx"] + port["drops"]["kernel"] <= sent + 100, (sent, port)
    cpu0 = cpu_seconds(dep.procs[0].pid) or 0.0
    time.sleep(2.0)
    assert (cpu_seconds(dep.procs[0].pid) or 0.0) - cpu0 < 0.2, "the idle manager spins"
    _ping(tb, "a", "b")

# ---- crashes --------------------------------------------------------------------------

def test_nf_killed_under_traffic_pool_whole(afxdp_testbed: Testbed, managers: Callable[..., Manager]) -> None:
    tb = afxdp_testbed
    m = managers(["--port", tb.ports[0], "--port", tb.ports[1], "--default-chain", "1"]).wait_up()
    victim = m.nf("bridge", "--service", "1")
    m.running(1)
    flood = subprocess.Popen(tb.exec_argv("a", sys.executable, "-c", (
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "end = time.time() + 60\n"
        "while time.time() < end:\n"
        f"    s.sendto(b'x' * 200, ('{tb.addr('b')}', 9))\n")))
    try:  # the flood lasts until the NF is gone, however slowly a busy machine runs this
        wait_for(lambda: m.status()["nfs"][0]["rx"] > 2000, timeout=30, what="traffic through the NF")
        victim.kill()
        victim.wait()
        wait_for(lambda: not m.status()["nfs"], timeout=30, what="the NF to be retired")
        assert flood.poll() is None, "the flood ended before the NF was killed"
    finally:
        flood.kill()
        flood.wait(timeout=30)
    wait_for(lambda: _balanced(m.status()), timeout=30, what="the pool to balance")
    st = m.status()
    assert st["left"][0]["state"] == "failed" and st["pool"]["lent"] > 0
    log = m.stop()
    # once the ports closed, what their rings held came back too
    total = st["pool"]["total"]
    assert f"pool: {total} of {total} slots free" in log, log


@pytest.mark.parametrize("attach", ["link", "netlink"])
def test_killed_manager_leaves_no_program(attach: str, afxdp_testbed: Testbed,
                                          managers: Callable[..., Manager]) -> None:
    """A BPF link goes with the process that holds it; a netlink attachment stays
    behind, and the next manager replaces it and says so.  Either way a clean stop
    leaves both interfaces without an XDP program."""
    tb = afxdp_testbed
    env = {"ONVM_XDP_NETLINK": "1"} if attach == "netlink" else {}
    args = ["--port", tb.ports[0], "--port", tb.ports[1], "--default-chain", "1"]
    name = f"t{uuid.uuid4().hex[:8]}"
    first = managers(args, name, env).wait_up()
    assert _xdp_prog(tb.port_if("a")) == "onvm_xsk"
    pid = first.proc.pid
    first.kill()
    ifs = (tb.port_if("a"), tb.port_if("b"))
    if attach == "link":
        wait_for(lambda: not any(_xdp_prog(i) for i in ifs), timeout=30,
                 what="the programs to go with the process")
    else:
        assert all(_xdp_prog(i) == "onvm_xsk" for i in ifs)  # stale, but passes everything
    second = managers(args, name, env).wait_up()
    second.nf("bridge", "--service", "1")
    second.running(1)
    _ping(tb, "a", "b")
    log = second.stop()
    assert all(_xdp_prog(i) == "" for i in ifs)
    replaced = [ln for ln in log.splitlines() if "replaced the XDP program" in ln]
    if attach == "netlink":
        assert len(replaced) == 2, log
        assert f"by manager '{name}' (pid {pid}, gone)" in replaced[0]
    else:
        assert not replaced, log


# ---- refusals -------------------------------------------------------------------------

def test_another_programs_interface_is_left_alone(afxdp_testbed: Testbed,
                                                  managers: Callable[..., Manager]) -> None:
    tb = afxdp_testbed
    b = tb.port_if("b")
    subprocess.run(["ip", "link", "set", "dev", b, "xdpgeneric", "obj", FOREIGN_PROG, "sec", "xdp"],
                   check=True, capture_output=True)
    try:
        m = managers(["--port", tb.ports[0], "--port", tb.ports[1]])
        err = m.refused()
        assert f"afxdp {b}: another application's XDP program 'xsk_def_prog'" in err, err
        assert _xdp_prog(b) == "xsk_def_prog"  # untouched
        assert _xdp_prog(tb.port_if("a")) == ""  # port 0 opened, then closed with the rest
    finally:
        subprocess.run(["ip", "link", "set", "dev", b, "xdpgeneric", "off"], capture_output=True)


def test_interface_of_a_running_manager_is_refused(afxdp_testbed: Testbed,
                                                   managers: Callable[..., Manager]) -> None:
    tb = afxdp_testbed
    first = managers(["--port", tb.ports[0], "--port", tb.ports[1], "--default-chain", "1"]).wait_up()
    second = managers(["--port", tb.ports[0]])
    err = second.refused()
    assert f"in use by manager '{first.name}' (pid {first.proc.pid}), which is running" in err, err
    first.nf("bridge", "--service", "1")
    first.running(1)
    _ping(tb, "a", "b")  # the first one is unharmed


@pytest.mark.parametrize("hard", ["1m", "as is"])
def test_locked_memory(hard: str, afxdp_testbed: Testbed, managers: Callable[..., Manager]) -> None:
    """Without CAP_IPC_LOCK the UMEM counts against RLIMIT_MEMLOCK: the manager raises
    the soft limit where the hard one allows, and otherwise says what it needs."""
    tb = afxdp_testbed
    now = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if hard != "1m" and now != resource.RLIM_INFINITY and now < 8 << 20:
        pytest.skip(f"the hard locked-memory limit here ({now >> 10} KiB) is below a 4 MiB UMEM")
    limit = f"--memlock=1048576:{1048576 if hard == '1m' else 'unlimited' if now < 0 else now}"
    m = managers(["--port", tb.ports[0], "--pool-size", "8192" if hard == "1m" else "2048"],
                 wrap=("setpriv", "--inh-caps=-ipc_lock", "--bounding-set=-ipc_lock", "prlimit", limit))
    if hard == "1m":
        err = m.refused()
        assert (f"afxdp {tb.port_if('a')}: registering the pool as UMEM locks 16384 KiB of memory; the "
                "locked-memory limit is 1024 KiB (hard limit 1024 KiB)") in err, err
        assert "CAP_IPC_LOCK" in err
    else:
        m.wait_up()
        assert m.status()["ports"][0]["mode"] == "copy"


def test_one_interface_twice_is_refused(afxdp_testbed: Testbed, managers: Callable[..., Manager]) -> None:
    err = managers(["--port", afxdp_testbed.ports[0], "--port", afxdp_testbed.ports[0]]).refused()
    assert f"afxdp {afxdp_testbed.port_if('a')}: the interface is a port of this manager already" in err, err
    assert _xdp_prog(afxdp_testbed.port_if("a")) == ""


def test_zero_copy_on_veth_is_refused(afxdp_testbed: Testbed, managers: Callable[..., Manager]) -> None:
    tb = afxdp_testbed
    m = managers(["--port", f"{tb.ports[0]}?mode=zc"])
    err = m.refused()
    assert "the driver offers no zero-copy: use mode=auto or mode=copy" in err, err
    assert _xdp_prog(tb.port_if("a")) == ""


def test_region_on_a_disk_is_refused(afxdp_testbed: Testbed, managers: Callable[..., Manager],
                                     monkeypatch: pytest.MonkeyPatch, runtime: str) -> None:
    monkeypatch.setenv("ONVM_REGION_DIR", runtime)  # /tmp: not tmpfs on the test machines
    if subprocess.run(["stat", "-f", "-c", "%T", runtime], capture_output=True, text=True).stdout.strip() \
            in ("tmpfs", "hugetlbfs"):
        pytest.skip(f"{runtime} is in memory here")
    m = managers(["--port", afxdp_testbed.ports[0]])
    err = m.refused()
    assert "the region is a file on a disk file system, whose pages cannot be a UMEM" in err, err


def test_slot_size_must_be_a_chunk_size(runtime: str) -> None:
    from tests.integration.conftest import onvm

    r = onvm("manager", "--name", f"t{uuid.uuid4().hex[:7]}", "--port", "afxdp:lo", "--slot-size", "1024")
    assert r.returncode == 1
    assert "2048 or 4096 bytes: --slot-size 1024 will not do" in r.stderr


def test_testbed_prints_afxdp_ports(runtime: str) -> None:
    from tests.integration.conftest import onvm

    prefix = f"t{uuid.uuid4().hex[:7]}"
    try:
        r = onvm("testbed", "up", "--prefix", prefix, "--kind", "afxdp", "--queues", "2")
        assert r.returncode == 0, r.stderr
        assert f"--port afxdp:{prefix}-a?queues=2 --port afxdp:{prefix}-b?queues=2" in r.stdout
        assert "--rx-workers 2" in r.stdout
        assert len(os.listdir(f"/sys/class/net/{prefix}-a/queues")) == 4  # rx-0, rx-1, tx-0, tx-1
    finally:
        onvm("testbed", "down", "--prefix", prefix)


def test_interface_removed_under_the_port(afxdp_testbed: Testbed, managers: Callable[..., Manager]) -> None:
    """The link goes away while the manager runs: the port stops receiving, nothing
    spins, and the slots the kernel held still come back at the end."""
    tb = afxdp_testbed
    m = managers(["--port", tb.ports[0], "--port", tb.ports[1], "--default-chain", "1"]).wait_up()
    m.nf("bridge", "--service", "1")
    m.running(1)
    _ping(tb, "a", "b")
    subprocess.run(["ip", "link", "del", tb.port_if("b")], check=True)
    time.sleep(1.0)
    st = m.status()
    assert st["pool"]["free"] + st["pool"]["lent"] + st["pool"]["in_use"] == st["pool"]["total"]
    cpu0 = cpu_seconds(m.proc.pid) or 0.0
    time.sleep(1.0)
    assert (cpu_seconds(m.proc.pid) or 0.0) - cpu0 < 0.3, "the manager spins"
    log = m.stop()
    total = st["pool"]["total"]
    assert f"pool: {total} of {total} slots free" in log, log


def test_xdp_sender_reaches_the_peer(afxdp_testbed: Testbed) -> None:
    """The benchmark's XDP sender: frames born as XDP frames in host A reach the link's
    other end, taken in by its NAPI (GRO on), and are counted there."""
    from onvm.bench.ports import SINK_MAC, mac_of, rx_packets, udp_frame

    tb = afxdp_testbed
    subprocess.run(["ethtool", "-K", tb.port_if("a"), "gro", "on"], check=True, capture_output=True)
    frame = udp_frame(mac_of(tb.ns("a"), "eth0"), SINK_MAC, tb.addr("a"), tb.addr("b"))
    counter = f"/sys/class/net/{tb.port_if('a')}/statistics/rx_packets"
    before = int(open(counter).read())
    code = f"from onvm import _hooks; print(_hooks.xdp_blast('eth0', bytes.fromhex('{frame.hex()}'), 0.2))"
    sent = int(_in_ns(tb, "a", code).split()[-1])
    got = wait_for(lambda: int(open(counter).read()) - before, timeout=30, what="frames at the root end")
    assert sent >= 1 << 16 and 0 < got <= sent + 16  # host A's own stack may add a few (IPv6)
    assert rx_packets(tb.ns("b"), "eth0") < 100  # nothing is forwarded without a manager or a bridge


# ---- the benchmark --------------------------------------------------------------------

def test_veth_bridge_bench_runs_every_path(runtime: str) -> None:
    """onvm bench veth-bridge, shortened: each path (afxdp, afpacket, the Linux bridge)
    delivers frames with the same sender, and the figures are what they claim to be."""
    from tests.integration.conftest import onvm

    r = onvm("bench", "veth-bridge", "--seconds", "0.5", "--repeats", "1", "--json", timeout=180)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["port_kind"], out["sender"], out["repeats"]) == ("afxdp", "xdp", 1)
    for kind in ("afxdp", "afpacket", "kernel"):
        assert out[f"{kind}_mpps"] > 0 and out[f"{kind}_sender_mpps"] > 0, (kind, out)
        assert out[f"{kind}_runs"] == [out[f"{kind}_mpps"]]
        per = out[f"{kind}_us_per_frame"]
        assert per["sender"] > 0 and per["total"] >= per["sender"], (kind, per)
    for kind in ("afxdp", "afpacket"):  # CPU per frame of each process on the path (a short run's
        # CPU times may round to 0 clock ticks on a busy machine: their presence is checked)
        assert {"manager", "nf", "sender", "total"} <= set(out[f"{kind}_us_per_frame"]), out
        assert {"manager", "nf", "sender", "machine"} <= set(out[f"{kind}_cpu_percent"]), out
    assert out["mpps"] == out["afxdp_mpps"]
    assert out["ratio"] == pytest.approx(out["afxdp_mpps"] / out["kernel_mpps"], abs=1e-3)
    assert out["afxdp_vs_afpacket"] == pytest.approx(out["afxdp_mpps"] / out["afpacket_mpps"], abs=1e-3)
