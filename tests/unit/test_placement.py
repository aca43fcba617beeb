"""CPU placement and the NUMA decision, on made-up topologies."""

from __future__ import annotations

import pytest

from onvm.errors import ConfigError
from onvm.manager.placement import (
    NumaTopology,
    check_available,
    cpu_load,
    device_node,
    format_cpus,
    least_loaded,
    numa_plan,
    parse_cpus,
)


@pytest.mark.parametrize("spec,cpus", [("0-3,6", (0, 1, 2, 3, 6)), (5, (5,)), ([2, 1, 2], (1, 2)),
                                       ("7", (7,)), (" 1 , 3-4 ", (1, 3, 4))])
def test_parse_cpus(spec, cpus):
    assert parse_cpus(spec) == cpus
    assert parse_cpus(format_cpus(cpus)) == cpus


@pytest.mark.parametrize("spec,msg", [("3-1", "runs backwards"), ("a", "is not a CPU number"), ("", "empty"),
                                      ([1, "x"], "is not a CPU number"), (True, "expected numbers"),
                                      (-1, "negative")])
def test_parse_cpus_refuses(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_cpus(spec)


def test_format_cpus():
    assert format_cpus([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_check_available_names_what_is_missing():
    check_available([0, 1], available=[0, 1, 2])
    with pytest.raises(ConfigError, match=r"CPU 3,5 is not available here \(this machine allows 0-2\)"):
        check_available([0, 3, 5], available=[0, 1, 2])


def test_least_loaded_spreads_then_ties_to_lowest():
    placed: list[int] = []
    for _ in range(6):
        placed.append(least_loaded([0, 1, 2], cpu_load(placed)))
    assert placed == [0, 1, 2, 0, 1, 2]


def test_least_loaded_counts_pinned_workers():
    # manager workers on CPU 0 and 0: NFs go to 1 first, and to 0 only when 1 holds two
    load = cpu_load([], workers=[0, 0])
    placed: list[int] = []
    for _ in range(4):
        placed.append(least_loaded([0, 1], cpu_load(placed, workers=[0, 0])))
    assert load == {0: 2}
    assert placed == [1, 1, 0, 1]


def test_least_loaded_needs_a_cpu():
    with pytest.raises(ConfigError):
        least_loaded([], {})


TWO_NODES = NumaTopology({0: (0, 1, 2, 3), 1: (4, 5, 6, 7)})


def test_numa_one_node_places_nothing():
    plan = numa_plan(NumaTopology({0: (0, 1)}), [0, 0])
    assert plan.pool_node is None and plan.worker_cpus == ()


def test_numa_pool_and_workers_follow_the_ports_node():
    plan = numa_plan(TWO_NODES, [1, 1, 0, None])
    assert plan.pool_node == 1 and plan.worker_cpus == (4, 5, 6, 7)
    assert "node 1" in plan.reason


def test_numa_tie_goes_to_the_lowest_node_and_respects_allowed():
    plan = numa_plan(TWO_NODES, [1, 0], allowed=[0, 1, 5])
    assert plan.pool_node == 0 and plan.worker_cpus == (0, 1)
    plan = numa_plan(TWO_NODES, [1], allowed=[0])
    assert plan.pool_node == 1 and plan.worker_cpus == ()


def test_numa_unknown_port_nodes_place_nothing():
    assert numa_plan(TWO_NODES, [None, None, 9]).pool_node is None


def test_topology_and_device_node_from_a_fake_sysfs(tmp_path):
    for node, cpus in ((0, "0-3"), (1, "4-7")):
        d = tmp_path / f"devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
    (tmp_path / "devices/system/node/possible").write_text("0-1\n")
    dev = tmp_path / "class/net/eth9/device"
    dev.mkdir(parents=True)
    (dev / "numa_node").write_text("1\n")
    lo = tmp_path / "class/net/veth0"
    lo.mkdir(parents=True)
    topo = NumaTopology.from_sysfs(str(tmp_path))
    assert topo.nodes == {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)}
    assert topo.node_of(5) == 1 and topo.node_of(99) is None
    assert device_node("eth9", str(tmp_path)) == 1
    assert device_node("veth0", str(tmp_path)) is None
    plan = numa_plan(topo, [device_node("eth9", str(tmp_path)), device_node("veth0", str(tmp_path))])
    assert plan.pool_node == 1


def test_this_machine_reads_as_at_least_one_node():
    assert len(NumaTopology.from_sysfs().nodes) >= 1


def test_cpu_list_rejects_digits_int_cannot_read() -> None:
    with pytest.raises(ConfigError, match="is not a CPU number"):
        parse_cpus("\u00b9")  # superscript one
