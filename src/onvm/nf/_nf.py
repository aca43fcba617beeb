"""The NF class: register with a manager, run a handler on packets, leave cleanly.

Theory of operation
-------------------
``NF.run()`` connects to the manager's control socket and registers; the
manager answers with an NF id and the path of its shared region.  The NF maps
the region, runs its setup hook, tells the manager it has started (only then
does its service receive packets) and enters the native run loop, which calls
the Python handler once per burst (``@nf.batch``) or once per packet
(``@nf.packet``).  The loop ends when the manager asks (a flag in the region),
on SIGINT/SIGTERM, at the time-to-live or the packet limit; the NF then says it
is stopping, runs its teardown hook, prints its summary and closes the socket.
Closing the socket is what tells the manager the NF is gone, so an NF killed
by any signal is noticed at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from onvm import _native, latency
from onvm.actions import Action, DropReason
from onvm.control.client import Client
from onvm.errors import ConfigError, OnvmError, RegionError
from onvm.nf._batch import Batch

Handler = Callable[..., Any]


class NF:
    """A network function.

    >>> nf = NF("counter", service=1)
    >>> @nf.batch
    ... def handle(b):
    ...     b.next()
    >>> nf.run()  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        service: int | None = None,
        *,
        manager: str = "onvm",
        instance: int | None = None,
        burst: int = 256,
        ttl: float = 0.0,
        limit: int = 0,
        default_action: Action = Action.NEXT,
        default_dest: int = 0,
        quiet: bool = False,
        csv: str | None = None,
    ) -> None:
        if service is not None and not 0 <= service < _native.MAX_SERVICES:
            raise ConfigError(f"service {service} is out of range (0..{_native.MAX_SERVICES - 1})")
        if not 1 <= burst <= _native.BURST_MAX:
            raise ConfigError(f"burst {burst} is out of range (1..{_native.BURST_MAX})")
        if ttl < 0 or limit < 0:
            raise ConfigError("time-to-live and packet limit cannot be negative")
        self.name = name
        self.service = service
        self.manager = manager
        self.instance = instance
        self.burst = burst
        self.ttl = ttl
        self.limit = limit
        self.default_action = Action(default_action)
        self.default_dest = default_dest
        self.quiet = quiet
        self.csv = csv  # a file to append this NF's summary row to at exit
        self.nf_id = 0
        self.stop_reason = ""
        self._handler: Handler | None = None
        self._batch_mode = True
        self._setup: list[Handler] = []
        self._teardown: list[Handler] = []
        self._periodic: Handler | None = None
        self._period = 1.0
        self._ctx: Any = None
        self._region: Any = None
        self._client: Client | None = None
        self._started = 0.0

    # ---- decorators -----------------------------------------------------
    def packet(self, fn: Handler) -> Handler:
        """Register ``fn(pkt, meta)``, called once per packet."""
        self._handler, self._batch_mode = fn, False
        return fn

    def batch(self, fn: Handler) -> Handler:
        """Register ``fn(batch)``, called once per burst with numpy arrays."""
        self._handler, self._batch_mode = fn, True
        return fn

    def setup(self, fn: Handler) -> Handler:
        """Register ``fn(nf)``, called once the NF has joined its service.

        Packets that arrive meanwhile wait in the NF's ring until the handler
        loop starts, so setup may inject packets or load tables first."""
        self._setup.append(fn)
        return fn

    def teardown(self, fn: Handler) -> Handler:
        """Register ``fn(nf)``, called after the loop ends."""
        self._teardown.append(fn)
        return fn

    def periodic(self, seconds: float = 1.0) -> Callable[[Handler], Handler]:
        """Register ``fn(nf)`` to be called about every ``seconds``."""
        if seconds <= 0:
            raise ConfigError("a periodic hook needs a positive period")

        def deco(fn: Handler) -> Handler:
            self._periodic, self._period = fn, seconds
            return fn

        return deco

    # ---- while running ----------------------------------------------------
    def inject(self, data: Any, action: Action = Action.NEXT, dest: int = 0, count: int = 1) -> int:
        """Send a new packet (bytes or a scapy packet) ``count`` times; returns how many went."""
        if self._ctx is None:
            raise OnvmError("inject() needs a running NF (call it from setup or a handler)")
        raw = bytes(data)
        return int(self._ctx.inject(raw, int(action), dest, count))

    def service_ready(self, service: int) -> bool:
        """Whether ``service`` has a running instance (so packets sent there arrive)."""
        return self._region is not None and bool(self._region.pick(service, 0))

    def wait_for_service(self, service: int, timeout: float = 30.0) -> bool:
        """Wait until ``service`` has a running instance; False on timeout or stop."""
        deadline = time.monotonic() + timeout
        while not self.service_ready(service):
            if time.monotonic() >= deadline or (self._ctx is None):
                return False
            time.sleep(0.005)
        return True

    def stop(self) -> None:
        """Leave the run loop after the current burst."""
        if self._ctx is not None:
            self._ctx.stop()

    @property
    def stats(self) -> dict[str, Any]:
        """This NF's counters (rx, tx, actions, drops by reason, ...)."""
        if self._region is None or not self.nf_id:
            return {}
        info: dict[str, Any] = self._region.nf_info(self.nf_id)
        return info

    # ---- the run --------------------------------------------------------
    def run(self) -> str:
        """Register, run until stopped, clean up; returns why the loop ended."""
        if self._handler is None:
            raise ConfigError(f"NF {self.name} has no handler: decorate one with @nf.packet or @nf.batch")
        client = Client(self.manager)
        self._client = client
        try:
            reply = client.request(
                "register",
                name=self.name,
                service=self.service,
                instance=self.instance,
                pid=os.getpid(),
            )
            self.nf_id = int(reply["nf_id"])
            self.service = int(reply["service"])
            self.instance = int(reply["instance"])
            try:
                self._region = _native.Region.attach(reply["region"])
            except _native.RegionError as e:
                raise RegionError(e.strerror or str(e)) from None
            self._ctx = _native.NFContext(self._region, self.nf_id)
            return self._loop(client)
        finally:
            self._ctx = None
            client.close()
            if self._region is not None:
                self._region.close()
                self._region = None

    def _loop(self, client: Client) -> str:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum: int, frame: Any) -> None:
            self.stop_reason = signal.Signals(signum).name
            self.stop()

        for s in previous:
            signal.signal(s, on_signal)
        batch = Batch(self.burst) if self._batch_mode else None
        user = self._handler
        assert user is not None  # checked in run()
        handler: Handler = user
        if batch is not None:
            set_n = batch._set

            def handler(n: int) -> None:
                set_n(n)
                user(batch)

        periodic = None
        if self._periodic is not None:
            hook = self._periodic

            def periodic() -> None:
                hook(self)

        try:
            client.request("start")
            for fn in self._setup:
                fn(self)
            self._started = time.monotonic()
            reason = self._ctx.run(
                handler,
                batch=batch is not None,
                arrays=batch.arrays if batch is not None else None,
                burst=self.burst,
                limit=self.limit,
                ttl=self.ttl,
                periodic=periodic,
                period=self._period,
                default_action=int(self.default_action),
                default_dest=self.default_dest,
            )
            if self.stop_reason:
                reason = self.stop_reason
            self.stop_reason = reason
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        try:
            client.request("stopping", reason=self.stop_reason)
        except OnvmError:
            pass  # the manager may be shutting down already
        for fn in self._teardown:
            fn(self)
        summary = self.summary()
        if not self.quiet:
            print(format_summary(summary), file=sys.stderr)
        if self.csv:
            write_csv_row(self.csv, summary)
        return self.stop_reason

    def summary(self) -> dict[str, Any]:
        """This NF's figures at exit (also its CSV row): counters, rates and latency."""
        st = self.stats
        secs = max(time.monotonic() - self._started, 1e-9) if self._started else 0.0
        lat = latency.summary(_native.nf_latency(self._region, self.nf_id)
                              if self._region is not None and self.nf_id else None)
        row: dict[str, Any] = {
            "name": self.name, "nf_id": self.nf_id, "service": self.service, "instance": self.instance,
            "seconds": round(secs, 3), "rx": st.get("rx", 0), "tx": st.get("tx", 0),
            "rx_bytes": st.get("rx_bytes", 0), "bursts": st.get("bursts", 0),
            "mpps": round(st.get("rx", 0) / secs / 1e6, 4) if secs else 0.0,
            "handler_us_per_burst": round(st.get("handler_ns", 0) / max(st.get("bursts", 0), 1) / 1e3, 3),
        }
        acts = st.get("actions", (0,) * len(Action))
        for a in Action:
            row[f"act_{a.name.lower()}"] = acts[a] if a < len(acts) else 0
        drops = st.get("drops", (0,) * _native.DROP_COUNT)
        row["dropped"] = sum(drops)
        for i, v in enumerate(drops):
            row[f"drop_{DropReason(i).name.lower()}"] = v
        for k in ("p50_us", "p99_us", "max_us", "mean_us"):
            row[f"latency_{k}"] = lat[k]
        row["stopped"] = self.stop_reason
        return row


def format_summary(row: dict[str, Any]) -> str:
    """The lines an NF prints when it stops."""
    by_reason = ", ".join(f"{k[5:]} {v}" for k, v in row.items() if k.startswith("drop_") and v)
    acts = ", ".join(f"{k[4:]} {v}" for k, v in row.items() if k.startswith("act_") and v)
    lines = [
        f"NF {row['name']} (id {row['nf_id']}, service {row['service']}, instance {row['instance']}): "
        f"{row['rx']} in, {row['tx']} onward, {row['dropped']} dropped"
        + (f" ({by_reason})" if by_reason else "")
        + f" in {row['seconds']:.1f} s ({row['mpps']:.2f} Mpps); stopped: {row['stopped']}",
        f"  actions: {acts or 'none'}; {row['bursts']} bursts, "
        f"{row['handler_us_per_burst']:.2f} us in the handler per burst",
    ]
    if row["latency_p50_us"] or row["latency_max_us"]:
        lines.append(f"  latency RX to handled (us): p50 {row['latency_p50_us']:.1f}, "
                     f"p99 {row['latency_p99_us']:.1f}, max {row['latency_max_us']:.1f}, "
                     f"mean {row['latency_mean_us']:.1f}")
    return "\n".join(lines)


def write_csv_row(path: str, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV file ``path``, with a header line when the file is new or empty."""
    import csv

    try:
        with open(path, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if f.tell() == 0:
                w.writeheader()
            w.writerow(row)
    except OSError as e:
        print(f"NF {row['name']}: cannot write the summary to {path}: {e.strerror}", file=sys.stderr)


def add_common_arguments(parser: argparse.ArgumentParser, service: int | None = None) -> None:
    """The options every NF takes on the command line."""
    g = parser.add_argument_group("NF options")
    g.add_argument("--name", default="onvm", help="manager to join (default: onvm)")
    g.add_argument("--service", type=int, default=service, help=f"service id (default: {service})")
    g.add_argument("--instance", type=int, default=None, help="instance number (default: next free)")
    g.add_argument("--ttl", type=float, default=0.0, help="seconds to run, 0 = until stopped")
    g.add_argument("--limit", type=int, default=0, help="packets to handle, 0 = no limit")
    g.add_argument("--burst", type=int, default=256, help="packets per burst (1..512, default 256)")
    g.add_argument("--quiet", action="store_true", help="no summary at exit")
    g.add_argument("--csv", default=None, metavar="FILE",
                   help="append this NF's summary (counters, latency) to a CSV file at exit")


def nf_from_args(name: str, args: argparse.Namespace, **kw: Any) -> NF:
    """Build an NF from the common options."""
    return NF(
        name,
        args.service,
        manager=args.name,
        instance=args.instance,
        burst=args.burst,
        ttl=args.ttl,
        limit=args.limit,
        quiet=args.quiet,
        csv=args.csv,
        **kw,
    )
