"""onvm trace's description of events, on made-up events (no region)."""

from __future__ import annotations

from onvm.constants import DropReason
from onvm.manager.traces import Names, describe, render

NAMES = Names(rule=lambda slot: {4: "udp dst port 53 -> chain dns"}.get(slot),
              chain=lambda c: {0: "default", 1: "dns"}.get(c, str(c)), nf=lambda n: f"nf{n}")


def ev(kind: int, t: int, **kw: int) -> dict[str, int]:
    base = {"rx_ns": 1000, "slot": 7, "kind": kind, "t_ns": t, "action": 0, "dest": 0, "by": 0, "nf": 0,
            "chain": 1, "hop": 0, "reason": 0, "rule": 0, "flow_hash": 0xABC, "len": 60}
    return {**base, **kw}


def test_a_packet_through_a_rule_two_nfs_and_out():
    events = [
        ev(1, 0, nf=0, reason=2, rule=5),  # RX: in port 0, decided by the rule in slot 4
        ev(2, 800, action=2, dest=1, nf=3),  # RX routes it to service 1: NF 3
        ev(2, 9000, by=3, action=2, dest=2, nf=5, hop=1),  # NF 3 -> service 2: NF 5
        ev(2, 15000, by=5, action=3, dest=1, hop=2),  # NF 5: out port 1
        ev(2, 16000, by=0, action=3, dest=1, hop=2),  # the TX worker sends it
    ]
    (p,) = describe(events, NAMES)
    assert p["classified"] == "rule" and p["rule"] == "udp dst port 53 -> chain dns" and p["chain"] == "dns"
    assert [h["by"] for h in p["hops"]] == ["RX", "manager", "NF 3 (nf3)", "NF 5 (nf5)", "manager"]
    assert [h.get("action") for h in p["hops"]] == [None, "tonf", "tonf", "out", "out"]
    assert p["hops"][1]["nf"] == 3 and p["hops"][2]["nf"] == 5 and p["end"] == "out port 1"
    assert p["hops"][3]["t_us"] == 15.0
    text = render([p], {"remaining": 0, "lost": 0})
    assert "in port 0, rule 'udp dst port 53 -> chain dns' -> chain dns" in text
    assert "to service 2: NF 5 (nf5)" in text


def test_a_drop_ends_the_packet_and_a_reused_slot_is_another_packet():
    events = [ev(1, 0), ev(2, 500, action=2, dest=1, nf=3),
              ev(3, 4000, by=3, reason=DropReason.ACTION),
              ev(1, 0, rx_ns=5000), ev(3, 100, rx_ns=5000, reason=DropReason.NO_DEST)]
    first, second = describe(events, NAMES)
    assert first["end"] == "dropped by NF 3: action" and first["classified"] == "default chain"
    assert second["end"] == "dropped by manager: no_dest"
    assert describe([ev(2, 10, by=2, action=2, dest=1, nf=4)], NAMES)[0]["end"] == "in flight"


def test_a_packet_an_nf_made_starts_at_that_nf():
    events = [ev(1, 0, by=4, nf=0xFFFF, reason=4, action=3, dest=1, chain=0),  # NF 4 injected it, OUT 1
              ev(2, 300, by=4, action=3, dest=1), ev(2, 2000, by=0, action=3, dest=1)]
    (p,) = describe(events, NAMES)
    assert p["classified"] == "injected" and p["in_port"] is None and p["end"] == "out port 1"
    assert p["hops"][0]["by"] == "NF 4 (nf4)" and p["hops"][0]["what"] == "injected, out"
    assert "made by an NF" in render([p], {"remaining": 0, "lost": 0})
