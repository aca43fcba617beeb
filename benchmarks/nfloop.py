"""The NF run loop alone, in this process: a profiler's view of ``onvm bench loop``.

    python benchmarks/nfloop.py [--packets N] [--burst B]
    valgrind --tool=callgrind python benchmarks/nfloop.py --packets 1000000

One NF whose batch handler sends every packet back to its own service (what
``speed_tester`` does in ``onvm bench loop``) runs in a private region, with
2048 packets circulating, through the real native loop (``onvm.testing``) until
it has handled N packets.  No manager, no other process: the figure printed is
the CPU time per packet of the loop itself (process time, so a share of a busy
machine taken by others does not count), and under callgrind the instructions
per packet are exact (run it for N and 2N packets and subtract).
"""

from __future__ import annotations

import argparse
import time

from onvm import testing
from onvm.constants import Action
from onvm.nf import NF
from onvm.nfs.speed_tester import udp_packet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--packets", type=int, default=20_000_000, help="packets the loop handles (default 20M)")
    p.add_argument("--burst", type=int, default=256, help="the NF's burst (default 256, as onvm nf)")
    args = p.parse_args()
    if args.packets < 1:
        p.error(f"--packets {args.packets}: expected at least 1")
    nf = NF("nfloop", service=1, burst=args.burst)

    @nf.batch
    def handle(b):  # type: ignore[no-untyped-def]
        b.action[:] = Action.TONF
        b.dest[:] = 1

    t0, w0 = time.process_time(), time.perf_counter()
    res = testing.run_nf(nf, [udp_packet(64)] * 2048, limit=args.packets, pool_size=4096, ring_size=4096)
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    print(f"{cpu / args.packets * 1e9:.2f} ns of CPU per packet, {args.packets / wall / 1e6:.1f} Mpps "
          f"({res.stats['rx']} packets, {res.reason})")


if __name__ == "__main__":
    main()
