"""``onvm top``'s screen, from a status with rates (no manager needed)."""

from __future__ import annotations

from rich.console import Console

from onvm.cli.top import _busy, render
from onvm.web.sampler import add_rates
from tests.unit.test_web_api import make_status


def test_the_screen_shows_each_worker_and_nf_with_its_busy_share_and_cost() -> None:
    before, st = make_status(100), make_status(300)
    add_rates(before, None, 0)
    add_rates(st, before, 1e-5)  # 200 packets in 10 us: the RX worker 60 % busy at 30 ns a packet
    console = Console(record=True, width=200)
    console.print(render(st))
    text = console.export_text()
    rows = {line.split("│")[2].strip(): line for line in text.splitlines()
            if "│ RX 0" in line or "│ TX 0" in line}
    assert set(rows) == {"RX 0", "TX 0"}
    assert "60%" in rows["RX 0"] and "30" in rows["RX 0"].split("│")[6]
    nf = next(line for line in text.splitlines() if "fwd" in line)
    assert "100%" in nf and " 50 " in nf  # NF 1: 10 us of work in 10 us, 50 ns a packet


def test_a_saturated_thread_stands_out() -> None:
    busy, ns = _busy({"busy": 0.95, "ns_per_packet": 41.4})
    assert (busy.plain, busy.style, ns) == ("95%", "bold yellow", "41")
    busy, ns = _busy({"busy": 0.5, "ns_per_packet": None})
    assert (busy.plain, busy.style, ns) == ("50%", "", "-")
