"""pyonvm as a bump in the wire between two hosts (network namespaces) that use
the real Linux stack: ARP, ping, TCP and UDP, both ways, through the bridge NF
and through a chain of three NFs.  What arrives must equal what was sent."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from onvm import _native
from onvm.testbed import Testbed
from tests.e2e.conftest import needs_root
from tests.integration.conftest import wait_for

pytestmark = needs_root

CHAINS = {
    "bridge": ("1", [["bridge", "--service", "1"]]),
    "chain3": ("1,2,3", [["simple_forward", "--service", "1"], ["basic_monitor", "--service", "2",
                                                                 "--interval", "0"],
                         ["bridge", "--service", "3"]]),
}


def _start(deploy: Any, tb: Testbed, chain: str, nfs: list[list[str]], ports: list[str] | None = None) -> Any:
    dep = deploy(["--port", *(ports or tb.ports)[:1], "--port", *(ports or tb.ports)[1:],
                  "--default-chain", chain])
    for argv in nfs:
        dep.start_nf(argv)
    dep.wait_running(len(nfs))
    return dep


def _in_ns(tb: Testbed, side: str, code: str, timeout: float = 30) -> str:
    r = subprocess.run(tb.exec_argv(side, sys.executable, "-c", code), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"in {tb.ns(side)}: {r.stderr}"
    return r.stdout


def _ping(tb: Testbed, src: str, dst: str, count: int = 3) -> None:
    r = subprocess.run(tb.exec_argv(src, "ping", "-c", str(count), "-i", "0.2", "-W", "2",
                                    tb.addr(dst)), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{count} received" in r.stdout, r.stdout


def _mac(tb: Testbed, side: str) -> str:
    out = subprocess.run(["ip", "-n", tb.ns(side), "-j", "link", "show", "eth0"], capture_output=True,
                         text=True, check=True).stdout
    return str(json.loads(out)[0]["address"])


def _neighbor(tb: Testbed, side: str, addr: str) -> str:
    out = subprocess.run(["ip", "-n", tb.ns(side), "-j", "neigh", "show", addr], capture_output=True,
                         text=True, check=True).stdout
    entries = json.loads(out) if out.strip() else []
    return str(entries[0].get("lladdr", "")) if entries else ""


def _http_transfer(tb: Testbed, server: str, client: str, tmp: Any) -> None:
    """Server host serves a random file; the client fetches it; the checksums must agree."""
    d = tmp / f"srv-{server}"
    d.mkdir()
    blob = os.urandom(3 << 20)
    (d / "blob").write_bytes(blob)
    srv = subprocess.Popen(tb.exec_argv(server, sys.executable, "-m", "http.server", "8080", "--bind",
                                        tb.addr(server), "--directory", str(d)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code = (
            "import hashlib, time, urllib.request\n"
            "for i in range(100):\n"
            "    try:\n"
            f"        url = 'http://{tb.addr(server)}:8080/blob'\n"
            "        data = urllib.request.urlopen(url, timeout=10).read()\n"
            "        break\n"
            "    except OSError:\n"
            "        time.sleep(0.1)\n"
            "print(hashlib.sha256(data).hexdigest(), len(data))\n"
        )
        digest, size = _in_ns(tb, client, code, timeout=60).split()
        assert int(size) == len(blob)
        assert digest == hashlib.sha256(blob).hexdigest()
    finally:
        srv.terminate()
        srv.wait(timeout=10)


def _udp_echo(tb: Testbed, server: str, client: str, count: int = 200) -> None:
    """The client sends numbered datagrams; the server echoes them; all must come back intact."""
    echo = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(('{tb.addr(server)}', 9999)); s.settimeout(20)\n"
        f"for _ in range({count}):\n"
        "    data, peer = s.recvfrom(65535)\n"
        "    s.sendto(data, peer)\n"
    )
    srv = subprocess.Popen(tb.exec_argv(server, sys.executable, "-c", echo),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)
        code = (
            "import hashlib, os, socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)\n"
            "sent, got = hashlib.sha256(), hashlib.sha256()\n"
            f"for i in range({count}):\n"
            "    msg = i.to_bytes(4, 'big') + os.urandom(16 + (i * 37) % 1400)\n"
            "    sent.update(msg)\n"
            f"    s.sendto(msg, ('{tb.addr(server)}', 9999))\n"
            "    got.update(s.recvfrom(65535)[0])\n"
            "print(sent.hexdigest() == got.hexdigest())\n"
        )
        assert _in_ns(tb, client, code).strip() == "True"
    finally:
        srv.wait(timeout=10)


@pytest.mark.parametrize("kind", sorted(CHAINS))
def test_bump_in_the_wire(kind: str, testbed: Testbed, deploy: Any, tmp_path: Any) -> None:
    chain, nfs = CHAINS[kind]
    dep = _start(deploy, testbed, chain, nfs)
    # ARP first: the hosts know nothing of each other yet
    assert _neighbor(testbed, "a", testbed.addr("b")) == ""
    _ping(testbed, "a", "b")
    assert _neighbor(testbed, "a", testbed.addr("b")) == _mac(testbed, "b")
    _ping(testbed, "b", "a")
    assert _neighbor(testbed, "b", testbed.addr("a")) == _mac(testbed, "a")
    _http_transfer(testbed, "b", "a", tmp_path)
    _http_transfer(testbed, "a", "b", tmp_path)
    _udp_echo(testbed, "b", "a")
    _udp_echo(testbed, "a", "b")
    st = dep.status()
    p0, p1 = st["ports"]
    assert p0["rx"] > 2000 and p1["rx"] > 2000  # the transfers went through the ports
    assert p0["tx"] + p1["tx"] >= p0["rx"] + p1["rx"] - sum(p0["drops"].values()) - sum(
        p1["drops"].values()) - 8  # everything received left, save what was counted as dropped
    assert all(n["rx"] > 2000 for n in st["nfs"]), st["nfs"]


def test_tap_port(testbed: Testbed, deploy: Any) -> None:
    """A TAP port made by the manager, moved into a third namespace, talks to host B."""
    tap = f"{testbed.prefix}-t"
    ns = f"{testbed.prefix}-t"
    _start(deploy, testbed, "1", [["bridge", "--service", "1"]],
           ports=[f"tap:{tap}", testbed.ports[1]])
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "link", "set", tap, "netns", ns], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", f"{testbed.subnet}.3/24", "dev", tap], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", tap, "up"], check=True)
        r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "2",
                            testbed.addr("b")], capture_output=True, text=True, timeout=30)
        assert "3 received" in r.stdout, r.stdout + r.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_tap_removed_at_exit(deploy: Any) -> None:
    name = f"t{uuid.uuid4().hex[:7]}"
    dep = deploy(["--port", f"tap:{name}", "--port", "null", "--default-chain", "out:1"])
    assert os.path.exists(f"/sys/class/net/{name}")
    dep.stop()
    wait_for(lambda: not os.path.exists(f"/sys/class/net/{name}"), what="the TAP device to go")


@pytest.mark.parametrize("kind", ["afpacket", pytest.param("afxdp", marks=pytest.mark.skipif(
    not _native.HAVE_AFXDP, reason="built without AF_XDP"))])
@pytest.mark.usefixtures("region_in_tmpfs")
def test_two_rx_workers(kind: str, make_testbed: Any, deploy: Any) -> None:
    """Links with two queues each way and two RX workers, each reading its own socket (of one
    AF_PACKET fanout group, or the XSK of its queue), still deliver everything."""
    testbed = make_testbed(kind=kind, queues=2)
    assert testbed.ports[0].endswith("?queues=2")
    dep = deploy(["--rx-workers", "2", "--port", testbed.ports[0], "--port", testbed.ports[1],
                  "--default-chain", "1"])
    dep.start_nf(["bridge", "--service", "1"])
    dep.wait_running(1)
    _ping(testbed, "a", "b")
    _udp_echo(testbed, "b", "a", count=300)
    # many flows: host A's veth spreads them over its two queues, the kernel over the sockets
    code = (
        "import socket\n"
        "for i in range(64):\n"
        "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"    s.sendto(b'x' * 32, ('{testbed.addr('b')}', 9))\n"
        "    s.close()\n"
    )
    _in_ns(testbed, "a", code)
    port = wait_for(lambda: (p := dep.status()["ports"][0])["rx"] >= 64 + 300 and p, what="the flows")
    assert len(port["rx_by_worker"]) == 2 and min(port["rx_by_worker"]) > 0, port


def test_missing_interface_is_a_clear_error(runtime: str) -> None:
    from tests.integration.conftest import onvm
    r = onvm("manager", "--name", f"t{uuid.uuid4().hex[:7]}", "--port", "afpacket:nosuchif0",
             "--quiet")
    assert r.returncode == 1
    assert "afpacket nosuchif0: no such interface" in r.stderr


def test_kernel_ring_drops_are_counted(testbed: Testbed, deploy: Any) -> None:
    """Input held (no NF yet): the kernel's ring fills, and what it drops shows in the port's stats."""
    from onvm.bench.ports import mac_of, send_and_count, udp_frame

    dep = deploy(["--port", testbed.ports[0], "--port", testbed.ports[1], "--default-chain", "1"])
    frame = udp_frame(mac_of(testbed.ns("a"), "eth0"), mac_of(testbed.ns("b"), "eth0"), testbed.addr("a"),
                      testbed.addr("b"))
    sent, _ = send_and_count(testbed, frame, 0.3)
    dep.start_nf(["bridge", "--service", "1"])
    dep.wait_running(1)
    port = wait_for(lambda: (p := dep.status()["ports"][0])["drops"].get("kernel") and p,
                    what="kernel drops on port 0")
    # the ring (16 blocks of 128 KiB) holds far fewer frames than were sent
    assert port["rx"] < 40000 < sent * 0.3e6
    assert port["rx"] + port["drops"]["kernel"] <= sent * 0.3e6 + 100
