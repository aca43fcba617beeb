"""fair_queue: holds packets in a queue per flow and sends them on round-robin, one per flow per turn.

Expects:   any packet (flows are told apart by the symmetric flow hash).
Modifies:  nothing; it changes the order: flows take turns.
Actions:   holds every packet; releases them with NEXT, round-robin over the flows
           with packets waiting, at most ``--rate`` per second (0: as fast as they
           come, still interleaved per burst); DROP when a flow's queue is full.
Options:   --rate PPS (0 = no limit), --max-queue N per flow (default 1024).

Held packets stay stamped with this NF's id: if it is killed, the manager
takes them back like any other packet it held.
"""

from __future__ import annotations

import argparse
import time
from collections import deque

from onvm.constants import Action
from onvm.nf import NF, from_args

SUMMARY = "per-flow queues released round-robin (holds and releases packets)"
SERVICE = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, default=0.0, help="packets per second to release, 0 = no limit")
    p.add_argument("--max-queue", type=int, default=1024, help="packets held per flow at most")


class FairQueue:
    """Queues of held slots per flow and the round-robin order of flows with packets."""

    def __init__(self, max_queue: int) -> None:
        self.queues: dict[int, deque[int]] = {}
        self.turns: deque[int] = deque()  # flows with packets waiting, in turn order
        self.max_queue = max_queue
        self.held = 0

    def add(self, slots: list[int], flows: list[int]) -> list[int]:
        """Queue slots by flow; returns the slots that found their queue full."""
        full = []
        for s, f in zip(slots, flows, strict=True):
            q = self.queues.get(f)
            if q is None:
                q = self.queues[f] = deque()
                self.turns.append(f)
            if len(q) >= self.max_queue:
                full.append(s)
            else:
                q.append(s)
                self.held += 1
        return full

    def take(self, budget: int) -> list[int]:
        """Up to ``budget`` slots, one per flow per turn."""
        out: list[int] = []
        while self.turns and len(out) < budget:
            f = self.turns.popleft()
            q = self.queues[f]
            out.append(q.popleft())
            if q:
                self.turns.append(f)
            else:
                del self.queues[f]
        self.held -= len(out)
        return out


def make(args: argparse.Namespace) -> NF:
    nf = from_args("fair_queue", args)
    fq = nf.state = FairQueue(args.max_queue)
    rate = args.rate
    clock = {"credit": 0.0, "last": time.monotonic()}

    def dispatch() -> None:
        budget = 1 << 30
        if rate > 0:
            now = time.monotonic()
            clock["credit"] = min(clock["credit"] + (now - clock["last"]) * rate, max(rate / 100, 1.0))
            clock["last"] = now
            budget = int(clock["credit"])
        slots = fq.take(budget)
        if slots:
            if rate > 0:
                clock["credit"] -= len(slots)
            nf.release(slots, Action.NEXT)

    @nf.batch
    def enqueue(b):  # type: ignore[no-untyped-def]
        full = fq.add(b.hold().tolist(), b.flow_hash.tolist())
        if full:
            nf.release(full, Action.DROP)
        dispatch()

    if rate > 0:  # without a rate, every burst is released as it comes: no timer needed

        @nf.periodic(0.001)
        def tick(nf: NF) -> None:
            dispatch()

    return nf
