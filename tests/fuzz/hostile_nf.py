"""A hostile NF for the fuzzer (test_hostile_nf.py): it forwards what it receives with
random actions and, all the while, writes random bytes wherever an NF may write: into
its RX and TX rings, its record in the region, and the slots it holds.

Usage: python hostile_nf.py MANAGER SEED WRITES_PER_BURST
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np

from onvm import NF, _hooks

manager, seed, per_burst = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
nf = NF("hostile", service=2, manager=manager, quiet=True, burst=64)
rng = np.random.default_rng(seed)
state = {"seed": seed}
NO_SLOTS = np.zeros(0, dtype=np.uint32)


@nf.batch
def handle(b):  # type: ignore[no-untyped-def]
    # Random actions and destinations, some of them nonsense, on the packets in hand...
    n = b.n
    b.action[:] = rng.integers(0, 5, n, dtype=np.uint8)
    b.dest[:] = rng.integers(0, 6, n, dtype=np.uint16)
    # ...and random bytes over their records and data, its rings and its record.
    state["seed"] = _hooks.hostile_writes(nf._region, nf.nf_id, b.slots, per_burst, state["seed"])


@nf.setup
def scribble_all_the_time(nf_: NF) -> None:
    """A second writer that races the packet loop: rings and record only (no slot is its own here)."""

    def run() -> None:
        s = seed ^ 0x5DEECE66D
        while nf_._ctx is not None:
            try:
                s = _hooks.hostile_writes(nf_._region, nf_.nf_id, NO_SLOTS, 1, s)
            except (ValueError, TypeError):
                return  # the region closed as the NF left
            time.sleep(0.002)

    threading.Thread(target=run, daemon=True).start()


nf.run()
