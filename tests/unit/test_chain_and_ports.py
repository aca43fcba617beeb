"""Chain specs and port URIs: parsing, and errors that name the bad part."""

from __future__ import annotations

import pytest

from onvm.constants import Action
from onvm.errors import ConfigError
from onvm.flows.chain import Hop, format_chain, parse_chain
from onvm.ports.uri import parse_port


def test_chain_round_trip():
    hops = parse_chain("1, 2,OUT:0")
    assert hops == [Hop(Action.TONF, 1), Hop(Action.TONF, 2), Hop(Action.OUT, 0)]
    assert format_chain(hops) == "1,2,out:0"
    assert parse_chain("drop") == [Hop(Action.DROP)]
    assert len(parse_chain(",".join(["3"] * 16))) == 16


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "at least one hop"),
        ("1,x", "hop 2 'x': expected a service id, out:PORT or drop"),
        ("1,out:a", "hop 2 'out:a': expected out:PORT"),
        ("99", "hop 1 '99': service 99 is out of range"),
        ("out:16", "port 16 is out of range"),
        ("out:0,1", "hop 1 'out:0' ends the chain but more hops follow it"),
        (",".join(["1"] * 17), "at most 16 hops"),
    ],
)
def test_chain_errors_name_the_hop(spec, message):
    with pytest.raises(ConfigError) as e:
        parse_chain(spec)
    assert message in str(e.value)


def test_gen_uri_defaults_and_suffixes():
    p = parse_port("gen:size=128,flows=1k,rate=2.5M,mix=http,proto=tcp,count=10")
    assert p.kind == "gen" and p.is_input
    assert p.options == {"size": 128, "flows": 1000, "rate": 2_500_000, "count": 10, "seed": 0,
                         "mix": 1, "proto": 6, "sport": 1024, "dport": 80, "src": 0x0A000001,
                         "dst": 0x0A010001}
    q = parse_port("gen:src=192.168.1.1,dst=10.9.9.9,sport=5000,dport=443")
    assert (q.options["src"], q.options["dst"], q.options["sport"], q.options["dport"]) == (
        0xC0A80101, 0x0A090909, 5000, 443)
    assert parse_port("gen:").options["size"] == 64
    assert parse_port("null").is_output


def test_pcap_uris(tmp_path):
    f = tmp_path / "a.pcap"
    f.write_bytes(b"")
    p = parse_port(f"pcap:{f}?loop=3&rate=1k")
    assert (p.kind, p.path, p.options) == ("pcap", str(f), {"loop": 3, "rate": 1000, "timing": 0,
                                                       "speed_milli": 1000, "loss": 0})
    assert parse_port(f"pcap:{f}?loss=1").options["loss"] == 1
    q = parse_port(f"pcap-out:{tmp_path}/o.pcap?snaplen=96")
    assert q.options == {"snaplen": 96} and q.is_output


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("bogus:1", "unknown kind 'bogus'"),
        ("gen:size=12", "size=12 is out of range (64..9018)"),
        ("gen:size=big", "size=big is not a number"),
        ("gen:colour=red", "unknown option 'colour'"),
        ("gen:mix=odd", "mix=odd"),
        ("gen:proto=sctp", "proto=sctp"),
        ("gen:src=10.0.0.300", "src=10.0.0.300 is not an IPv4 address"),
        ("gen:dport=70000", "dport=70000 is out of range"),
        ("gen:flows", "'flows' should be key=value"),
        ("pcap:/no/such/file.pcap", "no such file /no/such/file.pcap"),
        ("pcap-out:/no/such/dir/x.pcap", "directory /no/such/dir does not exist"),
        ("null:x", "null takes no options"),
    ],
)
def test_port_errors_name_the_uri(uri, message):
    with pytest.raises(ConfigError) as e:
        parse_port(uri)
    assert f"port '{uri}'" in str(e.value) and message in str(e.value)


def test_pcap_capture_timing_uri(tmp_path):
    f = tmp_path / "a.pcap"
    f.write_bytes(b"")
    p = parse_port(f"pcap:{f}?rate=capture&speed=2.5")
    assert p.options["timing"] == 1 and p.options["rate"] == 0 and p.options["speed_milli"] == 2500
    with pytest.raises(ConfigError, match="speed applies to rate=capture"):
        parse_port(f"pcap:{f}?speed=2")
    with pytest.raises(ConfigError, match="speed=fast is not a number"):
        parse_port(f"pcap:{f}?rate=capture&speed=fast")


def test_afpacket_and_tap_uris():
    p = parse_port("afpacket:veth0?queues=2&promisc=0")
    assert p.kind == "afpacket" and p.path == "veth0" and p.is_input and p.is_output
    assert p.options["queues"] == 2 and p.options["promisc"] == 0 and p.options["bypass"] == 1
    assert parse_port("tap:tap7").path == "tap7"
    for bad, msg in [("afpacket:", "interface name"), ("afpacket:a-very-long-name0", "interface name"),
                     ("afpacket:eth0?queues=9", "out of range"), ("afpacket:eth0?block_size=5000",
                     "power of two"), ("tap:t0?x=1", "no options"), ("afpacket:eth0?color=1", "unknown")]:
        with pytest.raises(ConfigError, match=msg):
            parse_port(bad)


def test_afxdp_uris(monkeypatch: pytest.MonkeyPatch):
    from onvm import _native

    monkeypatch.setattr(_native, "HAVE_AFXDP", 1)
    p = parse_port("afxdp:veth0?queues=2&mode=skb&ring=512&fill=256&promisc=0")
    assert p.kind == "afxdp" and p.path == "veth0" and p.is_input and p.is_output
    assert p.options == {"queues": 2, "mode": 3, "ring": 512, "fill": 256, "promisc": 0}
    assert parse_port("afxdp:eth1").options == {"queues": 0, "mode": 0, "ring": 2048, "fill": 0, "promisc": 1}
    modes = [parse_port(f"afxdp:e?mode={m}").options["mode"] for m in ("auto", "zc", "copy", "skb")]
    assert modes == [0, 1, 2, 3]
    for bad, msg in [("afxdp:", "interface name"), ("afxdp:eth0?mode=fast", r"mode=fast \(expected auto, zc"),
                     ("afxdp:eth0?ring=1000", "not a power of two"), ("afxdp:eth0?ring=32", "out of range"),
                     ("afxdp:eth0?queues=9", "out of range"),
                     ("afxdp:eth0?fill=4096", "more than the RX ring holds"),
                     ("afxdp:eth0?blocks=4", "unknown option 'blocks'")]:
        with pytest.raises(ConfigError, match=msg):
            parse_port(bad)


def test_afxdp_refused_without_libxdp(monkeypatch: pytest.MonkeyPatch):
    """A build without libxdp's and libbpf's headers refuses the port before anything
    starts, naming what to install."""
    from onvm import _native
    from onvm.manager.manager import ManagerConfig

    monkeypatch.setattr(_native, "HAVE_AFXDP", 0)
    with pytest.raises(ConfigError, match=r"apt-get install libxdp-dev libbpf-dev"):
        ManagerConfig(ports=["afxdp:eth0"])


def test_afxdp_config_checks(monkeypatch: pytest.MonkeyPatch):
    from onvm import _native
    from onvm.manager.manager import ManagerConfig

    monkeypatch.setattr(_native, "HAVE_AFXDP", 1)
    with pytest.raises(ConfigError, match="2 queues need as many RX workers"):
        ManagerConfig(ports=["afxdp:eth0?queues=2"])
    with pytest.raises(ConfigError, match="2048 or 4096 bytes: --slot-size 9216 will not do"):
        ManagerConfig(ports=["afxdp:eth0"], slot_size=9216)
    cfg = ManagerConfig(ports=["afxdp:eth0?queues=2"], rx_workers=2, slot_size=4096)
    assert cfg.port_specs[0].kind == "afxdp"


def test_pool_line_shows_what_ports_hold():
    from onvm.manager.stats import describe_pool

    assert describe_pool({"free": 10, "total": 64}) == "pool 10/64 slots free"
    assert describe_pool({"free": 10, "lent": 50, "in_use": 4, "total": 64}) == (
        "pool 10 free + 50 lent to ports + 4 in use = 64 slots")


def test_live_stats_show_port_drops_by_reason():
    from onvm.manager.stats import StatsPrinter

    port = {"id": 0, "kind": "afpacket", "rx": 10, "tx": 5, "drops": {"kernel": 7, "ring_full": 2},
            "done": False}
    status = {"manager": {"name": "x", "uptime": 1.0}, "pool": {"free": 1, "total": 2},
              "ports": [port], "nfs": []}
    text = StatsPrinter(None, 1.0).render(status)  # type: ignore[arg-type]
    assert "drops 9 (kernel 7, ring_full 2)" in text


@pytest.mark.parametrize("uri", ["pcap:/tmp/a\udcffb.pcap", "pcap:/tmp/a\nb.pcap"])
def test_a_port_uri_that_is_not_printable_text_is_refused(uri):
    from onvm.ports.uri import parse_port

    with pytest.raises(ConfigError, match="port"):
        parse_port(uri)
