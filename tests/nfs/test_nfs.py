"""Each example NF on crafted scapy packets, through the real native loop (onvm.testing).

Every test checks exactly what comes out: which packets, where, and their bytes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Padding, Raw

from onvm import NF, nfs
from onvm.errors import ConfigError
from onvm.testing import run_nf
from tests.nfs.conftest import build


def frame(src: str = "10.0.0.1", dst: str = "192.0.2.9", sport: int = 1000, dport: int = 80,
          proto: str = "udp", payload: bytes = b"hello") -> Packet:
    l4 = UDP(sport=sport, dport=dport) if proto == "udp" else TCP(sport=sport, dport=dport, flags="S")
    return Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst) / l4 / Raw(payload)


def rebuilt(p: Packet) -> bytes:
    """p's bytes with lengths and checksums computed afresh by scapy."""
    p = p.copy()
    for layer in (IP, UDP, TCP):
        if p.haslayer(layer):
            for f in ("chksum", "len"):
                if f in p[layer].fields:
                    del p[layer].fields[f]
    return bytes(Ether(bytes(p)))


def test_every_nf_is_listed_and_documented():
    for name in nfs.NAMES:
        mod = nfs.load(name)
        doc = mod.__doc__ or ""
        for heading in ("Expects:", "Modifies:", "Actions:", "Options:"):
            assert heading in doc, f"{name}: docstring lacks {heading}"
        assert mod.SUMMARY and "\n" not in mod.SUMMARY
    assert len(nfs.NAMES) >= 18


def test_simple_forward_and_bridge():
    pkts = [frame(sport=i) for i in range(5)]
    res = run_nf(build("simple_forward", "--dest", "4"), pkts, services=[4])
    assert res.tonf == {4: [bytes(p) for p in pkts]}
    res = run_nf(build("bridge"), pkts, in_port=1)
    assert res.out == {0: [bytes(p) for p in pkts]}
    res = run_nf(build("bridge"), pkts, in_port=5)
    assert res.drops == {"action": 5} and not res.out


# ---- firewall --------------------------------------------------------------

FW_RULES = {"default": "drop", "rules": [
    {"prefix": "10.0.0.0/8", "action": "pass"},
    {"prefix": "10.6.0.0/16", "action": "drop"},  # shadowed by the first rule
    {"prefix": "192.168.1.0/24", "action": "drop"},
    {"prefix": "192.168.0.0/16", "action": "tonf:5"},
]}


@pytest.mark.parametrize("handler", ["batch", "packet"])
@pytest.mark.parametrize("fmt", ["json", "yaml", "options"])
def test_firewall_first_match_wins(tmp_path, handler, fmt):
    path = tmp_path / f"rules.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(FW_RULES))
    elif fmt == "yaml":
        import yaml
        path.write_text(yaml.safe_dump(FW_RULES))
    given = ["--rules", str(path)] if fmt != "options" else [
        *[a for r in FW_RULES["rules"] for a in ("--rule", f"{r['prefix']}={r['action']}")],
        "--default", str(FW_RULES["default"])]
    pkts = {
        "10.6.1.1": frame(src="10.6.1.1"),        # first rule: pass
        "10.9.9.9": frame(src="10.9.9.9"),        # pass
        "192.168.1.7": frame(src="192.168.1.7"),  # drop
        "192.168.2.7": frame(src="192.168.2.7"),  # tonf:5
        "172.16.0.1": frame(src="172.16.0.1"),    # default: drop
    }
    arp = Ether() / ARP(psrc="10.0.0.1")          # not IPv4: default
    res = run_nf(build("firewall", *given, "--handler", handler), [*pkts.values(), arp], services=[5])
    assert res.out == {0: [bytes(pkts["10.6.1.1"]), bytes(pkts["10.9.9.9"])]}
    assert res.tonf == {5: [bytes(pkts["192.168.2.7"])]}
    assert res.drops == {"action": 3}


def test_firewall_rejects_bad_rules(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"rules": [{"prefix": "10.0.0.0/33"}]}))
    with pytest.raises(ConfigError, match="not an IPv4 prefix"):
        build("firewall", "--rules", str(path))
    path.write_text(json.dumps({"rules": [{"prefix": "10.0.0.0/8", "action": "explode"}]}))
    with pytest.raises(ConfigError, match="rule 1"):
        build("firewall", "--rules", str(path))


def test_firewall_takes_its_rules_one_way():
    with pytest.raises(ConfigError, match="not both and not neither"):
        build("firewall")
    with pytest.raises(ConfigError, match="not both and not neither"):
        build("firewall", "--rules", "r.yaml", "--rule", "10.0.0.0/8=drop")
    with pytest.raises(ConfigError, match="--rule 10.0.0.0/8: expected PREFIX=ACTION"):
        build("firewall", "--rule", "10.0.0.0/8")
    with pytest.raises(ConfigError, match="--rule: rule 1"):
        build("firewall", "--rule", "10.0.0.0/8=explode")


def test_firewall_with_many_rules_matches_a_python_reference(tmp_path):
    import random
    rng = random.Random(5)
    rules = []
    for _ in range(1000):
        length = rng.randint(4, 32)
        net = rng.getrandbits(32) & ((0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF)
        rules.append((net, length, rng.choice(["pass", "drop"])))
    doc = {"default": "pass", "rules": [
        {"prefix": f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/{ln}", "action": a}
        for n, ln, a in rules]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    nf = build("firewall", "--rules", str(path))
    addrs = [rng.getrandbits(32) for _ in range(3000)] + [n for n, _, _ in rules]
    for a in addrs:
        want = -1
        for i, (n, ln, _) in enumerate(rules):
            if (a >> (32 - ln)) == (n >> (32 - ln)):
                want = i
                break
        assert nf.state.verdict(a) == want


# ---- l2fwd, router, arp --------------------------------------------------

def test_l2fwd_pairs_ports_and_rewrites_macs():
    p = frame()
    res = run_nf(build("l2fwd"), [p], in_port=2)
    want = p.copy()
    want[Ether].dst, want[Ether].src = "02:00:00:00:00:03", "02:00:00:00:01:03"
    assert res.out == {3: [bytes(want)]}
    res = run_nf(build("l2fwd", "--no-mac-updating"), [p], in_port=3)
    assert res.out == {2: [bytes(p)]}


def test_router_longest_prefix_and_ttl(tmp_path):
    path = tmp_path / "routes.yaml"
    path.write_text("default: drop\nroutes:\n  - {prefix: 10.0.0.0/8, to: 'out:1'}\n"
                    "  - {prefix: 10.1.0.0/16, to: 'tonf:3'}\n")
    a, b, c = frame(dst="10.2.0.1"), frame(dst="10.1.0.1"), frame(dst="11.0.0.1")
    dying = Ether() / IP(dst="10.2.0.1", ttl=1) / UDP()
    res = run_nf(build("router", "--routes", str(path)), [a, b, c, dying], services=[3])
    wa, wb = a.copy(), b.copy()
    wa[IP].ttl = wb[IP].ttl = 63
    assert res.out == {1: [rebuilt(wa)]}
    assert res.tonf == {3: [rebuilt(wb)]}
    assert Ether(res.out[1][0])[UDP].chksum == a[UDP].chksum or True  # L4 untouched
    assert res.out[1][0][34:] == bytes(a)[34:]  # the UDP header and payload are not touched
    assert res.drops == {"action": 2}


def test_arp_response_answers_only_its_addresses():
    req = Ether(src="02:00:00:00:00:aa", dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc="02:00:00:00:00:aa", psrc="10.0.0.9", pdst="10.0.0.1")
    other = Ether(src="02:00:00:00:00:aa", dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc="02:00:00:00:00:aa", psrc="10.0.0.9", pdst="10.0.0.77")
    nf = build("arp_response", "--ip", "10.0.0.1,10.0.0.2", "--mac", "02:00:00:00:00:fe")
    res = run_nf(nf, [req, other, frame()], in_port=4)
    want = Ether(src="02:00:00:00:00:fe", dst="02:00:00:00:00:aa") / ARP(
        op=2, hwsrc="02:00:00:00:00:fe", psrc="10.0.0.1", hwdst="02:00:00:00:00:aa", pdst="10.0.0.9")
    assert res.out[4] == [bytes(want)]
    assert res.out[0] == [bytes(other), bytes(frame())]  # NEXT: the chain's next hop
    assert nf.state["answered"] == 1


# ---- load balancer and NAT -----------------------------------------------------

def test_load_balancer_round_robin_keeps_connections_and_rewrites_replies():
    nf = build("load_balancer", "--vip", "192.0.2.100", "--vport", "80",
               "--backend", "10.0.0.11:8080,10.0.0.12:8080", "--backend", "10.0.0.13:8080")
    c = [frame(src=f"198.51.100.{i}", dst="192.0.2.100", sport=5000 + i, dport=80, proto="tcp")
         for i in range(4)]
    again = c[0].copy()
    reply = frame(src="10.0.0.12", dst="198.51.100.1", sport=8080, dport=5001, proto="tcp")
    stranger = frame(src="10.0.0.12", dst="198.51.100.99", sport=8080, dport=1, proto="tcp")
    res = run_nf(nf, [*c, again, reply, stranger])
    out = res.out[0]
    backends = [Ether(p)[IP].dst for p in out[:5]]
    assert backends == ["10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.11", "10.0.0.11"]
    for p, orig in zip(out[:5], [*c, again], strict=True):
        want = orig.copy()
        want[IP].dst, want[TCP].dport = Ether(p)[IP].dst, 8080
        assert p == rebuilt(want)
    want = reply.copy()
    want[IP].src, want[TCP].sport = "192.0.2.100", 80
    assert out[5] == rebuilt(want)
    assert out[6] == bytes(stranger)


def test_load_balancer_weighted_follows_weights():
    nf = build("load_balancer", "--vip", "192.0.2.100", "--policy", "weighted", "--seed", "1",
               "--backend", "10.0.0.1@1,10.0.0.2@9")
    pkts = [frame(src="198.51.100.1", dst="192.0.2.100", sport=1000 + i) for i in range(400)]
    res = run_nf(nf, pkts)
    heavy = sum(Ether(p)[IP].dst == "10.0.0.2" for p in res.out[0])
    assert 300 < heavy < 400


def test_nat_translates_both_directions():
    nf = build("nat", "--inside", "10.0.0.0/8", "--public", "203.0.113.1", "--ports", "40000-40001")
    a = frame(src="10.0.0.5", dst="198.51.100.1", sport=1111, dport=53)
    b = frame(src="10.0.0.6", dst="198.51.100.1", sport=2222, dport=53, proto="tcp")
    c = frame(src="10.0.0.7", dst="198.51.100.1", sport=3333, dport=53)  # the pool is used up
    back_a = frame(src="198.51.100.1", dst="203.0.113.1", sport=53, dport=40000, payload=b"answer")
    back_b = frame(src="198.51.100.1", dst="203.0.113.1", sport=53, dport=40001, proto="tcp")
    unknown = frame(src="198.51.100.1", dst="203.0.113.1", sport=53, dport=40001)  # UDP: no mapping
    passing = frame(src="172.16.0.1", dst="172.16.0.2")
    res = run_nf(nf, [a, b, c, back_a, back_b, unknown, passing])
    wa, wb = a.copy(), b.copy()
    wa[IP].src, wa[UDP].sport = "203.0.113.1", 40000
    wb[IP].src, wb[TCP].sport = "203.0.113.1", 40001
    wba, wbb = back_a.copy(), back_b.copy()
    wba[IP].dst, wba[UDP].dport = "10.0.0.5", 1111
    wbb[IP].dst, wbb[TCP].dport = "10.0.0.6", 2222
    assert res.out == {0: [rebuilt(wa), rebuilt(wb), rebuilt(wba), rebuilt(wbb), bytes(passing)]}
    assert res.drops == {"action": 2}
    assert nf.state.exhausted == 1
    assert nf.state.expire(float("inf")) == 2 and len(nf.state.free) == 2


# ---- flow tracker, payload scan ---------------------------------------------

def test_flow_tracker_counts_per_flow():
    nf = build("flow_tracker")
    f1 = [frame(sport=1, payload=b"a" * 10)] * 3
    f2 = [frame(sport=2, proto="tcp", payload=b"b" * 100)] * 2
    v6 = Ether() / IPv6() / UDP()
    res = run_nf(nf, [*f1, *f2, v6, f1[0]])
    assert len(res.out[0]) == 7
    flows = {k: (int(v[0]), int(v[1])) for k, v in nf.state.flows.items()}
    src, dst = 0x0A000001, 0xC0000209
    assert flows == {(src, dst, 17, 1, 80): (4, 4 * len(f1[0])), (src, dst, 6, 2, 80): (2, 2 * len(f2[0]))}
    assert nf.state.other == 1


def test_payload_scan_drops_matches():
    nf = build("payload_scan", "--pattern", "EVIL", "--ignore-case")
    good, bad = frame(payload=b"nothing to see"), frame(payload=b"xx evil xx", proto="tcp")
    header_only = frame(src="69.86.73.76", payload=b"")  # "EVIL" in the header, not the payload
    res = run_nf(nf, [good, bad, header_only])
    assert res.out == {0: [bytes(good), bytes(header_only)]}
    assert nf.state == {"scanned": 3, "hits": 1}


# ---- AES ---------------------------------------------------------------------

KEY = "000102030405060708090a0b0c0d0e0f"


def test_aes_encrypt_then_decrypt_gives_the_original_back():
    plain = [frame(payload=bytes(range(i, i + 40))) for i in range(5)]
    v6 = Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=9, dport=9) / Raw(b"six" * 9)
    padded = Ether(bytes(frame(payload=b"ab")) + b"\x00" * 8)  # frame padding after the IP datagram
    tcp = frame(proto="tcp")
    pkts = [*plain, v6, padded, tcp]
    enc = run_nf(build("aes_encrypt", "--key", KEY), pkts).out[0]
    for before, after in zip(pkts[:-1], enc[:-1], strict=True):
        a = Ether(after)
        assert len(a[Raw].load) == len(before[Raw].load) + 16
        assert a[Raw].load[16:] != before[Raw].load
        assert bytes(a) == rebuilt(a)  # lengths and checksums are right
    assert enc[-1] == bytes(tcp)
    dec = run_nf(build("aes_decrypt", "--key", KEY), enc).out[0]
    for before, after in zip(pkts, dec, strict=True):
        want = Ether(bytes(before))
        if Padding in want:
            want = Ether(bytes(want)[:len(bytes(want)) - len(want[Padding])])
        assert after == rebuilt(want)
    wrong = run_nf(build("aes_decrypt", "--key", "ff" * 16), enc[:1]).out[0]
    assert bytes(Ether(wrong[0])[UDP].payload) != bytes(plain[0][UDP].payload)


def test_aes_rejects_a_bad_key():
    with pytest.raises(ConfigError, match="--key"):
        build("aes_encrypt", "--key", "abcd")


# ---- rate limiter, fair queue, load generator, skeleton ----------------------

def test_rate_limiter_passes_the_bucket_and_drops_the_rest():
    pkts = [frame(sport=i) for i in range(20)]
    res = run_nf(build("rate_limiter", "--rate", "1", "--bucket", "5"), pkts)
    assert res.out == {0: [bytes(p) for p in pkts[:5]]}
    assert res.drops == {"action": 15}
    res = run_nf(build("rate_limiter", "--rate", "1", "--bucket", "250", "--bytes"), pkts)
    assert len(res.out[0]) == 250 // len(pkts[0])


def test_fair_queue_interleaves_flows():
    a = [frame(sport=1, payload=b"a%d" % i) for i in range(4)]
    b = [frame(sport=2, payload=b"b%d" % i) for i in range(2)]
    c = [frame(sport=3, payload=b"c0")]
    nf = build("fair_queue")
    res = run_nf(nf, [*a, *b, *c])
    got = [bytes(Ether(p)[Raw].load) for p in res.out[0]]
    assert got == [b"a0", b"b0", b"c0", b"a1", b"b1", b"a2", b"a3"]
    assert res.held == 0 and nf.state.held == 0


def test_fair_queue_holds_what_the_rate_does_not_allow_and_drops_beyond_the_queue():
    pkts = [frame(sport=1, payload=b"%d" % i) for i in range(50)]
    nf = build("fair_queue", "--rate", "1", "--max-queue", "40")
    res = run_nf(nf, pkts)
    assert res.drops == {"action": 10}
    assert len(res.out.get(0, [])) + res.held == 40
    assert res.held >= 38  # released at most one or two at 1 packet/s


def test_load_generator_measures_its_packets():
    nf = build("load_generator", "--rate", "2000", "--count", "200")
    res = run_nf(nf, [], ttl=0.6)
    lat = nf.state
    assert lat.sent == 200 and lat.received == 200
    assert res.drops == {"action": 200}
    s = lat.summary()
    assert 0 < s["min_us"] <= s["p50_us"] <= s["max_us"] < 1e6


def test_skeleton_passes_everything():
    pkts = [frame(sport=i) for i in range(3)]
    nf = build("skeleton")
    res = run_nf(nf, pkts)
    assert res.out == {0: [bytes(p) for p in pkts]} and nf.state["packets"] == 3


def test_nat_translates_icmp_echo_by_identifier_and_drops_other_icmp():
    nf = build("nat", "--public", "203.0.113.1", "--ports", "30000-30009")
    ping = Ether() / IP(src="10.0.0.1", dst="8.8.8.8") / ICMP(type=8, id=77, seq=1) / Raw(b"abc")
    pong = Ether() / IP(src="8.8.8.8", dst="203.0.113.1") / ICMP(type=0, id=30000, seq=1) / Raw(b"abc")
    unreachable = Ether() / IP(src="10.0.0.1", dst="8.8.8.8") / ICMP(type=3, code=1)
    res = run_nf(nf, [ping, pong, unreachable])
    wp, wq = ping.copy(), pong.copy()
    wp[IP].src, wp[ICMP].id = "203.0.113.1", 30000
    wq[IP].dst, wq[ICMP].id = "10.0.0.1", 77
    for w in (wp, wq):
        del w[IP].chksum, w[ICMP].chksum
    assert res.out == {0: [bytes(Ether(bytes(wp))), bytes(Ether(bytes(wq)))]}
    assert res.drops == {"action": 1}


def test_a_burst_spread_over_services_reaches_each_in_order():
    # The router reuses its pick for a run of packets to a one-instance service;
    # switching between services inside one burst must still deliver each packet once.
    dests = [2, 3, 3, 2, 4, 4, 4, 2, 3, 7]  # 7 has no NF
    pkts = [frame(sport=i) for i in range(len(dests))]
    nf = NF("spread", service=1, quiet=True)

    @nf.batch
    def spread(b):  # type: ignore[no-untyped-def]
        b.tonf(np.array(dests[: b.n], dtype=b.dest.dtype))

    res = run_nf(nf, pkts, services=[2, 3, 4])
    for svc in (2, 3, 4):
        assert res.tonf[svc] == [bytes(p) for p, d in zip(pkts, dests, strict=True) if d == svc]
    assert res.drops == {"no_dest": 1}


def test_a_stop_before_the_loop_is_kept():
    """A SIGTERM that lands after the NF registered but before its loop began (its handler
    calls nf.stop(), as a setup hook does here) ends the loop at once; it used to be
    forgotten when the loop started, and the NF ran on."""
    nf = NF("early_stop", service=1)
    seen = []

    @nf.setup
    def stop_early(nf: NF) -> None:
        nf.stop()

    @nf.packet
    def handle(pkt, meta):
        seen.append(pkt.len)

    res = run_nf(nf, [frame() for _ in range(4)])
    assert res.reason == "stopped" and seen == []
