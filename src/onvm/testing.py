"""Run an NF on crafted packets in this process, through the real native loop.

Theory of operation
-------------------
``run_nf`` makes a private region (in a temporary directory), activates the NF
in it as NF 1 of its service and, for each service in ``services``, a sink NF
that only collects.  It puts the packets into the NF's RX ring as a manager's
RX worker would (parsed, at hop 0 of chain 0, whose next hop is port 0), runs
the NF's native loop until it has handled them (or for ``ttl`` seconds), then
empties every ring: packets sent out of a port are in ``out[port]``, packets
sent to a service in ``tonf[service]``; drops are counted by reason.  Packets
the NF still holds are counted in ``held`` and returned to the pool.  The
region is removed afterwards, whatever happened.

>>> res = run_nf(nf, [bytes(Ether() / IP() / UDP())])   # doctest: +SKIP
>>> res.out[0]                                          # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from onvm import _hooks, _native
from onvm.constants import Action, drop_counts
from onvm.nf._nf import NF

NF_ID = 1


@dataclass
class Result:
    """What came out of one ``run_nf``."""

    out: dict[int, list[bytes]] = field(default_factory=dict)  # port -> packets, in order
    tonf: dict[int, list[bytes]] = field(default_factory=dict)  # service -> packets, in order
    drops: dict[str, int] = field(default_factory=dict)  # reason -> count
    held: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    @property
    def forwarded(self) -> list[bytes]:
        """Every packet that left, ports first then services, each in order."""
        return [p for k in sorted(self.out) for p in self.out[k]] + \
            [p for k in sorted(self.tonf) for p in self.tonf[k]]


def make_nf(program: Any, *argv: str) -> NF:
    """The NF that ``onvm nf PROGRAM ARGV...`` would run, built but not running.

    ``program`` is an NF module (or object with ``make``), or anything ``onvm nf``
    takes: an example's name, a file's path, an installed NF's name."""
    from onvm import nfs

    obj = nfs.find(program).load() if isinstance(program, str) else program
    name = program if isinstance(program, str) else getattr(program, "__name__", "nf")
    return obj.make(nfs.parser(obj, f"onvm nf {name}").parse_args(list(argv)))  # type: ignore[no-any-return]


def run_nf(nf: NF, packets: Iterable[Any], *, in_port: int = 0, services: Sequence[int] = (),
           ttl: float = 0.0, limit: int | None = None, pool_size: int = 4096,
           ring_size: int = 4096) -> Result:
    """Run ``nf`` on ``packets`` (bytes or scapy packets); see the module's docstring.

    The loop ends after ``limit`` packets (default: as many as were given) or,
    when ``ttl`` is set, after ``ttl`` seconds."""
    raw = [bytes(p) for p in packets]
    service = nf.service if nf.service is not None else 1
    d = tempfile.mkdtemp(prefix="onvm-nftest-")
    region = _native.Region.create(os.path.join(d, "r.region"), "nftest", pool_size=pool_size,
                                   ring_size=ring_size)
    saved = (nf.limit, nf.ttl, nf.service)
    try:
        region.nf_activate(NF_ID, service, 0, os.getpid(), 0, nf.name[:31])
        region.set_service(service, [(NF_ID, 0)])
        sinks = {}
        for i, svc in enumerate(s for s in dict.fromkeys(services) if s != service):
            sinks[svc] = NF_ID + 1 + i
            region.nf_activate(sinks[svc], svc, 0, os.getpid(), 0, f"sink{svc}")
            region.set_service(svc, [(sinks[svc], 0)])
        region.set_chain(0, [(int(Action.TONF), service), (int(Action.OUT), 0)])
        _hooks.deliver(region, NF_ID, raw, in_port, 0)
        nf.service, nf.nf_id, nf.stop_reason = service, NF_ID, ""
        nf.ttl = ttl
        nf.limit = (len(raw) if not ttl else 0) if limit is None else limit
        nf._region = region
        nf._ctx = _native.NFContext(region, NF_ID)
        res = Result()
        try:
            if nf.limit or nf.ttl:
                res.reason = nf._run_native()
            for fn in nf._teardown:
                fn(nf)
        finally:
            res.stats = region.nf_info(NF_ID)
            nf._ctx = None
            nf._region = None
        for data, _action, port, *_ in _hooks.drain(region, NF_ID, True):
            res.out.setdefault(port, []).append(data)
        for svc, nf_id in [(service, NF_ID), *sinks.items()]:
            for data, *_ in _hooks.drain(region, nf_id, False):
                res.tonf.setdefault(svc, []).append(data)
        res.drops = drop_counts(res.stats["drops"])
        res.held = region.owners().get(NF_ID, 0)
        if res.held:
            region.nf_set_draining(NF_ID)
            region.nf_reclaim(NF_ID)
        return res
    finally:
        nf.limit, nf.ttl, nf.service = saved
        region.close()
        shutil.rmtree(d, ignore_errors=True)
