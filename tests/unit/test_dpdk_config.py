"""dpdk: port URIs and the EAL's options (pure; no DPDK needed)."""

from __future__ import annotations

import sys

import pytest

from onvm.errors import ConfigError
from onvm.ports import dpdk
from onvm.ports.uri import parse_port


@pytest.mark.parametrize("uri, devargs, opts, is_in, is_out, pci", [
    ("dpdk:net_null0", "net_null0", {}, True, True, False),
    ("dpdk:net_pcap0,rx_pcap=/tmp/a.pcap,tx_pcap=/tmp/b.pcap",
     "net_pcap0,rx_pcap=/tmp/a.pcap,tx_pcap=/tmp/b.pcap", {}, True, True, False),
    ("dpdk:net_null1?rxq=0", "net_null1", {"rxq": 0}, False, True, False),
    ("dpdk:net_tap0?txq=0&rxd=512", "net_tap0", {"txq": 0, "rxd": 512}, True, False, False),
    ("dpdk:0000:03:00.0", "0000:03:00.0", {}, True, True, True),
    ("dpdk:03:00.1,rxq_pkt_pad_en=1?rxq=2&txq=2&promisc=0", "03:00.1,rxq_pkt_pad_en=1",
     {"rxq": 2, "txq": 2, "promisc": 0}, True, True, True),
])
def test_dpdk_uris(uri: str, devargs: str, opts: dict[str, int], is_in: bool, is_out: bool,
                   pci: bool) -> None:
    spec = parse_port(uri)
    assert (spec.kind, spec.path) == ("dpdk", devargs)
    assert spec.options == {"rxq": -1, "txq": -1, "rxd": 0, "txd": 0, "promisc": 1, **opts}
    assert (spec.is_input, spec.is_output, spec.is_pci) == (is_in, is_out, pci)


@pytest.mark.parametrize("uri, message", [
    ("dpdk:", "expected dpdk:DEVICE"),
    ("dpdk:,iface=x", "expected dpdk:DEVICE"),
    ("dpdk:net null0", "expected dpdk:DEVICE"),
    ("dpdk:net_null0,path=a\tb", "spaces or control characters"),
    ("dpdk:net_null0?queues=2", "unknown option 'queues'"),
    ("dpdk:net_null0?rxq=9", "rxq=9 is out of range (0..8)"),
    ("dpdk:net_null0?rxq=0&txq=0", "nothing to do"),
    ("dpdk:net_null0?promisc=2", "promisc=2 is out of range"),
])
def test_bad_dpdk_uris(uri: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_port(uri)


def test_eal_defaults_need_no_hugepages() -> None:
    args = dpdk.eal_args("m1", "", [0, 1], 16384, [], "/pmds")
    assert args == ["onvm", "--no-huge", "-m", "68", "--no-shconf", "--lcores", "0@(0,1)", "--no-pci",
                    "-d", "/pmds", "--file-prefix", "onvm-m1", "--no-telemetry"]


def test_eal_memory_grows_with_the_pool() -> None:
    assert dpdk.memory_mb(64) == 65
    assert dpdk.memory_mb(1 << 20) == 64 + 256


def test_eal_pci_ports_are_allowed_by_name() -> None:
    specs = [parse_port(u) for u in ("dpdk:0000:03:00.0", "dpdk:net_null0", "dpdk:0000:03:00.1,x=1")]
    args = dpdk.eal_args("m", "", [1], 4096, specs, "")
    assert "--no-pci" not in args and "-d" not in args
    i = args.index("-a")
    assert args[i:i + 4] == ["-a", "0000:03:00.0", "-a", "0000:03:00.1,x=1"]


@pytest.mark.parametrize("extra, gone, kept", [
    ("--socket-mem 512 --huge-dir /dev/hugepages", ["--no-huge", "-m"], ["--no-shconf", "--no-pci"]),
    ("-m512", ["--no-huge"], ["--no-pci"]),
    ("--in-memory --socket-mem=256", ["--no-huge", "--no-shconf"], ["--no-pci"]),
    ("-l 1", ["--lcores"], ["--no-huge"]),
    ("-a 0000:05:00.0", ["--no-pci"], ["--no-huge"]),
    ("--file-prefix=mine -d /opt/pmds", ["onvm-m"], ["--no-huge"]),
])
def test_eal_options_given_replace_ours(extra: str, gone: list[str], kept: list[str]) -> None:
    args = dpdk.eal_args("m", extra, [0], 1024, [], "/pmds")
    assert args[-len(extra.split()):] == extra.split()  # theirs come last, as given
    ours = args[1:len(args) - len(extra.split())]
    for g in gone:
        assert g not in ours, ours
    for k in kept:
        assert k in ours, ours


def test_eal_options_are_split_like_a_shell() -> None:
    assert dpdk.eal_args("m", "--vdev 'net_pcap9,rx_pcap=/tmp/a b.pcap'", [0], 1024, [], "")[-2:] == [
        "--vdev", "net_pcap9,rx_pcap=/tmp/a b.pcap"]
    with pytest.raises(ConfigError, match="--dpdk-eal"):
        dpdk.eal_args("m", "--vdev 'unclosed", [0], 1024, [], "")


def test_runtime_dir_follows_the_file_prefix() -> None:
    base = "/var/run/dpdk" if dpdk.os.getuid() == 0 else None
    d = dpdk.runtime_dir(["onvm", "--file-prefix", "onvm-x"])
    assert d.endswith("/dpdk/onvm-x") and (base is None or d == f"{base}/onvm-x")
    assert dpdk.runtime_dir(["onvm", "--file-prefix=y"]).endswith("/dpdk/y")


def test_a_build_without_dpdk_refuses_dpdk_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    import onvm

    monkeypatch.setitem(sys.modules, "onvm._dpdk", None)  # import fails, as without the module
    monkeypatch.delattr(onvm, "_dpdk", raising=False)
    dpdk.check_available([parse_port("null")])  # no dpdk: port, nothing to say
    with pytest.raises(ConfigError) as e:
        dpdk.check_available([parse_port("null"), parse_port("dpdk:net_null0")])
    assert "port 'dpdk:net_null0'" in e.value.message and "libdpdk-dev" in e.value.message


def test_a_build_whose_dpdk_does_not_load_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.abc

    import onvm

    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, path: object, target: object = None) -> None:
            if name == "onvm._dpdk":
                raise ImportError("librte_ethdev.so.23: cannot open shared object file")
            return None

    monkeypatch.delitem(sys.modules, "onvm._dpdk", raising=False)
    monkeypatch.delattr(onvm, "_dpdk", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Broken(), *sys.meta_path])
    with pytest.raises(ConfigError) as e:
        dpdk.check_available([parse_port("dpdk:net_null0")])
    assert "does not load (librte_ethdev.so.23" in e.value.message and "rebuild" in e.value.message
