"""Topology files: good ones load, bad ones are refused with file, line, field and reason."""

from __future__ import annotations

import textwrap

import pytest

from onvm.topology import TopologyError, loads_topology
from onvm.topology._yaml import YamlError, line_of, load

GOOD = """\
manager:
  name: t1
  pool_size: 8192
  cpus: 0
ports:
  - gen:size=64,flows=16,rate=10k
  - "null"
nfs:
  - name: mon
    program: basic_monitor
    service: 1
    options: {interval: 0}
  - program: simple_forward
    service: 2
    instances: 2
    isolation: namespace
    restart: always
    cpus: "0-1"
chains:
  default: [1, 2, out:1]
"""


def test_good_file_loads_with_defaults():
    t = loads_topology(GOOD, "good.yaml")
    assert t.manager.name == "t1" and t.manager.pool_size == 8192 and t.manager.cpus == (0,)
    assert t.manager.ring_size == 4096  # default
    assert [n.label for n in t.nfs] == ["mon", "simple_forward"]
    assert t.nfs[1].instances == 2 and t.nfs[1].isolation == "namespace" and t.nfs[1].cpus == (0, 1)
    assert t.nfs[0].isolation == "process" and t.nfs[0].restart == "on-failure"
    assert t.default_chain_text() == "1,2,out:1"
    assert t.services() == {1: 1, 2: 2}
    assert t.nfs[0].argv_options() == ["--interval", "0"]


def test_service_defaults_to_the_programs_own():
    t = loads_topology("nfs: [{program: bridge}]\n", "b.yaml")
    assert t.nfs[0].service == 1


def test_restart_no_survives_yaml_booleans():
    t = loads_topology("nfs: [{program: bridge, restart: no}]\n", "b.yaml")
    assert t.nfs[0].restart == "no"


def test_options_become_flags():
    t = loads_topology("nfs: [{program: speed_tester, service: 1, options: "
                       "{per_packet: true, dest: 3, quiet: false}}]\n", "o.yaml")
    assert t.nfs[0].argv_options() == ["--per-packet", "--dest", "3"]


def test_yaml_lines_are_kept():
    data, lines = load(GOOD)
    assert data["nfs"][1]["isolation"] == "namespace"
    assert lines[("nfs", 1, "isolation")] == 16
    assert line_of(lines, ("nfs", 1, "isolation", "nothing")) == 16
    assert lines[("chains", "default", 2)] == 20


# (file, the exact problem it must be refused with)
BAD = [
    ("manager:\n  name: t\n  colour: red\n",
     "bad.yaml:3: manager.colour: unknown field (expected one of: name, pool_size, slot_size, ring_size, "
     "rx_workers, tx_workers, burst, flow_table_size, flow_idle, max_rules, stats, duration, exit_when_done, "
     "wait, quiet, cpus, nf_cpus, pin, pack_below, web, controllers, private_key, certificate, ca_cert, "
     "fail_mode, policies, autoscale, dpdk_eal)"),
    ("manager:\n  pack_below: 0.9\n",
     "bad.yaml:2: manager.pack_below: expected 0 up to, not including, 0.8"),
    ("manager:\n  ring_size: 1000\n",
     "bad.yaml:2: manager.ring_size: expected a power of two in 64..1048576"),
    ("manager:\n  pool_size: 10\n",
     "bad.yaml:2: manager.pool_size: expected 64..16777216 slots"),
    ("manager:\n  name: ../etc\n",
     "bad.yaml:2: manager.name: invalid manager name '../etc': expected 1-32 characters of "
     "A-Z a-z 0-9 _ . - not starting with '.' or '-'"),
    ("ports:\n  - gen:size=64\n  - null\nnfs: [{program: simple_forward, service: 1}]\n",
     "bad.yaml:3: ports[1]: expected a port URI (write the null port in quotes: 'null')"),
    ("ports:\n  - gen:size=10\n",
     "bad.yaml:2: ports[0]: port 'gen:size=10': size=10 is out of range (64..9018)"),
    ("ports:\n  - wire:eth0\n",
     "bad.yaml:2: ports[0]: port 'wire:eth0': unknown kind 'wire' "
     "(expected one of gen, pcap, pcap-out, null, afpacket, afxdp, tap, dpdk)"),
    ("nfs:\n  - service: 1\n",
     "bad.yaml:2: nfs[0].program: required field is missing"),
    ("nfs:\n  - program: simple_forward\n    isolation: vm\n",
     "bad.yaml:3: nfs[0].isolation: Input should be 'process', 'namespace', 'podman' or 'docker'"),
    ("nfs:\n  - program: simple_forward\n    restart: sometimes\n",
     "bad.yaml:3: nfs[0].restart: Input should be 'no', 'on-failure' or 'always'"),
    ("nfs:\n  - program: simple_forward\n    instances: 0\n",
     "bad.yaml:3: nfs[0].instances: Input should be greater than or equal to 1"),
    ("nfs:\n  - program: simple_forward\n    service: 64\n",
     "bad.yaml:3: nfs[0].service: Input should be less than or equal to 63"),
    ("nfs:\n  - program: nosuch_nf\n    service: 1\n",
     "bad.yaml:2: nfs[0].program: no NF named 'nosuch_nf': not an example NF (see 'onvm nf --list'), "
     "a Python file, an NF an installed package publishes (entry point group 'onvm.nfs') or a module"),
    ("nfs:\n  - program: basic_monitor\n    options:\n      bogus: 3\n",
     "bad.yaml:3: nfs[0].options: basic_monitor: unrecognized arguments: --bogus 3"),
    ("nfs:\n  - program: simple_forward\n    options:\n      dest: three\n",
     "bad.yaml:3: nfs[0].options: simple_forward: argument --dest: invalid int value: 'three'"),
    ("nfs:\n  - program: simple_forward\n    options:\n      service: 3\n",
     "bad.yaml:4: nfs[0].options.service: set by the topology: use service instead"),
    ("nfs:\n  - program: simple_forward\n    cpus: 4096\n",
     None),  # the message names the machine's CPUs: checked below
    ("nfs:\n  - {program: simple_forward, service: 1}\n  - {program: simple_forward, service: 2}\n",
     "bad.yaml:3: nfs[1].program: NF name 'simple_forward' is used by nfs[0] too: give each a distinct name"),
    ("nfs:\n  - {program: simple_forward, service: 1, instances: 10}\n"
     "  - {name: more, program: simple_forward, service: 1, instances: 10}\n",
     "bad.yaml:2: nfs[0].instances: service 1 has 20 instances in all; at most 16"),
    ("ports: [gen:size=64, 'null']\nnfs:\n  - {program: simple_forward, service: 1}\n"
     "chains:\n  default: [1, 2, out:1]\n",
     "bad.yaml:5: chains.default[1]: hop 2: no NF provides service 2"),
    ("ports: [gen:size=64, 'null']\nnfs:\n  - {program: simple_forward, service: 1}\n"
     "chains:\n  default: [1, out:0]\n",
     "bad.yaml:5: chains.default[1]: hop 2 'out:0': port 0 'gen:size=64' is not an output port "
     "(pcap-out or null)"),
    ("ports: [gen:size=64, 'null']\nnfs:\n  - {program: simple_forward, service: 1}\n"
     "chains:\n  default: [1, out:5]\n",
     "bad.yaml:5: chains.default[1]: hop 2 'out:5': there is no port 5 (2 ports)"),
    ("nfs:\n  - {program: simple_forward, service: 1}\nchains:\n  default: [1, drop, 1]\n",
     "bad.yaml:4: chains.default: hop 2 'drop' ends the chain but more hops follow it"),
    ("nfs:\n  - {program: simple_forward, service: 1}\nchains:\n  default: [1]\n"
     "rules:\n  - match: {src: 10.0.0.300}\n    chain: default\n",
     "bad.yaml:6: rules[0].match: rule 'src 10.0.0.300 -> chain default': "
     "token 2 '10.0.0.300': expected an IPv4 or IPv6 address prefix"),
    ("nfs:\n  - {program: simple_forward, service: 1}\nchains:\n  default: [1]\n"
     "rules:\n  - match: {dport: 80}\n    chain: web\n",
     "bad.yaml:7: rules[0].chain: no chain named 'web'"),
    ("nfs:\n  - {program: simple_forward, service: 1}\n"
     "rules:\n  - match: {dport: 70000}\n    chain: default\n",
     "bad.yaml:4: rules[0].match.dport: Input should be less than or equal to 65535"),
    ("ports: [gen:size=64]\nnfs:\n  - {program: simple_forward, service: 2}\n",
     "bad.yaml:1: chains: no default chain: packets from ports would go to service 1, which no NF provides; "
     "add chains: {default: [...]}"),
    ("nfs: [{program: p.py}]\n",
     "bad.yaml:1: nfs[0].program: no NF file 'p.py'"),
    ("nfs:\n  - program: simple_forward\n    isolation: podman\n    isolation: process\n",
     "bad.yaml:4: nfs[0].isolation: duplicate key 'isolation' (first on line 3)"),
    ("- just\n- a list\n",
     "bad.yaml:1: (top): expected a mapping with manager, ports, nfs, chains and rules, got list"),
    ("nf:\n  - program: simple_forward\n",
     "bad.yaml:1: nf: unknown field (expected one of: manager, ports, nfs, chains, rules)"),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_file_is_refused_with_its_precise_message(text, expected):
    with pytest.raises(TopologyError) as ei:
        loads_topology(text, "bad.yaml")
    if expected is not None:
        assert ei.value.problems == [expected]


def test_unavailable_cpu_names_the_machines_cpus():
    with pytest.raises(TopologyError) as ei:
        loads_topology("nfs:\n  - program: simple_forward\n    cpus: 4096\n", "bad.yaml")
    (msg,) = ei.value.problems
    assert msg.startswith("bad.yaml:3: nfs[0].cpus: CPU 4096 is not available here (this machine allows ")


def test_yaml_syntax_error_names_the_line():
    with pytest.raises(TopologyError) as ei:
        loads_topology("nfs:\n  - program: [simple\n", "bad.yaml")
    assert ei.value.problems == ["bad.yaml:3: invalid YAML: expected ',' or ']', but got '<stream end>'"]
    with pytest.raises(YamlError):
        load("a: [1\n")


def test_every_problem_is_reported_in_line_order():
    text = textwrap.dedent("""\
        manager:
          ring_size: 100
        nfs:
          - program: simple_forward
            isolation: vm
          - program: simple_forward
            instances: -1
        """)
    with pytest.raises(TopologyError) as ei:
        loads_topology(text, "many.yaml")
    # and the two NFs' shared name (line 6), found once the other problems are set aside
    assert [p.split(":")[1] for p in ei.value.problems] == ["2", "5", "6", "7"]


def test_problems_in_every_section_are_reported_in_one_pass():
    """A bad manager option, a bad port and a bad NF do not hide the checks that need
    the other sections: an NF's options, its service against the chains, a rule's chain."""
    text = textwrap.dedent("""\
        manager:
          ring_size: 1000
        ports:
          - gen:size=10
          - "null"
        nfs:
          - program: simple_forward
            service: 1
            instances: 0
          - program: basic_monitor
            service: 2
            options: {bogus: 3}
        chains:
          default: [1, 2, 3, out:1]
          web: [2, out:5]
        rules:
          - tcp dst port 80 to chain web
          - udp to chain nowhere
          - tcp dst port 99999 to chain web
        """)
    with pytest.raises(TopologyError) as ei:
        loads_topology(text, "bad.yaml")
    assert ei.value.problems == [
        "bad.yaml:2: manager.ring_size: expected a power of two in 64..1048576",
        "bad.yaml:4: ports[0]: port 'gen:size=10': size=10 is out of range (64..9018)",
        "bad.yaml:9: nfs[0].instances: Input should be greater than or equal to 1",
        "bad.yaml:12: nfs[1].options: basic_monitor: unrecognized arguments: --bogus 3",
        "bad.yaml:14: chains.default[2]: hop 3: no NF provides service 3",
        "bad.yaml:15: chains.web[1]: hop 2 'out:5': there is no port 5 (2 ports)",
        "bad.yaml:18: rules[1]: no chain named 'nowhere'",
        "bad.yaml:19: rules[2]: rule 'tcp dst port 99999 to chain web': token 4 '99999': "
        "expected a port in 0..65535 with the lower bound first",
    ]


def test_named_chains_and_rules_reach_the_manager(tmp_path):
    text = ("ports: [gen:size=64, 'null']\n"
            "nfs:\n  - {program: simple_forward, service: 1}\n"
            "  - {program: simple_forward, service: 2, name: web}\n"
            "chains:\n  default: [1, out:1]\n  web: [2, out:1]\n"
            "rules:\n  - match: {proto: tcp, dport: 80, src: 10.0.0.0/8}\n    chain: web\n    priority: 5\n")
    topo = loads_topology(text, "ok.yaml")
    cfg = topo.manager_config({"quiet": True})
    assert cfg.chains == {"web": "2,out:1"} and cfg.default_chain == "1,out:1" and cfg.quiet
    assert cfg.rules == ["priority 5 tcp src 10.0.0.0/8 dst port 80 -> chain web"]


def test_afxdp_ports_in_a_file(monkeypatch: pytest.MonkeyPatch):
    from onvm import _native

    monkeypatch.setattr(_native, "HAVE_AFXDP", 1)
    t = loads_topology("manager: {rx_workers: 2}\nports: ['afxdp:eth1?queues=2', 'afxdp:eth2?mode=skb']\n"
                       "chains: {default: [out:1]}\n", "x.yaml")
    assert [p.split("?")[0] for p in t.ports] == ["afxdp:eth1", "afxdp:eth2"]
    with pytest.raises(TopologyError, match=r"x.yaml:1: ports\[0\]: .*mode=fast"):
        loads_topology("ports: ['afxdp:eth1?mode=fast']\n", "x.yaml")
