"""onvm capture against running chains: byte-exact copies read back by tcpdump and scapy, filters,
counts, several captures at once, and a capture that cannot keep up counting its drops while the
chain loses nothing."""

from __future__ import annotations

import shutil
import signal
import struct
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.integration.conftest import status, wait_for
from tests.integration.test_pcap_files import classic

TCPDUMP = shutil.which("tcpdump")


def udp_frame(i: int, dport: int = 53, proto: int = 17) -> bytes:
    """An IPv4 frame whose payload names it (i), to UDP (17) or TCP (6) port dport."""
    if proto == 17:
        l4 = struct.pack(">HHHH", 1000 + i % 7, dport, 8 + 8, 0) + i.to_bytes(8, "big")
    else:
        tcp = struct.pack(">HHIIBBHHH", 1000 + i % 7, dport, i, 0, 0x50, 0x10, 512, 0, 0)
        l4 = tcp + i.to_bytes(8, "big")
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), i & 0xFFFF, 0, 64, proto, 0,
                     bytes([10, 0, 0, 1 + i % 3]), bytes([10, 1, 0, 1])) + l4
    return bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip


def capture(dep: Any, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "onvm.cli.main", "capture", "--name", dep.name, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(p: subprocess.Popen[bytes], timeout: float = 20) -> tuple[bytes, str]:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return out, err.decode()


def records(blob: bytes) -> tuple[int, list[bytes]]:
    magic = struct.unpack("<I", blob[:4])[0]
    pos, out = 24, []
    while pos < len(blob):
        cap = struct.unpack_from("<I", blob, pos + 8)[0]
        out.append(blob[pos + 16:pos + 16 + cap])
        pos += 16 + cap
    return magic, out


@pytest.fixture
def chain(deploy, tmp_path):
    """A paced file of distinct frames (half UDP to port 53, half TCP to port 80) through a chain of
    one NF (service 1) to a null port."""
    frames = [udp_frame(i) if i % 2 else udp_frame(i, 80, 6) for i in range(20000)]
    src = tmp_path / "in.pcap"
    src.write_bytes(classic(frames))
    dep = deploy(["--port", f"pcap:{src}?rate=4000&loop=0", "--port", "null", "--default-chain", "1,out:1"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    wait_for(lambda: status(dep.name)["ports"][0]["rx"] > 0, what="traffic")
    return dep, frames


def in_order(got: list[bytes], frames: list[bytes]) -> bool:
    """got is a stretch of frames, in order."""
    if not got:
        return False
    start = frames.index(got[0])
    return got == (frames * 2)[start:start + len(got)]  # the file loops


@pytest.mark.skipif(TCPDUMP is None, reason="tcpdump is not installed (make deps installs it)")
def test_a_service_capture_is_what_the_nf_received_byte_for_byte_read_live_by_tcpdump(chain, tmp_path):
    dep, frames = chain
    cap = subprocess.Popen(
        f"{sys.executable} -m onvm.cli.main capture --name {dep.name} --service 1 --direction rx -c 40 -w - "
        f"| tee {tmp_path / 'live.pcap'} | {TCPDUMP} -nr - --time-stamp-precision=nano",
        shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = cap.communicate(timeout=30)
    assert cap.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 40, (out, err)
    assert all(" IP 10.0.0." in line and " > 10.1.0.1." in line for line in lines), lines
    assert "40 packets captured\n0 packets dropped by the capture" in err.decode()
    magic, got = records((tmp_path / "live.pcap").read_bytes())
    assert magic == 0xA1B23C4D  # nanosecond stamps
    assert in_order(got, frames)

    from scapy.utils import rdpcap  # type: ignore[import-untyped]

    assert [bytes(p) for p in rdpcap(str(tmp_path / "live.pcap"))] == got


def test_filters_counts_and_several_captures_at_once(chain, tmp_path):
    dep, frames = chain
    tcp = capture(dep, "--service", "1", "--direction", "tx", "-c", "25", "-w", str(tmp_path / "tcp.pcap"),
                  "tcp", "dst", "port", "80")
    udp = capture(dep, "--port", "0", "--direction", "rx", "-c", "30", "-w", str(tmp_path / "udp.pcap"),
                  "udp", "src", "10.0.0.2/32")
    out_tx = capture(dep, "--port", "1", "--direction", "tx", "-c", "10", "-s", "20", "-w", "-")
    finish(tcp)
    finish(udp)
    blob, err = finish(out_tx)
    _, got = records((tmp_path / "tcp.pcap").read_bytes())
    assert len(got) == 25 and all(f[23] == 6 and f[36:38] == b"\x00\x50" for f in got)
    assert in_order(got, [f for f in frames if f[23] == 6])
    _, got = records((tmp_path / "udp.pcap").read_bytes())
    assert len(got) == 30 and all(f[23] == 17 and f[26:30] == bytes([10, 0, 0, 2]) for f in got)
    assert in_order(got, [f for f in frames if f[23] == 17 and f[29] == 2])
    _, got = records(blob)
    assert struct.unpack("<I", blob[16:20])[0] == 20  # the snaplen in the file header
    assert len(got) == 10 and all(len(f) == 20 for f in got)
    assert "10 packets captured" in err


def test_a_capture_that_cannot_keep_up_counts_drops_and_the_chain_loses_nothing(deploy, tmp_path):
    src = tmp_path / "loop.pcap"
    src.write_bytes(classic([udp_frame(i) for i in range(1000)]))
    # A file replayed forever, as fast as the chain takes it: nothing may be lost on the way.
    dep = deploy(["--port", f"pcap:{src}?loop=0", "--port", "null", "--default-chain", "1,out:1"])
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    reader = capture(dep, "--service", "1", "-w", "-")  # past its header, not read: the pipe fills
    assert reader.stdout is not None
    head = reader.stdout.read(24)  # written once the capture runs: a signal now ends a capture, not a start
    wait_for(lambda: reader.poll() is None and status(dep.name)["nfs"][0]["rx"] > 100_000, timeout=20,
             what="traffic")
    time.sleep(1.0)
    reader.send_signal(signal.SIGINT)
    rest, err = reader.communicate(timeout=20)
    assert head[:4] == struct.pack("<I", 0xA1B23C4D)
    captured = int(err.decode().split(" packets captured")[0].split()[-1])
    dropped = int(err.decode().split(" packets dropped by the capture")[0].split()[-1])
    assert dropped > 0 and captured > 0, err
    st = status(dep.name)
    assert not st["nfs"][0]["drops"] and not st["ports"][0]["drops"] and not st["ports"][1]["drops"], st
    assert st["ports"][1]["tx"] >= st["nfs"][0]["rx"] - 10_000  # what the NF took reached the port


def test_a_capture_ends_with_its_connection_and_a_slot_is_free_again(chain):
    dep, _frames = chain
    procs = [capture(dep, "--service", "1", "-w", "-") for _ in range(8)]
    for p in procs:  # each has its capture once it wrote the file header
        assert p.stdout is not None and len(p.stdout.read(24)) == 24
    extra = capture(dep, "--port", "0", "-c", "1", "-w", "-")
    _, err = extra.communicate(timeout=20)
    assert extra.returncode == 1 and "8 captures run already; stop one first" in err.decode()
    for p in procs:
        p.kill()
        p.wait()

    def another() -> bool:
        p = capture(dep, "--port", "0", "-c", "1", "-w", "-")
        p.communicate(timeout=20)
        return p.returncode == 0

    wait_for(another, timeout=15, what="a capture slot free again")


def test_bad_requests_name_what_is_wrong(chain):
    dep, _ = chain
    for args, message in ((["--port", "7"], "there is no port 7"),
                          (["--nf", "1", "tcp", "priority", "5"], "'priority' has no place in a filter"),
                          (["--port", "0", "udp", "dst", "port", "x"], "token 4 'x': expected a port")):
        p = capture(dep, *args)
        _, err = p.communicate(timeout=20)
        assert p.returncode == 1 and message in err.decode(), err


def test_packets_an_nf_makes_are_captured_and_traced(deploy):
    """What an NF injects is what it sends: a capture of its service copies it, a trace follows it."""
    from tests.integration.test_trace import trace

    dep = deploy(["--port", "null", "--port", "null", "--default-chain", "drop"])
    dep.start_nf(["load_generator", "--service", "5", "--out", "1", "--rate", "2000", "--size", "100"])
    dep.wait_running(1)
    made = capture(dep, "--service", "5", "--direction", "tx", "-c", "30", "-w", "-",
                   "udp", "dst", "port", "5678")
    trace(dep, "add", "4", "udp")
    blob, err = finish(made)
    magic, got = records(blob)
    assert len(got) == 30 and all(len(f) == 100 and f[36:38] == (5678).to_bytes(2, "big") for f in got), err
    shown = wait_for(lambda: (t := trace(dep, "show")) and len(t["packets"]) == 4
                     and all(p["end"] != "in flight" for p in t["packets"]) and t, what="four traced packets")
    nf = status(dep.name)["nfs"][0]["id"]
    for p in shown["packets"]:
        assert p["classified"] == "injected" and p["in_port"] is None and p["end"] == "out port 1", p
        assert p["hops"][0]["by"].startswith(f"NF {nf} ") and p["hops"][0]["what"] == "injected, out", p
