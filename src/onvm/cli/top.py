"""``onvm top``: a full-screen live view of one manager, drawn with rich.

It asks the manager for ``status`` over the control socket every interval and
turns counters into rates itself, so it needs no web endpoint.  Ctrl-C leaves.
"""

from __future__ import annotations

import time
from typing import Any

from onvm.control.client import Client
from onvm.errors import OnvmError
from onvm.web.sampler import add_rates, worker_name


def _si(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.2f}{unit}"
    return f"{v:.0f}"


def _lat(lat: dict[str, Any]) -> str:
    if not lat or not lat.get("count"):
        return "-"
    values = (lat["p50_us"], lat["p99_us"], lat["max_us"])
    return "/".join(f"{v:.1f}" if v < 100 else f"{v:.0f}" for v in values)


SATURATED = 0.9  # a thread this busy is what limits the chain's rate: top shows it in bold


def _busy(t: dict[str, Any]) -> tuple[Any, str]:
    """A thread's busy share and cost per packet as top shows them."""
    from rich.text import Text

    ns, busy = t.get("ns_per_packet"), t.get("busy", 0.0)
    return (Text(f"{100 * busy:.0f}%", style="bold yellow" if busy >= SATURATED else ""),
            "-" if ns is None else f"{ns:.0f}")


def render(st: dict[str, Any]) -> Any:
    """The screen for one status (with rates) as a rich renderable."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from onvm.manager.packing import summary
    from onvm.manager.stats import describe_pool

    m, pool = st["manager"], st["pool"]
    packing = summary(m.get("packing") or {})
    head = Text.assemble(
        (f"onvm[{m['name']}]", "bold"), f"  pid {m['pid']}  up {m['uptime']:.0f} s  ",
        f"chain {m['default_chain']}  {describe_pool(pool)}",
        (f"  web {m['web']}" if m.get("web") else ""), (f"\n{packing}" if packing else ""))
    ports = Table(title="ports", expand=True, title_justify="left")
    for col in ("id", "uri", "rx/s", "tx/s", "rx", "tx", "drops", "e2e p50/p99/max us"):
        ports.add_column(col, justify="right" if col not in ("uri",) else "left")
    for p in st["ports"]:
        drops = sum(p["drops"].values())
        ports.add_row(str(p["id"]), p["uri"], _si(p.get("rx_pps", 0)), _si(p.get("tx_pps", 0)),
                      str(p["rx"]), str(p["tx"]), Text(str(drops), style="red" if drops else ""),
                      _lat(p.get("latency", {})))
    # Busy: the share of the last interval a thread spent on bursts (its polling left out); a
    # thread near 100% is where the chain's rate is decided.  ns/pkt: what each packet cost it.
    workers = Table(title="workers", expand=True, title_justify="left")
    for col in ("id", "role", "cpu", "pkts/s", "busy", "ns/pkt"):
        workers.add_column(col, justify="left" if col == "role" else "right")
    for w in st.get("workers", []):
        workers.add_row(str(w["id"]), worker_name(w),
                        "-" if w.get("cpu") is None else str(w["cpu"]), _si(w.get("pps", 0)), *_busy(w))
    nfs = Table(title="NFs", expand=True, title_justify="left")
    ring_size = m.get("ring_size", 0) or 1
    for col in ("id", "name", "svc", "state", "cpu", "rx/s", "tx/s", "rx", "drops", "ring", "busy", "ns/pkt",
                "p50/p99/max us"):
        nfs.add_column(col, justify="left" if col in ("name", "state") else "right")
    for n in st["nfs"]:
        drops = sum(n["drops"].values())
        ring = f"{n['rx_ring']} ({100 * n['rx_ring'] / ring_size:.0f}%)"
        nfs.add_row(str(n["id"]), n["name"], f"{n['service']}.{n['instance']}", n["state"],
                    str(n.get("cpu_now", n.get("cpu"))), _si(n.get("rx_pps", 0)), _si(n.get("tx_pps", 0)),
                    str(n["rx"]), Text(str(drops), style="red" if drops else ""), ring, *_busy(n),
                    _lat(n.get("latency", {})))
    if not st["nfs"]:
        nfs.add_row("", "(none)", *[""] * 11)
    events = Text("\n".join(time.strftime("%H:%M:%S ", time.localtime(e["time"])) + e["text"]
                            for e in st.get("events", [])[-8:]) or "(none)")
    return Group(Panel(head), ports, workers, nfs, Panel(events, title="events", title_align="left"))


def run_top(name: str, interval: float = 1.0, iterations: int = 0) -> int:
    """Show the live view until Ctrl-C (or ``iterations`` screens, for tests)."""
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        raise OnvmError("onvm top needs the 'rich' package (pip install 'pyonvm[top]')") from None
    console = Console()
    prev: dict[str, Any] | None = None
    prev_t = 0.0
    shown = 0
    with Client(name) as c:
        st = c.status()
        add_rates(st, None, 0.0)
        with Live(render(st), console=console, screen=console.is_terminal, auto_refresh=False) as live:
            try:
                while True:
                    now = time.monotonic()
                    st = c.status()
                    add_rates(st, prev, now - prev_t)
                    prev, prev_t = st, now
                    live.update(render(st), refresh=True)
                    shown += 1
                    if iterations and shown >= iterations:
                        break
                    time.sleep(interval)
            except KeyboardInterrupt:
                pass
    return 0
