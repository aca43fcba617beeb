"""pcap and pcapng input: formats, replay timing, and damaged files.

A damaged file must stop its port with an error naming the file and the byte
offset of the damage, after the packets before it went through, and the manager
must stay healthy (it exits normally once the input is done).  The expected
offsets come from a small reference reader written here in Python.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import fitted_rate, onvm, pcap_records, pcap_stamps


def frame(i: int, size: int = 60) -> bytes:
    head = bytes.fromhex("020000000002020000000001") + b"\x08\x00" + i.to_bytes(4, "big")
    return (head + bytes(range(256)) * 40)[:size]


def classic(recs: list[tuple[int, bytes]] | list[bytes], snaplen: int = 65535,
            nsec: bool = False, big: bool = False) -> bytes:
    e = ">" if big else "<"
    out = struct.pack(e + "IHHiIII", 0xA1B23C4D if nsec else 0xA1B2C3D4, 2, 4, 0, 0, snaplen, 1)
    for k, r in enumerate(recs):
        ts, data = r if isinstance(r, tuple) else (k * 1000, r)
        sec, frac = divmod(ts, 10**9 if nsec else 10**6)
        out += struct.pack(e + "IIII", sec, frac, len(data), len(data)) + data
    return out


def pcapng(pkts: list[tuple[int, bytes]], tsresol: int = 9, simple_last: bool = False) -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        n = len(body) + 12
        return struct.pack("<II", btype, n) + body + struct.pack("<I", n)

    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    opts = struct.pack("<HHB3x", 9, 1, tsresol) + struct.pack("<HH", 0, 0)
    out += block(1, struct.pack("<HHI", 1, 0, 65535) + opts)
    out += block(5, struct.pack("<III", 0, 0, 0))  # an interface statistics block: skipped
    for k, (ts, data) in enumerate(pkts):
        if simple_last and k == len(pkts) - 1:
            out += block(3, struct.pack("<I", len(data)) + data)
        else:
            out += block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data)
    return out


def replay(tmp_path: Path, data: bytes, *opts: str, query: str = "") -> tuple[int, str, list[bytes]]:
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(data)
    r = onvm("manager", "--name", f"t{uuid.uuid4().hex[:8]}", "--port", f"pcap:{src}{query}",
             "--port", f"pcap-out:{out}", "--default-chain", "out:1", "--no-wait", "--exit-when-done",
             "--stats", "0", *opts)
    return r.returncode, r.stderr, pcap_records(out) if out.exists() else []


def test_classic_variants_are_read(runtime, tmp_path):
    pkts = [frame(i, 60 + i) for i in range(50)]
    for kw in ({}, {"nsec": True}, {"big": True}, {"nsec": True, "big": True}):
        rc, err, got = replay(tmp_path, classic(pkts, **kw))
        assert rc == 0, err
        assert got == pkts, kw


def test_pcapng_is_read(runtime, tmp_path):
    pkts = [(k * 1000, frame(k, 60 + 3 * k)) for k in range(40)]
    rc, err, got = replay(tmp_path, pcapng(pkts, simple_last=True))
    assert rc == 0, err
    assert got == [d for _, d in pkts]


def test_capture_timing(runtime, tmp_path):
    """Five packets 150 ms apart: replayed at their own pace, the last leaves >= 600 ms after the first."""
    pkts = [(k * 150_000_000, frame(k)) for k in range(5)]
    out = tmp_path / "out.pcap"
    for query, span in (("?rate=capture", 0.6), ("?rate=capture&speed=2", 0.3)):
        rc, err, got = replay(tmp_path, pcapng(pkts), query=query)
        assert rc == 0 and len(got) == 5, err
        stamps = pcap_stamps(out)
        assert stamps[-1] - stamps[0] >= span * 0.95, (query, stamps)


def test_paced_replay_holds_its_rate(runtime, tmp_path):
    """rate=5 over eight packets: 200 ms apart from the first to the last, with no
    interval lost when a second turns over."""
    rc, err, got = replay(tmp_path, classic([frame(k) for k in range(8)]), query="?rate=5")
    assert rc == 0 and len(got) == 8, err
    assert fitted_rate(pcap_stamps(tmp_path / "out.pcap")) == pytest.approx(5, rel=0.05)


GOOD = [frame(i, 60 + i) for i in range(10)]
HEADER = 24


def offset_of(k: int) -> int:
    """Byte offset of record k in classic(GOOD)."""
    return HEADER + sum(16 + len(p) for p in GOOD[:k])


def with_record(k: int, data: bytes, caplen: int | None = None) -> bytes:
    """classic(GOOD) with record k replaced (its caplen field possibly lying)."""
    body = classic(GOOD)
    at = offset_of(k)
    old = 16 + len(GOOD[k])
    rec = struct.pack("<IIII", 0, 0, len(data) if caplen is None else caplen, len(data)) + data
    return body[:at] + rec + body[at + old:]


@pytest.mark.parametrize(
    "name, data, opts, sent, message",
    [
        ("cut mid-record", classic(GOOD)[: offset_of(6) + 16 + 20], [], 6,
         f"truncated record: 66 bytes announced, 20 in the file at byte {offset_of(6)}"),
        ("cut record header", classic(GOOD)[: offset_of(4) + 9], [], 4,
         f"truncated record header (9 of 16 bytes) at byte {offset_of(4)}"),
        ("caplen above snaplen", classic(GOOD, snaplen=64), [], 5,
         f"captured length 65 exceeds the snaplen 64 at byte {offset_of(5)}"),
        ("absurd caplen", with_record(2, b"x" * 60, caplen=0x7FFFFFF0), [], 2,
         f"corrupt record (captured length 2147483632) at byte {offset_of(2)}"),
    ],
)
def test_damaged_classic_file(runtime, tmp_path, name, data, opts, sent, message):
    rc, err, got = replay(tmp_path, data, *opts)
    assert rc == 0, err  # the manager stays healthy and exits once the input is done
    assert got == GOOD[:sent], name
    assert f"pcap {tmp_path / 'in.pcap'}: {message}" in err, err


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\xd4\xc3\xb2\xa1" + b"\0" * 10, "truncated file header (14 bytes; a pcap header has 24)"),
        (b"GIF89a" + b"\0" * 40, "not a pcap or pcapng file (magic 0x38464947 at byte 0)"),
        (classic(GOOD)[:20] + struct.pack("<I", 105), "link type 105 at byte 20 is not one this port reads "
         "(Ethernet 1, Linux cooked 113 and 276, raw IP 101, 228 and 229)"),
    ],
)
def test_unreadable_file_header(runtime, tmp_path, data, message):
    rc, err, got = replay(tmp_path, data)
    assert rc == 1
    assert f"pcap {tmp_path / 'in.pcap'}: {message}" in err, err
    assert err.count("\n") <= 2, err  # one clear line, no traceback


def test_damaged_pcapng(runtime, tmp_path):
    pkts = [(k * 1000, frame(k, 60 + k)) for k in range(10)]
    good = pcapng(pkts)
    cut = good[:-30]  # the last block loses its end
    blen = 12 + 20 + 72  # the last packet block: 69 bytes padded to 72
    last = len(good) - blen
    rc, err, got = replay(tmp_path, cut)
    assert rc == 0, err
    assert got == [d for _, d in pkts[:9]]
    assert f"truncated block: {blen} bytes announced, {blen - 30} in the file at byte {last}" in err, err


def test_pcap_out_snaplen(runtime, tmp_path):
    pkts = [frame(i, 200) for i in range(20)]
    src, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    src.write_bytes(classic(pkts))
    r = onvm("manager", "--name", f"t{uuid.uuid4().hex[:8]}", "--port", f"pcap:{src}",
             "--port", f"pcap-out:{out}?snaplen=96", "--default-chain", "out:1", "--no-wait",
             "--exit-when-done", "--quiet")
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert struct.unpack("<I", data[16:20])[0] == 96  # the file header's snaplen
    assert pcap_records(out) == [p[:96] for p in pkts]
    assert struct.unpack("<IIII", data[24:40])[2:] == (96, 200)  # caplen, original length


def model_read(data: bytes, room: int = 2048 - 128) -> tuple[list[bytes], int | None]:
    """Reference reader for little-endian classic pcap: the packets, and the offset of the damage."""
    snaplen = struct.unpack("<I", data[16:20])[0]
    pos, out = 24, []
    while pos < len(data):
        if pos + 16 > len(data):
            return out, pos
        cap = struct.unpack("<I", data[pos + 8:pos + 12])[0]
        if pos + 16 + cap > len(data) or (snaplen and cap > snaplen):
            return out, pos
        if 0 < cap <= room:  # empty and oversize records are skipped
            out.append(data[pos + 16:pos + 16 + cap])
        pos += 16 + cap
    return out, None


@pytest.mark.parametrize("seed", range(6))
def test_mutated_files_against_the_model(runtime, tmp_path, seed):
    import random

    rnd = random.Random(seed)
    pkts = [frame(i, rnd.randint(60, 1500)) for i in range(30)]
    data = bytearray(classic(pkts, snaplen=1400))
    if seed % 2:
        data = data[: rnd.randint(25, len(data) - 1)]  # cut anywhere
    else:
        k = rnd.randrange(len(pkts))  # a lying caplen
        at = 24 + sum(16 + len(p) for p in pkts[:k]) + 8
        data[at:at + 4] = struct.pack("<I", rnd.choice([0, 1, 59, 2000, 70000, 0xFFFFFFFF]))
    want, bad_at = model_read(bytes(data))
    rc, err, got = replay(tmp_path, bytes(data))
    assert rc == 0, err
    assert got == want
    if bad_at is None:
        assert "error" not in err
    else:
        assert f"at byte {bad_at}" in err, (bad_at, err)


def test_pcap_input_truncated_while_read_stops_the_port_not_the_manager(deploy, tmp_path):
    from tests.integration.conftest import wait_for

    src = tmp_path / "in.pcap"
    src.write_bytes(classic([frame(i, 1000) for i in range(4000)]))  # about 4 MiB
    dep = deploy(["--port", f"pcap:{src}?loop=0&rate=20k", "--port", "null", "--default-chain", "out:1",
                  "--no-wait"])
    wait_for(lambda: dep.status()["ports"][0]["rx"] > 200, what="packets from the file")
    os.truncate(src, 5000)  # the pages the reader is about to read are gone
    port = wait_for(lambda: (p := dep.status()["ports"][0])["done"] and p, what="the port to stop")
    assert "the file shrank while being read" in port["error"], port
    assert dep.procs[0].poll() is None  # the manager lives on
    src.write_bytes(b"\0" * 64)  # rewritten in place under the same name: still nothing but errors
    assert dep.status()["ports"][1]["tx"] == port["rx"]
    dep.stop()
    assert dep.procs[0].returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: the disk a pcap-out file fills."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(d)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("count", [400, 3000])  # all of it in the last flush / a flush while running
def test_pcap_out_on_a_full_disk_reports_the_packets_it_lost(runtime, small_disk, count):
    out = small_disk / "out.pcap"
    r = onvm("manager", "--name", f"t{uuid.uuid4().hex[:8]}", "--port", f"gen:size=1000,count={count}",
             "--port", f"pcap-out:{out}", "--default-chain", "out:1", "--no-wait", "--exit-when-done",
             "--stats", "0")
    assert r.returncode == 0, r.stderr
    m = re.search(r"port 1 pcap-out:\S+: in 0 pkts / 0 B, out (\d+) pkts.*write failed \(No space left on "
                  r"device\): (\d+) packets lost.*; (\d+) packets lost after being counted as sent", r.stderr)
    assert m, r.stderr
    sent, lost, lost_again = (int(g) for g in m.groups())
    assert lost == lost_again > 0
    kept = pcap_records(out)  # the file ends on a whole record: tcpdump reads it
    assert len(kept) == sent - lost
    assert all(len(p) == 996 for p in kept)
    assert out.stat().st_size == 24 + len(kept) * (16 + 996)
