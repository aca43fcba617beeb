"""The demo behind ``make demo``: traffic through a chain of NFs, live stats, a summary.

A manager generates the paper's HTTP size mix on port 0 and sends it through
service 1 (basic_monitor) and service 2 (two simple_forward instances sharing
the load by flow hash) out of port 1, a pcap file.  After ten seconds the
manager stops its NFs and prints the summary.
"""

from __future__ import annotations

import os
import struct
import sys
import time

from onvm._deploy import Deployment

SECONDS = 10


def count_pcap(path: str) -> int:
    """Records in a classic pcap file written by pcap-out."""
    n = 0
    with open(path, "rb") as f:
        if len(f.read(24)) < 24:
            return 0
        while len(hdr := f.read(16)) == 16:
            f.seek(struct.unpack("<IIII", hdr)[2], os.SEEK_CUR)
            n += 1
    return n


def main() -> int:
    out_dir = os.path.abspath("demo-out")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "out.pcap")
    ports = ["--port", "gen:mix=http,flows=512,rate=200k", "--port", f"pcap-out:{out}?snaplen=128"]
    args = [*ports, "--default-chain", "1,2,out:1", "--duration", str(SECONDS)]
    print(f"demo: gen (HTTP mix, 200 kpps) -> basic_monitor -> 2 x simple_forward -> {out}",
          flush=True)
    with Deployment(f"demo-{os.getpid()}", args, verbose=True) as dep:
        manager = dep.start_manager()
        nfs = [
            dep.start_nf(["basic_monitor", "--service", "1", "--interval", "0"]),
            dep.start_nf(["simple_forward", "--service", "2"]),
            dep.start_nf(["simple_forward", "--service", "2"]),
        ]
        status = manager.wait(timeout=SECONDS + 30)
        codes = [p.wait(timeout=15) for p in nfs]
    written = count_pcap(out)
    print(f"demo: {written} packets written to {out}; manager exit {status}, NFs exit {codes}")
    return 0 if status == 0 and not any(codes) and written > 0 else 1


if __name__ == "__main__":
    t0 = time.monotonic()
    rc = main()
    print(f"demo: done in {time.monotonic() - t0:.1f} s", flush=True)
    sys.exit(rc)
