"""Native entry points an NF can call: bounded, whatever it passes, and no view outlives its packet.

Each case that used to crash the NF's process runs in a child interpreter, so a
regression shows as a failed test with the child's exit status, not as a dead
test run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP  # type: ignore[import-untyped]
from scapy.layers.l2 import Ether  # type: ignore[import-untyped]

from onvm import _native
from onvm.nf import NF
from onvm.testing import run_nf


def run_child(code: str) -> str:
    """Run ``code`` in a fresh interpreter; return its stdout, fail on any crash or error."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"child exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.parametrize("count", [2**62, 2**61 + 1, 2**63 - 1, 1 << 40])
def test_prefix_table_lookup_refuses_a_count_beyond_its_arrays(count: int) -> None:
    out = run_child(f"""
        import numpy as np
        from onvm import _native
        t = _native.LPM(-1)
        t.add(0x0a000000, 8, 1)
        addrs = np.full(4, 0x0a000001, dtype=np.uint32)
        out = np.zeros(4, dtype=np.int32)
        try:
            t.lookup_into(addrs, out, {count})
        except ValueError as e:
            print("refused:", e)
        t.lookup_into(addrs, out, 4)
        print(out.tolist())
    """)
    assert "refused:" in out
    assert "[1, 1, 1, 1]" in out


def test_prefix_table_lookup_refuses_a_negative_count() -> None:
    t = _native.LPM(-1)
    with pytest.raises(ValueError):
        t.lookup_into(np.zeros(4, dtype=np.uint32), np.zeros(4, dtype=np.int32), -1)


def test_gather_called_init_again_keeps_what_it_was_built_with() -> None:
    out = run_child("""
        import os, tempfile
        import numpy as np
        from onvm import _native
        d = tempfile.mkdtemp()
        path = os.path.join(d, "r")
        r = _native.Region.create(path, "g", pool_size=64, slot_size=512, ring_size=64)
        try:
            slots = np.zeros(8, dtype=np.uint32)
            ttl = np.zeros(8, dtype=np.uint8)
            g = _native.Gather(r, slots, [(_native.GATHER_FIELDS["ttl"][0], ttl)])
            fields = sorted(_native.GATHER_FIELDS.items(), key=lambda kv: kv[1][0])
            others = [np.zeros((8, 16) if size == 16 else 8, dtype=np.uint8 if size in (1, 16) else
                               np.uint16 if size == 2 else np.uint32) for _, (_, size) in fields]
            for _ in range(50):  # every field each time: far more buffers than a Gather has room for
                g.__init__(r, slots, [(fid, a) for (_, (fid, _)), a in zip(fields, others)])
            s = r.alloc(1)[0]
            r.write(s, bytes.fromhex("ffffffffffff0000000000010800" "4500001c00000000" "3f11") + bytes(10))
            slots[0] = s
            g(1)
            print("ttl", int(ttl[0]), "others", sum(int(a.sum()) for a in others))
            r.free([s])
        finally:
            r.close()
            os.rmdir(d)
    """)
    assert "ttl 63 others 0" in out


@pytest.mark.parametrize("kind", ["_native.NFContext", "_native.Manager", "_hooks.Ring", "_native.Gather"])
def test_native_objects_cannot_be_made_half_built(kind: str) -> None:
    out = run_child(f"""
        from onvm import _hooks, _native
        t = {kind}
        try:
            obj = t.__new__(t)
            print("made", obj)
        except TypeError as e:
            print("refused:", e)
    """)
    assert "refused:" in out


def test_manager_and_context_called_init_again_keep_their_region() -> None:
    out = run_child("""
        import os, tempfile
        from onvm import _hooks, _native
        d = tempfile.mkdtemp()
        r = _native.Region.create(os.path.join(d, "r"), "i", pool_size=64, slot_size=512, ring_size=64)
        other = _native.Region.create(os.path.join(d, "o"), "o", pool_size=64, slot_size=512, ring_size=64)
        try:
            r.nf_activate(1, 1, 0, os.getpid(), 0, "x")
            ctx = _native.NFContext(r, 1)
            m = _native.Manager(r)
            ctx.__init__(other, 1)
            m.__init__(other, 3, 3)
            other.close()
            m.add_null(0)
            m.start()
            m.stop()
            print("sent", ctx.inject(bytes(60), 0, 0, 3))
            ring = _hooks.Ring(8)
            ring.__init__(16)
            print("ring", ring.capacity)
            del ctx, m
        finally:
            r.close()
            os.rmdir(d)
    """)
    assert "sent 3" in out
    assert "ring 7" in out


FRAME = bytes(Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IP(src="10.0.0.1", dst="10.0.0.2")
              / UDP(sport=1, dport=2) / (b"payload!" * 4))


def test_packet_views_kept_past_the_handler_raise() -> None:
    out = run_child("""
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether
        from onvm.nf import NF
        from onvm.testing import run_nf
        frame = bytes(Ether(dst="02:00:00:00:00:02") / IP() / UDP() / b"abcdefgh")
        kept = []
        nf = NF("keeper", service=1, quiet=True)
        @nf.packet
        def handle(pkt, meta):
            assert bytes(pkt.data) == frame  # live inside the call
            kept.extend((pkt.data, pkt.payload))
            meta.out(0)
        res = run_nf(nf, [frame, frame])
        print("out", len(res.out[0]), "kept", len(kept))
        for view in kept:
            for use in (lambda: bytes(view), lambda: view.__setitem__(0, 1)):
                try:
                    use()
                    print("usable")
                except ValueError:
                    print("released")
    """)
    assert "out 2 kept 4" in out
    assert out.count("released") == 8 and "usable" not in out


def test_packet_view_of_the_previous_packet_is_released_for_the_next() -> None:
    seen: list[str] = []
    previous: list[memoryview] = []
    nf = NF("switcher", service=1, quiet=True)

    @nf.packet
    def handle(pkt, meta):  # type: ignore[no-untyped-def]
        if previous:
            try:
                previous[0].tobytes()
                seen.append("readable")
            except ValueError:
                seen.append("released")
        previous[:] = [pkt.data]
        meta.drop()

    run_nf(nf, [FRAME] * 3)
    assert seen == ["released", "released"]


def test_a_slice_kept_past_the_region_never_reads_unmapped_memory() -> None:
    # A slice or a numpy array made from pkt.data cannot be recalled; it keeps the mapping
    # alive instead, so reading it after the NF left reads stale bytes, never unmapped memory.
    out = run_child("""
        import numpy as np
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether
        from onvm.nf import NF
        from onvm.testing import run_nf
        kept = []
        nf = NF("slicer", service=1, quiet=True)
        @nf.packet
        def handle(pkt, meta):
            kept.append(pkt.data[0:6])
            kept.append(np.frombuffer(pkt.payload, dtype=np.uint8))
            meta.drop()
        frame = bytes(Ether(dst="02:00:00:00:00:02") / IP() / UDP() / b"abcdefgh")
        run_nf(nf, [frame] * 50)
        total = 0
        for view in kept:
            total += len(bytes(view))
        print("read", total)
    """)
    assert "read 700" in out
