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
by any signal is noticed at once.  The other way round, a watcher thread sees
the socket hang up the moment the manager dies, whatever killed it, and ends
the NF (see :class:`_ManagerWatch`): an NF never outlives its manager by more
than a second or so.
"""

from __future__ import annotations

import _thread
import argparse
import collections
import inspect
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from onvm import _native, env, latency
from onvm.constants import DROP_REASON_NAMES, FLOW_ORIGINS, Action, drop_counts
from onvm.control.client import Client
from onvm.errors import ConfigError, OnvmError
from onvm.flows.keys import FlowKey
from onvm.flows.rules import check_timeouts
from onvm.manager.launch import Recipe
from onvm.nf._batch import Batch, check_fields

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
        manager: str | None = None,
        instance: int | None = None,
        burst: int = 256,
        ttl: float = 0.0,
        limit: int = 0,
        default_action: Action = Action.NEXT,
        default_dest: int = 0,
        quiet: bool = False,
        cpus: tuple[int, ...] | list[int] | None = None,
        csv: str | None = None,
    ) -> None:
        # A topology runner starts NF scripts with these set (onvm run).
        env_service, env_instance, env_cpus = env.nf_placement()
        if manager is None:
            manager = env.manager_name()
        if service is None:
            service = env_service
        if instance is None:
            instance = env_instance
        if cpus is None and env_cpus:
            from onvm.manager.placement import parse_cpus

            cpus = parse_cpus(env_cpus)
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
        self.cpus = tuple(cpus) if cpus else None
        self.cpu: int | None = None  # where the manager placed it
        self.csv = csv  # a file to append this NF's summary row to at exit
        self.nf_id = 0
        self.stop_reason = ""
        self.state: Any = None  # whatever the NF keeps (tables, counters), for hooks and tests
        self._handler: Handler | None = None
        self._batch_mode = True
        self._fields: tuple[str, ...] = ()
        self._jit = False
        self._setup: list[Handler] = []
        self._teardown: list[Handler] = []
        self._periodic: Handler | None = None
        self._period = 1.0
        self._ctx: Any = None
        self._region: Any = None
        self._client: Client | None = None
        self._started = 0.0
        self._chain_ids: dict[str, int] = {}
        self._on_message: Handler | None = None
        self._inbox: collections.deque[tuple[dict[str, Any], Any]] = collections.deque()
        self._watch: _ManagerWatch | None = None  # ends the NF if its manager dies (while running)
        self.messages_dropped = 0  # messages lost because the inbox was full

    # ---- decorators -----------------------------------------------------
    def packet(self, fn: Handler) -> Handler:
        """Register ``fn(pkt, meta)``, called once per packet."""
        self._handler, self._batch_mode = fn, False
        return fn

    def batch(self, fn: Handler | None = None, *, fields: Any = (), jit: bool = False) -> Any:
        """Register ``fn(batch)``, called once per burst with numpy arrays.

        ``@nf.batch(fields=["ipv4_src", "dst_port"])`` also gathers those parsed
        fields into arrays of the batch (only the fields named are gathered).
        ``@nf.batch(jit=True)`` marks a kernel ``fn(action, dest, ipv4_src, ...)``
        whose parameter names pick batch arrays; it is compiled with numba when
        numba is installed and runs as plain Python otherwise, with the same results.
        """
        names = check_fields(fields)

        def deco(f: Handler) -> Handler:
            self._handler, self._batch_mode, self._fields, self._jit = f, True, names, jit
            return f

        return deco(fn) if fn is not None else deco

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

    def message(self, fn: Handler) -> Handler:
        """Register ``fn(nf, sender, data)`` for messages from other NFs or the manager.

        It runs in the packet loop between bursts, so it may touch the same
        state as the packet handler without locks."""
        self._on_message = fn
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

    def release(self, slots: Any, action: Action = Action.NEXT, dest: int = 0) -> int:
        """Send on packets held with ``meta.hold()`` / ``batch.hold()``; returns how many were held.

        A slot this NF does not hold (released already, or never held) is ignored."""
        if self._ctx is None:
            raise OnvmError("release() needs a running NF")
        if hasattr(slots, "tolist"):
            slots = slots.tolist()
        return int(self._ctx.release(slots, int(action), dest))

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

    # ---- flow director ----------------------------------------------------
    def _key(self, flow: Any) -> tuple[Any, ...]:
        if isinstance(flow, FlowKey):
            return flow.native()
        slot = getattr(flow, "slot", None)
        if slot is None or self._region is None:
            raise ConfigError("a flow is a FlowKey or the packet being handled")
        key = self._region.flow_key(slot)
        if key is None:
            raise ConfigError("the packet is not IPv4 or IPv6: it has no flow")
        return key

    def _chain(self, name: str) -> int:
        if name not in self._chain_ids:
            self._chain_ids = {n: cid for cid, n, _ in self._region.chains()} if self._region else {}
        if name not in self._chain_ids:
            raise OnvmError(f"no chain named '{name}'", code="not_found")
        return self._chain_ids[name]

    def steer(self, flow: Any, chain: str, idle: float = 0.0, hard: float = 0.0) -> None:
        """Send ``flow`` (a FlowKey, or the packet in hand) through ``chain`` from now on.

        The entry takes effect for the flow's next packets at RX; ``idle`` and
        ``hard`` are timeouts in seconds (0: none)."""
        check_timeouts(idle, hard)
        try:
            self._region.flow_put(self._key(flow), self._chain(chain), round(idle * 1000), round(hard * 1000),
                                  FLOW_ORIGINS["nf"])
        except MemoryError as e:
            raise OnvmError(str(e), code="busy") from None

    def flow(self, flow: Any) -> dict[str, Any] | None:
        """The flow table entry of ``flow`` (chain id, counters, timeouts), or None."""
        entry: dict[str, Any] | None = self._region.flow_get(self._key(flow))
        return entry

    def unsteer(self, flow: Any) -> bool:
        """Remove ``flow``'s entry; True if there was one."""
        return bool(self._region.flow_del(self._key(flow)))

    def send(self, data: Any, *, service: int | None = None, nf: int | None = None) -> int:
        """Send JSON-able ``data`` to NF ``nf`` or to every instance of ``service``; returns deliveries."""
        if self._client is None:
            raise OnvmError("send() needs a running NF")
        if (service is None) == (nf is None):
            raise ConfigError("send() takes exactly one of service= or nf=")
        return int(self._client.send(data, nf=nf, service=service)["delivered"])

    def scale(self, count: int) -> dict[str, Any]:
        """Ask the manager to run ``count`` instances of this NF's service (copies of this one)."""
        if self._client is None:
            raise OnvmError("scale() needs a running NF")
        return self._client.scale(count, self.service)

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
        watch: _ManagerWatch | None = None
        try:
            reply = client.register(self.name, self.service, self.instance, os.getpid(),
                                    list(self.cpus) if self.cpus else None, Recipe.of_this_process())
            self.cpu = reply.get("cpu")
            if self.cpu is not None:
                try:
                    os.sched_setaffinity(0, {self.cpu})
                except OSError:
                    pass  # a container limited to other CPUs: run where we are allowed
            self.nf_id = int(reply["nf_id"])
            self.service = int(reply["service"])
            self.instance = int(reply["instance"])
            self._region = _native.Region.attach(reply["region"])
            self._ctx = _native.NFContext(self._region, self.nf_id)
            watch = self._watch = _ManagerWatch(self, client.fileno())
            return self._loop(client)
        finally:
            if watch is not None:
                watch.close()
                self._watch = None
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
        inbox = self._open_inbox() if self._on_message is not None else None
        try:
            client.start()
            self._run_native(messages=self._deliver if inbox is not None else None)
        finally:
            if self._watch is not None:
                self._watch.ended.set()
            for s, h in previous.items():
                signal.signal(s, h)
            if inbox is not None:
                inbox.close()
        try:
            client.stopping(self.stop_reason)
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

    def _open_inbox(self) -> _Inbox:
        client = Client(self.manager)
        client.subscribe(self.nf_id)
        return _Inbox(self, client)

    def _deliver(self) -> None:
        handler = self._on_message
        while self._inbox and handler is not None:
            sender, data = self._inbox.popleft()
            handler(self, sender, data)

    def _make_handler(self) -> tuple[Handler, Batch | None]:
        user = self._handler
        if user is None:
            raise ConfigError(f"NF {self.name} has no handler: decorate one with @nf.packet or @nf.batch")
        if not self._batch_mode:
            return user, None
        batch = Batch(self.burst, self._fields)
        batch.bind(self._region, self._ctx)
        set_n = batch._set
        if self._jit:
            kernel = _compile(user)
            params = list(inspect.signature(user).parameters)
            for p in params:
                if not hasattr(batch, p):
                    raise ConfigError(f"jit handler parameter {p!r} names no batch array "
                                      f"(request parsed fields with fields=[...])")

            def handler(n: int) -> None:
                set_n(n)
                kernel(*[getattr(batch, p) for p in params])
        else:

            def handler(n: int) -> None:
                set_n(n)
                user(batch)

        return handler, batch

    def _run_native(self, messages: Callable[[], None] | None = None) -> str:
        """Setup hooks, then the native loop until it ends; sets and returns stop_reason."""
        handler, batch = self._make_handler()
        periodic = None
        if self._periodic is not None:
            hook = self._periodic

            def periodic() -> None:
                hook(self)

        for fn in self._setup:
            fn(self)
        self._started = time.monotonic()
        if self.stop_reason == MANAGER_GONE:
            return self.stop_reason  # it went during setup: no loop to run
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
            messages=messages,
        )
        if self.stop_reason:
            reason = self.stop_reason
        self.stop_reason = reason
        if reason == "region":
            print(f"NF {self.name}: the region's file was cut short under it: stopping", file=sys.stderr)
        return reason

    def _print_summary(self) -> None:
        st = self.stats
        secs = max(time.monotonic() - self._started, 1e-9)
        drops = sum(st.get("drops", ()))
        by_reason = ", ".join(f"{k} {v}" for k, v in drop_counts(st.get("drops", ())).items())
        print(
            f"NF {self.name} (id {self.nf_id}, service {self.service}, instance {self.instance}): "
            f"{st.get('rx', 0)} in, {st.get('tx', 0)} onward, {drops} dropped"
            + (f" ({by_reason})" if by_reason else "")
            + (f", {st['parse_errors']} malformed" if st.get("parse_errors") else "")
            + f" in {secs:.1f} s ({st.get('rx', 0) / secs / 1e6:.2f} Mpps); stopped: {self.stop_reason}",
            file=sys.stderr,
        )
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
            row[f"drop_{DROP_REASON_NAMES[i]}"] = v
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


MANAGER_GONE = "manager gone"
GONE_EXIT = 3.0  # seconds an NF whose manager died may take to leave before it exits hard


class _ManagerWatch:
    """Ends the NF when its manager dies: the control socket hangs up at once, however it died.

    A thread polls the socket for hang-up only (it never reads: replies stay for
    the main thread).  On a hang-up it stops the loop; if the loop has not ended a
    second later (a handler that does not return) it interrupts the main thread
    as Ctrl-C would, and if the NF is still there after GONE_EXIT seconds it exits
    hard: an NF never outlives its manager, whose region may be reused.
    """

    def __init__(self, nf: NF, fd: int) -> None:
        self.nf = nf
        self.fd = fd
        self.ended = threading.Event()  # the packet loop has returned
        self.left = threading.Event()  # the NF is leaving: nothing to watch
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._watch, name="onvm-nf-watch", daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self.fd, 0)  # POLLHUP and POLLERR are always reported
        poller.register(self._wake_r, select.POLLIN)
        while not any(fd == self.fd for fd, _ in poller.poll()):
            if self.left.is_set():
                return
        if self.left.is_set():
            return
        nf = self.nf
        nf.stop_reason = MANAGER_GONE
        nf.stop()
        if not self.ended.wait(1.0):
            _thread.interrupt_main()  # the loop did not end: a handler that does not return
        if self.left.wait(GONE_EXIT - 1.0):
            return
        print(f"NF {nf.name}: its manager is gone and it did not stop within {GONE_EXIT:g} s: exiting",
              file=sys.stderr, flush=True)
        os._exit(75)

    def close(self) -> None:
        self.left.set()
        os.write(self._wake_w, b"\0")
        self.thread.join(timeout=1.0)
        os.close(self._wake_r)
        os.close(self._wake_w)


class _Inbox:
    """A second control connection whose reader thread queues messages for the loop."""

    def __init__(self, nf: NF, client: Client) -> None:
        self.nf = nf
        self.client = client
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, name="onvm-nf-inbox", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.done.is_set():
            try:
                event = self.client.next_event(timeout=0.2)
            except OnvmError:
                return
            if event is None or event.name != "message":
                continue
            if len(self.nf._inbox) >= MAX_INBOX:
                self.nf.messages_dropped += 1
                continue
            self.nf._inbox.append((event.data.get("from", {}), event.data.get("data")))
            ctx = self.nf._ctx
            if ctx is not None:
                ctx.notify()

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=1)
        self.client.close()


MAX_INBOX = 1024


def _compile(fn: Handler) -> Handler:
    """fn compiled by numba when it is installed, else fn itself."""
    try:
        import numba  # type: ignore[import-not-found]
    except ImportError:
        return fn
    return numba.njit(cache=False)(fn)  # type: ignore[no-any-return]


def common_arguments(parser: argparse.ArgumentParser, service: int | None = None) -> None:
    """Add the options every NF takes on the command line (``--name``, ``--service``, ...) to ``parser``."""
    g = parser.add_argument_group("NF options")
    g.add_argument("--name", default=env.manager_name(),
                   help="manager to join (default: $ONVM_MANAGER, else onvm)")
    g.add_argument("--service", type=int, default=service, help=f"service id (default: {service})")
    g.add_argument("--instance", type=int, default=None, help="instance number (default: next free)")
    g.add_argument("--ttl", type=float, default=0.0, help="seconds to run, 0 = until stopped")
    g.add_argument("--limit", type=int, default=0, help="packets to handle, 0 = no limit")
    g.add_argument("--burst", type=int, default=256, help="packets per burst (1..512, default 256)")
    g.add_argument("--quiet", action="store_true", help="no summary at exit")
    g.add_argument("--cpus", default=None, metavar="LIST",
                   help="CPUs the manager may place this NF on, e.g. 1 or 2-3 (default: its NF CPUs)")
    g.add_argument("--csv", default=None, metavar="FILE",
                   help="append this NF's summary (counters, latency) to a CSV file at exit")


def from_args(name: str, args: argparse.Namespace, **kw: Any) -> NF:
    """An NF named ``name`` built from the common options in ``args`` (see :func:`common_arguments`);
    ``kw`` are further :class:`NF` arguments."""
    return NF(
        name,
        args.service,
        manager=args.name,
        instance=args.instance,
        burst=args.burst,
        ttl=args.ttl,
        limit=args.limit,
        quiet=args.quiet,
        cpus=_cpus(args.cpus),
        csv=args.csv,
        **kw,
    )


def _cpus(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    from onvm.manager.placement import parse_cpus

    return parse_cpus(text)
