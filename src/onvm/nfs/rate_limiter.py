"""rate_limiter: a token bucket: passes packets up to a rate, with bursts, and drops the excess.

Expects:   any packet.
Modifies:  nothing.
Actions:   NEXT within the rate; DROP beyond it.
Options:   --rate PPS, --bucket N (bucket size, default: a tenth of a second's worth,
           at least 1), --bytes (the rate and burst count bytes, not packets).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from onvm.errors import ConfigError
from onvm.nf import NF, from_args

SUMMARY = "token bucket: passes up to a rate (packets or bytes per second), drops the rest"
SERVICE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, required=True, help="packets (or bytes) per second")
    p.add_argument("--bucket", type=float, default=None, help="bucket size (default rate/10)")
    p.add_argument("--bytes", action="store_true", help="count bytes instead of packets")


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; starts full."""

    def __init__(self, rate: float, burst: float, clock: object = time.monotonic) -> None:
        if rate <= 0 or burst <= 0:
            raise ConfigError("rate and burst must be positive")
        self.rate, self.burst = rate, burst
        self.clock = clock
        self.tokens = burst
        self.last = self.clock()  # type: ignore[operator]

    def admit(self, costs: np.ndarray) -> int:
        """How many of the packets (in order, costing ``costs``) pass; takes their tokens."""
        now = self.clock()  # type: ignore[operator]
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        n = int(np.searchsorted(np.cumsum(costs), self.tokens, side="right"))
        if n:
            self.tokens -= float(costs[:n].sum())
        return n


def make(args: argparse.Namespace) -> NF:
    burst = args.bucket if args.bucket is not None else max(args.rate / 10, 1.0)
    bucket = TokenBucket(args.rate, burst)
    by_bytes = args.bytes
    nf = from_args("rate_limiter", args)
    nf.state = bucket

    @nf.batch
    def limit(b):  # type: ignore[no-untyped-def]
        costs = b.length if by_bytes else np.ones(b.n, dtype=np.uint32)
        b.drop(slice(bucket.admit(costs), None))

    return nf
