"""The per-packet and batch APIs over real slots, through the native run loop (onvm.testing).

Header views are checked field by field against scapy's dissection of the
same frames; writes against scapy building the changed frame; malformed
frames must leave the cut header absent and be counted; random and cut
frames must never make a view read past the packet's end.
"""

from __future__ import annotations

import importlib.util
import random
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw

from onvm import NF, _native
from onvm.constants import Action
from onvm.nf import PrefixTable
from onvm.nf._nf import _compile
from onvm.testing import run_nf

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def macb(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def ip(a: str) -> int:
    return struct.unpack("!I", bytes(int(x) for x in a.split(".")))[0]


FRAMES = {
    "tcp4": Ether(src=MAC_A, dst=MAC_B) / IP(src="192.0.2.1", dst="198.51.100.7", ttl=9, id=77, tos=4)
    / TCP(sport=40000, dport=443, flags="SA", seq=123456, ack=654321, window=999) / Raw(b"GET /"),
    "udp4": Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=5353)
    / Raw(b"dns!"),
    "icmp4": Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=7, seq=9) / Raw(b"ping"),
    "tcp6": Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2", hlim=33, fl=0x12345) / TCP(sport=1, dport=2),
    "udp6": Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=3, dport=4) / Raw(b"v6"),
    "icmp6": Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6EchoRequest(id=5, seq=6),
    "arp": Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=MAC_A, psrc="10.0.0.1",
                                                           pdst="10.0.0.9"),
    "vlan": Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=42, prio=5) / IP(src="1.2.3.4", dst="5.6.7.8")
    / UDP(sport=7, dport=8),
}

VIEWS = ("eth", "vlan", "arp", "ipv4", "ipv6", "icmp", "icmp6", "tcp", "udp")


def snapshot(pkt: Any) -> dict[str, Any]:
    """Every field of every view of pkt (None for an absent view or a field past the end)."""
    out: dict[str, Any] = {"len": pkt.len, "ether_type": pkt.ether_type, "payload": bytes(pkt.payload),
                           "five_tuple": pkt.five_tuple, "truncated": pkt.truncated}
    for name in VIEWS:
        v = getattr(pkt, name)
        if v is None:
            out[name] = None
            continue
        fields = {}
        for f in dir(type(v)):
            if f.startswith("_") or f == "bytes":
                continue
            try:
                fields[f] = getattr(v, f)
            except ValueError:
                fields[f] = "past-end"
        fields["bytes"] = v.bytes()
        out[name] = fields
    return out


def collect(frames: list[bytes], **kw: Any) -> tuple[list[dict[str, Any]], Any]:
    nf = NF("probe", service=1)
    seen: list[dict[str, Any]] = []

    @nf.packet
    def probe(pkt, meta):  # type: ignore[no-untyped-def]
        seen.append(snapshot(pkt))

    res = run_nf(nf, frames, **kw)
    return seen, res


def test_views_match_scapy():
    seen, res = collect([bytes(f) for f in FRAMES.values()])
    assert len(res.out[0]) == len(FRAMES)
    v = dict(zip(FRAMES, seen, strict=True))
    t = v["tcp4"]
    assert t["eth"]["dst"] == macb(MAC_B) and t["eth"]["src"] == macb(MAC_A) and t["eth"]["type"] == 0x0800
    assert t["ipv4"]["src"] == ip("192.0.2.1") and t["ipv4"]["dst"] == ip("198.51.100.7")
    assert (t["ipv4"]["ttl"], t["ipv4"]["id"], t["ipv4"]["tos"], t["ipv4"]["proto"]) == (9, 77, 4, 6)
    assert t["ipv4"]["version"] == 4 and t["ipv4"]["ihl"] == 5
    assert t["ipv4"]["checksum"] == Ether(bytes(FRAMES["tcp4"]))[IP].chksum
    assert t["ipv4"]["total_length"] == len(FRAMES["tcp4"]) - 14
    tcp = t["tcp"]
    assert (tcp["src_port"], tcp["dst_port"], tcp["seq"], tcp["ack"]) == (40000, 443, 123456, 654321)
    assert (tcp["flags"], tcp["window"], tcp["data_offset"]) == (0x12, 999, 5)
    assert t["payload"] == b"GET /"
    assert t["five_tuple"] == (ip("192.0.2.1"), ip("198.51.100.7"), 6, 40000, 443)
    assert t["udp"] is None and t["ipv6"] is None and t["vlan"] is None
    u = v["udp4"]
    assert (u["udp"]["src_port"], u["udp"]["dst_port"], u["udp"]["length"]) == (53, 5353, 12)
    assert u["payload"] == b"dns!"
    i = v["icmp4"]
    assert (i["icmp"]["type"], i["icmp"]["id"], i["icmp"]["seq"]) == (8, 7, 9) and i["icmp6"] is None
    assert i["payload"] == b"ping"
    t6 = v["tcp6"]
    assert t6["ipv6"]["src"] == bytes.fromhex("20010db8" + "0" * 23 + "1")
    assert (t6["ipv6"]["hop_limit"], t6["ipv6"]["flow_label"], t6["ipv6"]["next_header"]) == (33, 0x12345, 6)
    assert t6["tcp"]["dst_port"] == 2 and t6["ipv4"] is None and t6["five_tuple"] is None
    assert v["udp6"]["payload"] == b"v6" and v["udp6"]["udp"]["src_port"] == 3
    assert v["icmp6"]["icmp6"]["type"] == 128 and v["icmp6"]["icmp"] is None
    a = v["arp"]["arp"]
    assert (a["op"], a["sha"], a["spa"], a["tpa"]) == (1, macb(MAC_A), ip("10.0.0.1"), ip("10.0.0.9"))
    assert v["arp"]["ether_type"] == 0x0806
    vl = v["vlan"]
    assert (vl["vlan"]["vid"], vl["vlan"]["pcp"], vl["vlan"]["type"]) == (42, 5, 0x0800)
    assert vl["eth"]["type"] == 0x8100 and vl["ether_type"] == 0x0800 and vl["udp"]["dst_port"] == 8


def test_writes_land_in_place_and_checksums_follow():
    nf = NF("writer", service=1)

    @nf.packet
    def write(pkt, meta):  # type: ignore[no-untyped-def]
        pkt.eth.src = macb("02:00:00:00:00:99")
        if pkt.ipv4:
            pkt.ipv4.dst = ip("203.0.113.5")
            pkt.ipv4.ttl = 1
            pkt.ipv4.tos = 0xb8
        if pkt.tcp:
            pkt.tcp.dst_port = 8443
            pkt.tcp.flags = 0x10
        if pkt.udp:
            pkt.udp.src_port = 1
        if pkt.vlan:
            pkt.vlan.vid = 100
        if len(pkt.payload) >= 2:
            pkt.payload[:2] = b"ZZ"
        assert pkt.update_checksums() == 2

    frames = [FRAMES["tcp4"], FRAMES["udp4"], FRAMES["vlan"]]
    res = run_nf(nf, frames)
    for orig, got in zip(frames, res.out[0], strict=True):
        want = Ether(bytes(orig))
        want.src = "02:00:00:00:00:99"
        want[IP].dst, want[IP].ttl, want[IP].tos = "203.0.113.5", 1, 0xb8
        if TCP in want:
            want[TCP].dport, want[TCP].flags = 8443, "A"
            del want[TCP].chksum
        if UDP in want:
            want[UDP].sport = 1
            del want[UDP].chksum
        if Dot1Q in want:
            want[Dot1Q].vlan = 100
        if Raw in want:
            want[Raw].load = b"ZZ" + want[Raw].load[2:]
        del want[IP].chksum
        assert got == bytes(Ether(bytes(want)))


def test_bad_writes_raise_and_views_die_with_the_call():
    nf = NF("bad", service=1)
    kept: list[Any] = []
    errors: list[str] = []

    @nf.packet
    def h(pkt, meta):  # type: ignore[no-untyped-def]
        kept.append((pkt, pkt.ipv4))
        for fn in (lambda: setattr(pkt.ipv4, "ttl", 256), lambda: setattr(pkt.udp, "dst_port", -1),
                   lambda: setattr(pkt.eth, "src", b"short"), lambda: setattr(pkt, "len", 1 << 20)):
            try:
                fn()
            except (ValueError, OverflowError) as e:
                errors.append(type(e).__name__)

    res = run_nf(nf, [FRAMES["udp4"]])
    assert res.out[0] == [bytes(FRAMES["udp4"])] and len(errors) == 4
    pkt, view = kept[0]
    with pytest.raises(RuntimeError, match="only inside the handler"):
        _ = pkt.len
    with pytest.raises(RuntimeError, match="only inside the handler"):
        _ = view.src


def test_checksum_helpers():
    data = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")  # RFC 1071 style example
    assert _native.checksum(data) == 0xB861
    for name, f in FRAMES.items():
        if name == "arp":
            continue
        zeroed = Ether(bytes(f))
        for layer in (IP, TCP, UDP, ICMP):
            if layer in zeroed:
                zeroed[layer].chksum = 0x1234
        if ICMPv6EchoRequest in zeroed:
            zeroed[ICMPv6EchoRequest].cksum = 0x1234
        raw = bytearray(bytes(zeroed))
        assert _native.fix_checksums(raw) >= 1
        assert bytes(raw) == bytes(f), name


def test_malformed_headers_are_absent_and_counted():
    full = bytes(FRAMES["tcp4"])
    cuts = {13: "eth", 20: "ipv4", 40: "tcp", 54: None}
    seen, res = collect([full[:n] for n in cuts])
    assert seen[0]["eth"] is None and seen[0]["truncated"]
    assert seen[1]["eth"] is not None and seen[1]["ipv4"] is None and seen[1]["truncated"]
    assert seen[2]["ipv4"] is not None and seen[2]["tcp"] is None and seen[2]["truncated"]
    assert seen[3]["tcp"] is not None and not seen[3]["truncated"]
    assert res.stats["parse_errors"] == 3
    assert len(res.out[0]) == 4  # a malformed packet is still handled and forwarded


def test_hold_and_release_in_packet_mode():
    nf = NF("holder", service=1)
    held: list[int] = []

    @nf.packet
    def h(pkt, meta):  # type: ignore[no-untyped-def]
        if pkt.udp.src_port % 2:
            held.append(meta.hold())
        if len(held) == 3:  # release the first three out of port 2, in reverse order
            assert nf.release(held[::-1], Action.OUT, 2) == 3
            assert nf.release(held, Action.DROP) == 0  # released already
            held.clear()

    pkts = [bytes(Ether() / IP() / UDP(sport=i)) for i in range(10)]
    res = run_nf(nf, pkts)
    assert res.out[0] == [pkts[i] for i in (0, 2, 4, 6, 8)]
    assert res.out[2] == [pkts[i] for i in (5, 3, 1)]
    assert res.held == 2 and len(held) == 2  # 7 and 9 stay with the NF, returned by the harness


def test_hold_and_release_in_batch_mode_and_from_teardown():
    nf = NF("bholder", service=1)
    kept: list[int] = []

    @nf.batch
    def h(b):  # type: ignore[no-untyped-def]
        kept.extend(b.hold(b.length > 60).tolist())

    @nf.teardown
    def flush(nf: NF) -> None:
        assert nf.release(kept, Action.TONF, 3) == len(kept)

    pkts = [bytes(Ether() / IP() / UDP() / Raw(b"x" * n)) for n in (1, 40, 2, 50)]
    res = run_nf(nf, pkts, services=[3])
    assert res.out[0] == [pkts[0], pkts[2]] and res.tonf[3] == [pkts[1], pkts[3]] and res.held == 0


def test_to_scapy_and_inject_scapy():
    nf = NF("scapy", service=1)
    got: list[Any] = []

    @nf.packet
    def h(pkt, meta):  # type: ignore[no-untyped-def]
        got.append(pkt.to_scapy())
        if pkt.in_port != 0xFFFF:
            nf.inject(Ether() / IP(dst="9.9.9.9") / ICMP(), Action.OUT, 1)

    res = run_nf(nf, [FRAMES["udp4"]])
    assert got[0][UDP].dport == 5353 and bytes(got[0]) == bytes(FRAMES["udp4"])
    assert [Ether(p)[IP].dst for p in res.out[1]] == ["9.9.9.9"]


# ---- batch gathers ---------------------------------------------------------------

ALL_FIELDS = ["ether_type", "l3_type", "proto", "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst",
              "src_port", "dst_port", "tcp_flags", "ttl", "vlan", "flags", "icmp_type"]


def test_batch_gathers_the_requested_fields():
    nf = NF("gather", service=1)
    rows: list[dict[str, Any]] = []

    @nf.batch(fields=ALL_FIELDS)
    def h(b):  # type: ignore[no-untyped-def]
        for i in range(b.n):
            rows.append({f: (bytes(getattr(b, f)[i]) if f.startswith("ipv6") else int(getattr(b, f)[i]))
                         for f in ALL_FIELDS})

    frames = [bytes(f) for f in FRAMES.values()] + [bytes(FRAMES["tcp4"])[:30]]
    run_nf(nf, frames)
    r = dict(zip([*FRAMES, "cut"], rows, strict=True))
    assert r["tcp4"]["ipv4_src"] == ip("192.0.2.1") and r["tcp4"]["dst_port"] == 443
    assert r["tcp4"]["tcp_flags"] == 0x12 and r["tcp4"]["ttl"] == 9 and r["tcp4"]["proto"] == 6
    assert r["udp4"]["src_port"] == 53 and r["udp4"]["tcp_flags"] == 0
    assert r["icmp4"]["icmp_type"] == 8 and r["icmp6"]["icmp_type"] == 128
    assert r["tcp6"]["ipv6_dst"] == bytes.fromhex("20010db8" + "0" * 23 + "2") and r["tcp6"]["ttl"] == 33
    assert r["tcp6"]["ipv4_src"] == 0 and r["tcp4"]["ipv6_src"] == bytes(16)
    assert r["arp"]["l3_type"] == 3 and r["arp"]["ether_type"] == 0x0806
    assert r["vlan"]["vlan"] == 42 and r["vlan"]["flags"] & 1 and r["vlan"]["ether_type"] == 0x0800
    assert r["cut"]["flags"] & 2 and r["cut"]["ipv4_src"] == 0


def test_batch_writes_fields_in_place():
    nf = NF("bwrite", service=1)
    counts: list[int] = []

    @nf.batch(fields=["dst_port", "ttl"])
    def h(b):  # type: ignore[no-untyped-def]
        web = b.dst_port == 443
        counts.append(b.write("ipv4_dst", ip("203.0.113.80"), web))
        counts.append(b.write("ttl", b.ttl - 1))  # IPv4 and IPv6; ARP has none
        counts.append(b.write("src_port", np.arange(b.n) + 1000))
        assert (b.ttl == 8)[0]  # the gathered array follows
        b.update_checksums()

    frames = [FRAMES["tcp4"], FRAMES["udp6"], FRAMES["arp"]]
    res = run_nf(nf, frames)
    assert counts == [1, 2, 2]
    t4, u6, arp = (Ether(p) for p in res.out[0])
    want = Ether(bytes(FRAMES["tcp4"]))
    want[IP].dst, want[IP].ttl, want[TCP].sport = "203.0.113.80", 8, 1000
    del want[IP].chksum, want[TCP].chksum
    assert bytes(t4) == bytes(Ether(bytes(want)))
    want = Ether(bytes(FRAMES["udp6"]))
    want[IPv6].hlim, want[UDP].sport = 63, 1001
    del want[UDP].chksum
    assert bytes(u6) == bytes(Ether(bytes(want)))
    assert bytes(arp) == bytes(FRAMES["arp"])
    with pytest.raises(ValueError, match="cannot be written"):
        from onvm.nf import Batch
        Batch(4).write("vlan", 1)


def test_batch_fields_not_requested_say_so():
    nf = NF("lazy", service=1)
    errors: list[str] = []

    @nf.batch(fields=["ipv4_src"])
    def h(b):  # type: ignore[no-untyped-def]
        try:
            _ = b.dst_port
        except AttributeError as e:
            errors.append(str(e))
        b.tonf(4, b.ipv4_src == ip("10.0.0.1"))

    res = run_nf(nf, [FRAMES["udp4"], FRAMES["tcp4"]], services=[4])
    assert "not requested" in errors[0]
    assert res.tonf[4] == [bytes(FRAMES["udp4"])] and res.out[0] == [bytes(FRAMES["tcp4"])]


def test_jit_handler_gives_the_same_results():
    def kernel(action, dest, dst_port):  # type: ignore[no-untyped-def]
        for i in range(len(action)):
            if dst_port[i] == 443:
                action[i] = 2
                dest[i] = 6

    outs = []
    for jit in (False, True):
        nf = NF("jit", service=1)
        if jit:
            nf.batch(fields=["dst_port"], jit=True)(kernel)
        else:
            nf.batch(fields=["dst_port"])(lambda b: kernel(b.action, b.dest, b.dst_port))
        outs.append(run_nf(nf, [bytes(f) for f in FRAMES.values()], services=[6]))
    assert outs[0].out == outs[1].out and outs[0].tonf == outs[1].tonf
    assert outs[1].tonf[6] == [bytes(FRAMES["tcp4"])]
    if importlib.util.find_spec("numba") is not None:  # then the kernel really was compiled
        assert type(_compile(kernel)).__name__ == "CPUDispatcher"
    else:
        assert _compile(kernel) is kernel


# ---- LPM -----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 1000)), max_size=40),
       st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50))
def test_lpm_matches_a_reference(rules, addrs):
    t = _native.LPM(-1)
    model: dict[tuple[int, int], int] = {}
    for net, ln, val in rules:
        mask = (0xFFFFFFFF << (32 - ln)) & 0xFFFFFFFF
        t.add(net, ln, val)
        model[(net & mask, ln)] = val
    # addresses inside the rules' prefixes too, not only random ones
    addrs = addrs + [n for n, _, _ in rules]

    def ref(a: int) -> int:
        for ln in range(32, -1, -1):
            mask = (0xFFFFFFFF << (32 - ln)) & 0xFFFFFFFF
            if (a & mask, ln) in model:
                return model[(a & mask, ln)]
        return -1

    want = [ref(a) for a in addrs]
    assert [t.lookup(a) for a in addrs] == want
    out = np.zeros(len(addrs), dtype=np.int32)
    t.lookup_into(np.array(addrs, dtype=np.uint32), out)
    assert out.tolist() == want


def test_prefix_table_from_both_apis():
    table = PrefixTable()
    table.add("10.0.0.0/8", 1)
    table.add("10.1.0.0/16", 2)
    nf = NF("lpm", service=1)

    @nf.packet
    def h(pkt, meta):  # type: ignore[no-untyped-def]
        meta.out(table.lookup(pkt.ipv4.dst) + 1)

    frames = [bytes(Ether() / IP(dst=d) / UDP()) for d in ("10.1.1.1", "10.2.2.2", "11.0.0.1")]
    res = run_nf(nf, frames)
    assert res.out == {3: [frames[0]], 2: [frames[1]], 0: [frames[2]]}
    addrs = np.array([ip("10.1.1.1"), ip("10.2.2.2"), 0], dtype=np.uint32)
    assert table.lookup_many(addrs).tolist() == [2, 1, -1]


# ---- fuzzing -----------------------------------------------------------------------------

def fuzz_probe() -> tuple[NF, list[str]]:
    """An NF that reads every view twice, with different bytes past the packet's end each time:
    the two reads must agree, or a view looked past the end."""
    nf = NF("fuzz", service=1)
    bad: list[str] = []

    @nf.packet
    def h(pkt, meta):  # type: ignore[no-untyped-def]
        n = pkt.len
        snaps = []
        for fill in (0x55, 0xAA):
            pkt.len = n + 64
            pkt.data[n:] = bytes([fill]) * 64
            pkt.len = n
            snaps.append(snapshot(pkt))
        if snaps[0] != snaps[1]:
            bad.append(repr(bytes(pkt.data)))
        pkt.update_checksums()
        for cut in (n // 2, 13, 0):  # a handler shortened it: offsets now point past the end
            pkt.len = min(cut, n)
            again = []
            for fill in (0x33, 0xCC):
                pkt.len, m = n + 64, pkt.len
                pkt.data[m:] = bytes([fill]) * (n + 64 - m)
                pkt.len = m
                again.append(snapshot(pkt))
                pkt.update_checksums()
            if again[0] != again[1]:
                bad.append(f"cut to {cut}: " + repr(bytes(pkt.data)))

    return nf, bad


def mutations(rng: random.Random) -> list[bytes]:
    out = []
    for f in FRAMES.values():
        raw = bytes(f)
        out += [raw[:n] for n in range(len(raw) + 1)]
        for _ in range(20):
            b = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            out.append(bytes(b[:rng.randint(0, len(b))]))
    return out


def test_fuzz_cut_and_mutated_frames():
    nf, bad = fuzz_probe()
    frames = mutations(random.Random(7))
    res = run_nf(nf, frames, pool_size=8192, ring_size=8192)
    assert not bad
    assert res.stats["rx"] == len(frames)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=200), min_size=1, max_size=30))
def test_fuzz_random_bytes(frames):
    # random bytes with a plausible start: Ethernet + IPv4/IPv6/VLAN/ARP type
    starts = [b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x08\x06"]
    frames = [bytes(12) + starts[i % 4] + f for i, f in enumerate(frames)] + frames
    nf, bad = fuzz_probe()
    res = run_nf(nf, frames)
    assert not bad and res.stats["rx"] == len(frames)


def view_fields(pkt: Any) -> dict[str, Any]:
    """The batch fields, computed from the per-packet views."""
    ip4, ip6, l4 = pkt.ipv4, pkt.ipv6, pkt.tcp or pkt.udp
    icmp = pkt.icmp or pkt.icmp6
    return {
        "ether_type": pkt.ether_type or 0,
        "ipv4_src": ip4.src if ip4 else 0, "ipv4_dst": ip4.dst if ip4 else 0,
        "ipv6_src": ip6.src if ip6 else bytes(16), "ipv6_dst": ip6.dst if ip6 else bytes(16),
        "src_port": l4.src_port if l4 else 0, "dst_port": l4.dst_port if l4 else 0,
        "tcp_flags": pkt.tcp.flags if pkt.tcp else 0,
        "ttl": ip4.ttl if ip4 else ip6.hop_limit if ip6 else 0,
        "vlan": pkt.vlan.vid if pkt.vlan else 0,
        "flags": pkt.flags, "icmp_type": icmp.type if icmp else 0,
    }


def test_fuzz_batch_gathers_agree_with_the_views():
    frames = mutations(random.Random(11))
    names = [
        "ether_type", "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst", "src_port", "dst_port", "tcp_flags",
        "ttl", "vlan", "flags", "icmp_type"]
    by_view: list[dict[str, Any]] = []
    by_batch: list[dict[str, Any]] = []
    pnf = NF("views", service=1)

    @pnf.packet
    def p(pkt, meta):  # type: ignore[no-untyped-def]
        by_view.append(view_fields(pkt))

    bnf = NF("gathers", service=1)

    @bnf.batch(fields=names)
    def b(batch):  # type: ignore[no-untyped-def]
        for i in range(batch.n):
            by_batch.append({f: bytes(getattr(batch, f)[i]) if f.startswith("ipv6")
                             else int(getattr(batch, f)[i]) for f in names})

    run_nf(pnf, frames, pool_size=8192, ring_size=8192)
    run_nf(bnf, frames, pool_size=8192, ring_size=8192)
    assert len(by_view) == len(by_batch) == len(frames)
    for f, v, g in zip(frames, by_view, by_batch, strict=True):
        assert v == g, f.hex()
