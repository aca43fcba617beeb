"""The gen port's traffic: size mixes, flows, checksums and rate."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
from scapy.all import IP, UDP, Ether  # type: ignore[import-untyped]

from tests.integration.conftest import fitted_rate, onvm, pcap_records, pcap_stamps


def generate(tmp_path, spec: str) -> tuple[list[bytes], float]:
    out = tmp_path / "gen.pcap"
    t0 = time.monotonic()
    r = onvm("manager", "--name", f"t{uuid.uuid4().hex[:8]}", "--port", f"gen:{spec}",
             "--port", f"pcap-out:{out}", "--default-chain", "out:1", "--no-wait", "--exit-when-done",
             "--quiet")
    assert r.returncode == 0, r.stderr
    return pcap_records(out), time.monotonic() - t0


@pytest.mark.parametrize("mix, bands", [
    # frame sizes on the wire count the 4-byte FCS, which a pcap does not hold
    ("http", [((60, 60), 0.443), ((61, 1019), 0.185), ((1020, 1514), 0.372)]),
    ("imix", [((60, 60), 7 / 12), ((566, 566), 4 / 12), ((1514, 1514), 1 / 12)]),
])
def test_size_mix(runtime, tmp_path, mix, bands):
    n = 20000
    pkts, _ = generate(tmp_path, f"mix={mix},flows=100,count={n}")
    assert len(pkts) == n
    for (lo, hi), share in bands:
        got = sum(lo <= len(p) <= hi for p in pkts) / n
        assert abs(got - share) < 0.02, (mix, lo, hi, got, share)
    assert sum(any(lo <= len(p) <= hi for (lo, hi), _ in bands) for p in pkts) == n


def test_flows_and_checksums(runtime, tmp_path):
    pkts, _ = generate(tmp_path, "size=128,flows=37,count=370")
    assert {len(p) for p in pkts} == {124}
    sources = Counter(Ether(p)[IP].src for p in pkts)
    assert len(sources) == 37 and set(sources.values()) == {10}
    for raw in pkts[:50]:
        ip = Ether(raw)[IP]
        want = ip.chksum
        del ip.chksum
        assert IP(bytes(ip))[IP].chksum == want
        assert ip[UDP].len == len(raw) - 14 - 20


def test_rate_limits(runtime, tmp_path):
    pkts, secs = generate(tmp_path, "count=3000,rate=10k")
    assert len(pkts) == 3000
    assert secs >= 0.3  # 3000 packets at 10 kpps cannot take less than 0.3 s


@pytest.mark.parametrize("rate, count", [(1, 3), (3, 10)])
def test_low_rates_hold(runtime, tmp_path, rate, count):
    """1 and 3 pps: packets one interval apart from the first on (the pcap-out
    timestamps are taken as each packet leaves), none lost at second boundaries."""
    pkts, _ = generate(tmp_path, f"count={count},rate={rate}")
    assert len(pkts) == count
    stamps = pcap_stamps(tmp_path / "gen.pcap")
    assert fitted_rate(stamps) == pytest.approx(rate, rel=0.05), stamps


def test_frames_beyond_the_slot_are_refused(runtime, tmp_path):
    """A frame the slot cannot hold is refused before anything runs, never cut to fit."""
    name = f"t{uuid.uuid4().hex[:8]}"
    for spec, slot, frame in (("size=9018", 2048, 9018), ("mix=http", 1024, 1518)):
        r = onvm("manager", "--name", name, "--port", f"gen:{spec},count=10", "--port", "null",
                 "--default-chain", "out:1", "--slot-size", str(slot), "--no-wait", "--exit-when-done")
        assert r.returncode == 1
        need = (frame - 4 + 128 + 63) // 64 * 64
        assert (f"port 0 'gen:{spec},count=10': gen: a {frame}-byte frame ({frame - 4} bytes without the "
                f"FCS) does not fit a {slot}-byte slot, whose first 128 bytes are headroom; start the "
                f"manager with --slot-size {need} or more") in r.stderr, r.stderr
    out = tmp_path / "jumbo.pcap"
    r = onvm("manager", "--name", name, "--port", "gen:size=9018,count=10", "--port", f"pcap-out:{out}",
             "--default-chain", "out:1", "--slot-size", "9152", "--no-wait", "--exit-when-done", "--quiet")
    assert r.returncode == 0, r.stderr
    assert [len(p) for p in pcap_records(out)] == [9014] * 10
