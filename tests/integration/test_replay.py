"""Faithful replay of real captures: odd but valid records are skipped and counted, cooked and
raw-IP captures become Ethernet frames, and a file without a rate keeps every packet."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import onvm, pcap_records, status, wait_for
from tests.integration.test_overload import start_burner
from tests.integration.test_pcap_files import classic, frame, pcapng, replay

DMAC, SMAC = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")


def wait_replayed(dep: Any, out_port: int = 1, timeout: float = 60) -> dict[str, Any]:
    """The status once the file is read and everything it gave has left (or was dropped)."""

    def settled() -> dict[str, Any] | None:
        st = status(dep.name)
        gone = st["ports"][out_port]["tx"] + sum(sum(n["drops"].values()) for n in st["nfs"]) \
            + sum(st["ports"][0]["drops"].values())
        return st if st["ports"][0]["done"] and gone >= st["ports"][0]["rx"] else None

    return wait_for(settled, timeout=timeout, what="the replay to finish")


def test_empty_and_oversize_records_are_skipped_and_counted_and_the_rest_goes_through_a_chain(
        deploy, tmp_path):
    ordinary = [frame(i, 60 + i) for i in range(30)]
    recs: list[bytes] = []
    for i, f in enumerate(ordinary):
        recs.append(f)
        if i % 10 == 3:
            recs.append(b"")  # runt
        if i % 10 == 7:
            recs.append(frame(1000 + i, 1000))  # larger than a 512-byte slot's 384 bytes of room
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(classic(recs))
    dep = deploy(["--port", f"pcap:{src}", "--port", f"pcap-out:{out}", "--default-chain", "1,out:1",
                  "--slot-size", "512"])
    dep.start_nf(["simple_forward", "--service", "1"])
    st = wait_replayed(dep)
    port = st["ports"][0]
    assert port["error"] == "" and port["skipped"] == {"runt": 3, "oversize": 3}, port
    assert port["rx"] == 30
    dep.stop()
    assert pcap_records(out) == ordinary


def test_a_pcapng_packet_block_larger_than_the_reader_buffer_is_skipped_as_oversize(runtime, tmp_path):
    big = frame(99, 200_000)  # a block above the reader's 128 KiB buffer
    pkts = [(0, frame(0)), (1, big), (2, b""), (3, frame(3))]
    rc, err, got = replay(tmp_path, pcapng(pkts))
    assert rc == 0, err
    assert got == [frame(0), frame(3)]
    assert "skipped {'runt': 1, 'oversize': 1}" in err, err


def test_only_a_broken_file_stops_the_port_where_it_broke(runtime, tmp_path):
    data = classic([frame(0), b"", frame(2)]) + struct.pack("<IIII", 0, 0, 500, 500) + b"x" * 10
    rc, err, got = replay(tmp_path, data)
    assert rc == 0, err
    assert got == [frame(0), frame(2)]
    assert "truncated record: 500 bytes announced, 10 in the file at byte" in err, err


def scapy_pcap(path: Path, linktype: int, pkts: list[bytes]) -> None:
    body = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for k, p in enumerate(pkts):
        body += struct.pack("<IIII", k, 0, len(p), len(p)) + p
    path.write_bytes(body)


def test_cooked_and_raw_ip_captures_become_ethernet_frames(runtime, tmp_path):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, CookedLinux, CookedLinuxV2
    from scapy.packet import Raw

    v4 = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=80) / Raw(b"four"))
    v6 = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=6, dport=81) / Raw(b"six"))
    arp = bytes(ARP(psrc="10.0.0.1", pdst="10.0.0.2"))
    mac = bytes.fromhex("001122334455")
    lladdr = mac + b"\0\0"

    def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
        return dst + src + ethertype.to_bytes(2, "big") + payload

    cases: dict[int, tuple[list[bytes], list[bytes], int]] = {
        113: ([bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=lladdr, proto=0x0800) / v4),
               bytes(CookedLinux(pkttype=1, lladdrtype=1, lladdrlen=6, src=lladdr, proto=0x0806) / arp),
               bytes(CookedLinux(pkttype=4, lladdrtype=65534, lladdrlen=0, proto=0x86DD) / v6),
               bytes(CookedLinux(pkttype=0, lladdrtype=1, lladdrlen=6, src=lladdr, proto=0x0004)) + b"llc"],
              [eth(DMAC, mac, 0x0800, v4), eth(b"\xff" * 6, mac, 0x0806, arp),
               eth(DMAC, SMAC, 0x86DD, v6)], 1),
        276: ([bytes(CookedLinuxV2(proto=0x0800, ifindex=2, lladdrtype=1, pkttype=0, lladdrlen=6,
                                   src=lladdr) / v4),
               bytes(CookedLinuxV2(proto=0x86DD, ifindex=1, lladdrtype=772, pkttype=1, lladdrlen=6,
                                   src=lladdr) / v6),
               b"\x08\x00" + bytes(8)],  # shorter than its 20-byte header: a runt
              [eth(DMAC, mac, 0x0800, v4), eth(b"\xff" * 6, mac, 0x86DD, v6)], 0),
        101: ([v4, v6, b"\x50" + bytes(30)], [eth(DMAC, SMAC, 0x0800, v4), eth(DMAC, SMAC, 0x86DD, v6)], 1),
        228: ([v4, v6], [eth(DMAC, SMAC, 0x0800, v4)], 1),
        229: ([v6, v4], [eth(DMAC, SMAC, 0x86DD, v6)], 1),
    }
    for linktype, (records, want, no_ethertype) in cases.items():
        src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
        scapy_pcap(src, linktype, records)
        r = onvm("manager", "--name", f"t{uuid.uuid4().hex[:8]}", "--port", f"pcap:{src}",
                 "--port", f"pcap-out:{out}", "--default-chain", "out:1", "--no-wait", "--exit-when-done",
                 "--stats", "0")
        assert r.returncode == 0, r.stderr
        assert pcap_records(out) == want, linktype
        runt = len(records) - len(want) - no_ethertype
        skipped = {k: v for k, v in (("runt", runt), ("no_ethertype", no_ethertype)) if v}
        assert (f"skipped {skipped}" in r.stderr) == bool(skipped), (linktype, r.stderr)


def test_a_raw_ip_pcapng_interface_is_read(runtime, tmp_path):
    from scapy.layers.inet import ICMP, IP

    v4 = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())
    ethernet_if, raw_ip_if = struct.pack("<HHI", 1, 0, 65535), struct.pack("<HHI", 101, 0, 65535)
    data = pcapng([(0, v4), (1, v4)]).replace(ethernet_if, raw_ip_if, 1)
    rc, err, got = replay(tmp_path, data)
    assert rc == 0, err
    assert got == [DMAC + SMAC + b"\x08\x00" + v4] * 2


def big_pcap(path: Path, count: int, flows: int = 1) -> None:
    """count 60-byte UDP frames over flows source ports, written fast (the records repeat)."""
    recs = b""
    for f in range(flows):
        udp = struct.pack(">HHHH", 1000 + f, 80, 26, 0) + bytes(18)
        ip = bytes.fromhex("4500002e00000000401100000a0000010a000002") + udp
        eth = DMAC + SMAC + b"\x08\x00" + ip
        recs += struct.pack("<IIII", 0, 0, len(eth), len(eth)) + eth
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        reps, rest = divmod(count, flows)
        block = recs * 1000
        for _ in range(reps // 1000):
            f.write(block)
        f.write(recs * (reps % 1000))
        f.write(recs[: rest * (16 + 60)])


def test_a_million_packet_file_without_a_rate_comes_out_whole_through_three_nfs(deploy, tmp_path):
    src = tmp_path / "big.pcap"
    big_pcap(src, 1_000_000)
    dep = deploy(["--port", f"pcap:{src}", "--port", "null", "--default-chain", "1,2,3,out:1"])
    for s in (1, 2, 3):
        dep.start_nf(["simple_forward", "--service", str(s)])
    st = wait_replayed(dep, timeout=120)
    assert st["ports"][0]["rx"] == 1_000_000 and st["ports"][1]["tx"] == 1_000_000, st["ports"]
    assert not st["ports"][0]["drops"] and all(not n["drops"] for n in st["nfs"])


@pytest.mark.parametrize("loss", [0, 1])
def test_a_file_feeding_two_chains_waits_for_the_slow_one_unless_asked_to_lose(deploy, tmp_path, loss):
    """Half the flows take a chain whose NF takes 50 us a packet: the file waits for it (loss=0), or
    drops at RX like a wire would (loss=1)."""
    src = tmp_path / "two.pcap"
    count = 40_000
    big_pcap(src, count, flows=4)
    dep = deploy(["--port", f"pcap:{src}?loss={loss}", "--port", "null", "--default-chain", "1,out:1",
                  "--chain", "slow=2,out:1", "--rule", "udp src port 1000-1001 -> chain slow",
                  "--ring-size", "1024"])
    dep.start_nf(["simple_forward", "--service", "1"])
    start_burner(dep, tmp_path, 2, us=50)
    dep.wait_running(2)
    st = wait_replayed(dep, timeout=90)
    rx, out = st["ports"][0]["rx"], st["ports"][1]["tx"]
    assert rx == count
    if loss:
        assert out < count and st["ports"][0]["drops"], st["ports"]
    else:
        assert out == count and not st["ports"][0]["drops"], st["ports"]
