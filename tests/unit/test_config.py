"""One configuration model: the manager's flags, a topology file and the schema all come from it."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import pytest
from pydantic import Field

from onvm import env
from onvm.cli.main import build_parser
from onvm.control import ops
from onvm.errors import ConfigError
from onvm.flows.rules import DEFAULT_PRIORITY, parse_rule
from onvm.manager.config import ManagerConfig, ManagerOptions, add_flags, flag_of, from_flags
from onvm.paths import runtime_dir, socket_path
from onvm.topology import TopologyError, loads_topology
from onvm.topology.schema import Topology, json_schema

# A value other than the default for every option, as the command line and a file write it.
# (cpus stay 0: the one CPU every machine has.)
SAMPLES: dict[str, tuple[list[str], Any]] = {
    "name": (["--name", "cfg1"], "cfg1"),
    "pool_size": (["--pool-size", "4096"], 4096),
    "slot_size": (["--slot-size", "4096"], 4096),
    "ring_size": (["--ring-size", "1024"], 1024),
    "rx_workers": (["--rx-workers", "2"], 2),
    "tx_workers": (["--tx-workers", "2"], 2),
    "burst": (["--burst", "32"], 32),
    "flow_table_size": (["--flow-table-size", "0"], 0),
    "flow_idle": (["--flow-idle", "2.5"], 2.5),
    "max_rules": (["--max-rules", "200000"], 200000),
    "stats": (["--stats", "0"], 0),
    "duration": (["--duration", "2.5"], 2.5),
    "exit_when_done": (["--exit-when-done"], True),
    "wait": (["--no-wait"], False),
    "quiet": (["--quiet"], True),
    "cpus": (["--cpus", "0"], 0),
    "nf_cpus": (["--nf-cpus", "0"], "0"),
    "pin": (["--no-pin"], False),
    "pack_below": (["--pack-below", "0.25"], 0.25),
    "web": (["--web", "127.0.0.1:0"], "127.0.0.1:0"),
    "controllers": (["--controller", "tcp:127.0.0.1:6653", "--controller", "tcp:[::1]:6633"],
                    ["tcp:127.0.0.1:6653", "tcp:[::1]:6633"]),
    "fail_mode": (["--fail-mode", "standalone"], "standalone"),
    "private_key": (["--private-key", "/etc/onvm/sw-key.pem"], "/etc/onvm/sw-key.pem"),
    "certificate": (["--certificate", "/etc/onvm/sw-cert.pem"], "/etc/onvm/sw-cert.pem"),
    "ca_cert": (["--ca-cert", "/etc/onvm/ca.pem"], "/etc/onvm/ca.pem"),
    "policies": (["--policy", "2=rr", "--policy", "3=least-loaded"], {2: "round-robin", 3: "least"}),
    "autoscale": (["--autoscale", "2:1:4"], {2: {"min": 1, "max": 4}}),
    "dpdk_eal": (["--dpdk-eal=--no-pci"], "--no-pci"),
}
# The four a topology says at its top level, and how.
TOP = {
    "ports": (["--port", "gen:size=64", "--port", "null"], ("ports", ["gen:size=64", "null"])),
    "default_chain": (["--default-chain", "2,out:1"], ("chains", {"default": [2, "out:1"]})),
    "chains": (["--chain", "web=2,out:1"], ("chains", {"web": "2,out:1"})),
    "rules": (["--rule", "tcp dst port 80 -> chain web"], ("rules", ["tcp dst port 80 -> chain web"])),
}


def _manager_flags(argv: list[str]) -> ManagerConfig:
    args = build_parser().parse_args(["manager", *argv])
    config: ManagerConfig = from_flags(args)
    return config


def _options(data: dict[str, Any]) -> ManagerOptions:
    topo = loads_topology(json.dumps({"manager": data}), "t.yaml")  # JSON is YAML
    return topo.manager


def test_every_option_has_a_flag_and_a_key_and_they_agree() -> None:
    pytest.importorskip("os_ken")  # controllers need the sdn extra
    assert set(SAMPLES) == set(ManagerOptions.model_fields)
    assert set(SAMPLES) | set(TOP) == set(ManagerConfig.model_fields)
    for name, (argv, value) in SAMPLES.items():
        from_cli = getattr(_manager_flags(argv), name)
        from_file = getattr(_options({name: value}), name)
        assert from_cli == from_file != getattr(ManagerConfig(), name), name
        # onvm run takes the same flag, over the file's section
        args = build_parser().parse_args(["run", "t.yaml", *argv])
        assert getattr(from_flags(args, ManagerOptions), name) == from_cli


def test_the_top_level_parts_of_a_file_are_the_managers_ports_chains_and_rules() -> None:
    argv = [a for flags, _ in TOP.values() for a in flags]
    cli = _manager_flags(argv)
    data: dict[str, Any] = {"nfs": [{"program": "simple_forward", "service": 2}]}
    for _, (key, value) in TOP.values():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    topo = loads_topology(json.dumps(data), "t.yaml")
    from_file = topo.manager_config()
    for name in TOP:
        assert getattr(cli, name) == getattr(from_file, name), name


def test_a_new_option_reaches_the_flags_the_file_and_the_schema() -> None:
    class More(ManagerOptions):
        frobs: int = Field(3, ge=1, le=9, description="how many frobs")

    class MoreTopology(Topology):
        manager: More = Field(default_factory=lambda: More.model_validate({}))

    p = argparse.ArgumentParser()
    add_flags(p, More)
    assert from_flags(p.parse_args(["--frobs", "5"]), More).frobs == 5
    assert "how many frobs (default 3)" in p.format_help()
    with pytest.raises(ConfigError, match="--frobs 10: expected 1..9"):
        from_flags(p.parse_args(["--frobs", "10"]), More)
    topo = loads_topology("manager:\n  frobs: 7\n", "m.yaml", model=MoreTopology)
    assert isinstance(topo.manager, More) and topo.manager.frobs == 7
    with pytest.raises(TopologyError) as e:
        loads_topology("manager:\n  frobs: 0\n", "m.yaml", model=MoreTopology)
    assert e.value.problems == ["m.yaml:2: manager.frobs: expected 1..9"]
    schema = MoreTopology.model_json_schema()
    assert schema["$defs"]["More"]["properties"]["frobs"]["maximum"] == 9


def test_the_schema_describes_every_option() -> None:
    schema = json_schema()
    opts = schema["$defs"]["ManagerOptions"]["properties"]
    assert set(opts) == set(ManagerOptions.model_fields)
    assert all(p.get("description") for p in opts.values())
    assert set(schema["properties"]) == {"manager", "ports", "nfs", "chains", "rules"}
    assert opts["ring_size"]["default"] == 4096 and opts["pool_size"]["minimum"] == 64


def test_flags_are_named_after_fields_unless_a_flag_says_otherwise() -> None:
    f = ManagerConfig.model_fields
    assert flag_of("ring_size", f["ring_size"]).name == "--ring-size"
    assert flag_of("wait", f["wait"]).name == "--no-wait" and flag_of("pin", f["pin"]).name == "--no-pin"
    assert flag_of("controllers", f["controllers"]).name == "--controller"
    assert flag_of("ports", f["ports"]).name == "--port"


def test_defaults_come_from_the_model_not_from_the_parser() -> None:
    args = build_parser().parse_args(["manager"])
    assert {k for k in vars(args) if k in ManagerConfig.model_fields} == set()  # nothing given, nothing set
    assert _manager_flags([]) == ManagerConfig()


def test_rules_in_a_file_read_as_the_command_line_reads_them() -> None:
    text = ("nfs: [{program: simple_forward, service: 2}]\n"
            "chains: {default: [2], web: [2]}\n"
            "rules:\n"
            "  - udp vlan 7 src 2001:db8::/32 dst port 5000-5010 idle 3 -> chain web\n"
            "  - match: {proto: tcp, vlan: 7, src: '2001:db8::/32', dport: 5000-5010}\n"
            "    chain: web\n"
            "    idle: 3\n")
    topo = loads_topology(text, "r.yaml")
    texted, mapped = (parse_rule(t) for t in topo.manager_config().rules)
    assert texted.priority == mapped.priority == DEFAULT_PRIORITY
    assert (texted.vlan, texted.ipver, texted.dport, texted.idle) == (7, 6, (5000, 5010), 3.0)
    assert (mapped.vlan, mapped.ipver, mapped.dport, mapped.idle) == (7, 6, (5000, 5010), 3.0)
    with pytest.raises(TopologyError) as e:
        loads_topology("rules: ['tcp dst port 8x0 -> chain default']\n", "r.yaml")
    assert e.value.problems == ["r.yaml:1: rules[0]: rule 'tcp dst port 8x0 -> chain default': "
                                "token 4 '8x0': expected a port as N or N-M"]


def test_a_service_policy_is_one_check_wherever_it_is_said() -> None:
    """The flag, the file and the control operation refuse a bad policy with the same words."""
    words = "policy 'fastest': expected hash, round-robin, least-loaded or local"
    with pytest.raises(ConfigError, match=f"--policy 2=fastest: {words}"):
        _manager_flags(["--policy", "2=fastest"])
    with pytest.raises(TopologyError) as e:
        loads_topology("manager:\n  policies: {2: fastest}\n", "p.yaml")
    assert e.value.problems[0].endswith(words)
    with pytest.raises(ConfigError, match=words):
        ops.decode("service_policy", {"service": 2, "policy": "fastest"})


def test_the_environment_is_read_in_one_place(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("ONVM_MANAGER", "fromenv")
    monkeypatch.setenv("ONVM_RUNTIME_DIR", str(tmp_path))
    assert env.manager_name() == "fromenv" and ManagerConfig().name == "fromenv"
    assert loads_topology("ports: []\n", "e.yaml").manager.name == "fromenv"
    assert runtime_dir() == str(tmp_path) and socket_path("x") == f"{tmp_path}/onvm-x.sock"
    monkeypatch.delenv("ONVM_MANAGER")
    assert ManagerConfig().name == "onvm"


@pytest.mark.parametrize("argv, message", [
    (["--pool-size", "10"], "--pool-size 10: expected 64..16777216 slots"),
    (["--ring-size", "1000"], "--ring-size 1000: expected a power of two in 64..1048576"),
    (["--slot-size", "1000"], "--slot-size 1000: expected a multiple of 64 in 384..65536 bytes"),
    (["--rx-workers", "4", "--tx-workers", "5"], "--tx-workers 5: at most 8 workers in all"),
    (["--pack-below", "0.9"], "--pack-below 0.9: expected 0 up to, not including, 0.8"),
    (["--port", "gen:size=64", "--default-chain", "out:0"], "port 0 is not an output port"),
    (["--chain", "web"], "--chain web: 'web': expected NAME=HOPS"),
    (["--rule", "tcp -> chain nowhere"], "no chain named 'nowhere'"),
    (["--autoscale", "2:4:1"], "--autoscale 2:4:1: expected MIN <= MAX, got 4:1"),
    (["--web", "x:y"], "--web x:y: expected HOST:PORT"),
    (["--port", "afpacket:lo?queues=2"], "2 queues need as many RX workers (--rx-workers is 1)"),
])
def test_bad_values_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        _manager_flags(argv)
