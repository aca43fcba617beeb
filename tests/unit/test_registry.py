"""The registry on made-up NFs: ids, instances, placement, lifecycle and what it asks to publish.

No region, no sockets: every change is checked by the ServiceImage it returns."""

from __future__ import annotations

import pytest

from onvm import _native
from onvm.errors import ConfigError, LifecycleError, OnvmError
from onvm.manager._lifecycle import NFState
from onvm.manager.registry import LEFT_KEPT, Registry, ServiceImage


def running(reg: Registry, service: int = 1, n: int = 1, **kw: object) -> list[int]:
    """Register and start ``n`` NFs of ``service``; their ids."""
    ids = []
    for _ in range(n):
        rec = reg.register("nf", service, pid=100, **kw)  # type: ignore[arg-type]
        reg.start(rec.nf_id)
        ids.append(rec.nf_id)
    return ids


def test_ids_and_instances_are_the_lowest_free_ones() -> None:
    reg = Registry()
    a, b = reg.register("a", 1, 10), reg.register("b", 1, 11)
    c = reg.register("c", 2, 12)
    assert [(r.nf_id, r.instance) for r in (a, b, c)] == [(1, 0), (2, 1), (3, 0)]
    assert a.state == NFState.READY and a.pid == 10 and len(reg) == 3
    reg.closed(a.nf_id)
    reg.retired(a.nf_id, {}, 0)
    d = reg.register("d", 1, 13)
    assert (d.nf_id, d.instance) == (1, 0)  # both freed by a's leaving


def test_register_refuses_what_does_not_fit() -> None:
    reg = Registry()
    reg.register("a", 1, 1, instance=3)
    with pytest.raises(OnvmError, match="already has an instance 3") as e:
        reg.register("b", 1, 1, instance=3)
    assert e.value.code == "busy"
    with pytest.raises(ConfigError, match="out of range"):
        reg.register("b", _native.MAX_SERVICES, 1)
    with pytest.raises(ConfigError, match="out of range"):
        reg.register("b", 1, 1, instance=-1)
    for _ in range(_native.MAX_INSTANCES):
        reg.register("x", 2, 1)
    with pytest.raises(OnvmError, match="instances already"):
        reg.register("x", 2, 1)
    full = Registry()
    for _ in range(_native.MAX_NFS - 1):
        full.register("x", len(full) // _native.MAX_INSTANCES, 1)
    with pytest.raises(OnvmError, match="NF slots are in use"):
        full.register("x", 60, 1)
    assert len(full) == _native.MAX_NFS - 1  # a refusal changes nothing


def test_names_are_cut_to_the_region_field() -> None:
    assert Registry().register("n" * 40, 1, 1).name == "n" * 31
    assert Registry().register("", 1, 1).name == "nf"


def test_tx_workers_follow_the_nf_id_after_the_rx_rows() -> None:
    reg = Registry(rx_workers=2, tx_workers=3)
    assert [reg.register("x", 1, 1).tx_worker for _ in range(4)] == [2 + 1, 2 + 2, 2 + 0, 2 + 1]


def test_only_running_nfs_are_published_in_instance_order() -> None:
    reg = Registry()
    a = reg.register("a", 1, 1, instance=2)
    b = reg.register("b", 1, 1, instance=0)
    assert reg.image(1) == ServiceImage(1, (), 0)
    assert reg.start(a.nf_id) == ServiceImage(1, ((a.nf_id, 2),), 0)
    assert reg.start(b.nf_id) == ServiceImage(1, ((b.nf_id, 0), (a.nf_id, 2)), 0)
    assert reg.running_services() == {1}
    assert reg.stop(a.nf_id) == ServiceImage(1, ((b.nf_id, 0),), 0)  # asked to stop: out at once
    assert a.state == NFState.STOPPING
    assert reg.set_policy(1, 2) == ServiceImage(1, ((b.nf_id, 0),), 2)
    with pytest.raises(ConfigError, match="out of range"):
        reg.set_policy(64, 1)


def test_closing_tells_stopped_from_died_and_retiring_frees_the_id() -> None:
    reg = Registry()
    a, b = running(reg, n=2)
    reg.stop(a)
    rec, how, image = reg.closed(a)  # type: ignore[misc]
    assert how == "stopped" and rec.state == NFState.STOPPED and image.members == ((b, 1),)
    rec, how, image = reg.closed(b)  # type: ignore[misc]
    assert how == "died" and rec.state == NFState.FAILED and image.members == ()
    assert reg.closed(b) is None and reg.closed(42) is None  # nothing left to retire
    assert reg.live() == [] and len(reg) == 2  # records stay until the data plane retired them
    gone = reg.retired(a, {"rx": 5}, reclaimed=7)
    assert gone.final == {"rx": 5} and gone.reclaimed == 7 and a not in reg and list(reg.left) == [gone]


def test_the_left_list_is_bounded() -> None:
    reg = Registry()
    for _ in range(LEFT_KEPT + 5):
        (nf_id,) = running(reg)
        reg.closed(nf_id)
        reg.retired(nf_id, {}, 0)
    assert len(reg.left) == LEFT_KEPT


def test_illegal_moves_raise_the_lifecycle_error_and_change_nothing() -> None:
    reg = Registry()
    (a,) = running(reg)
    with pytest.raises(LifecycleError, match=f"can't start NF {a} in state RUNNING"):
        reg.start(a)
    reg.closed(a)
    assert reg.stop(a).members == ()  # a second ask is harmless
    with pytest.raises(LifecycleError, match=f"can't stop NF {a} in state FAILED"):
        reg.stop(a, strict=True)
    with pytest.raises(OnvmError, match="no NF with id 9") as e:
        reg.get(9)
    assert e.value.code == "no_such_nf"


def test_instances_count_what_holds_a_number() -> None:
    reg = Registry()
    a = reg.register("a", 1, 1)
    (b,) = running(reg)
    c = reg.register("c", 1, 1)
    reg.stop(c.nf_id)
    assert [r.nf_id for r in reg.instances(1)] == [a.nf_id, b]  # the stopping one no longer counts
    assert reg.find(1, 1) is not None and reg.find(1, 1).nf_id == b  # type: ignore[union-attr]
    assert reg.find(1, 7) is None


def test_placement_takes_the_least_loaded_cpu_and_packing_moves_only_placed_nfs() -> None:
    reg = Registry(nf_cpus=(0, 1, 2), worker_cpus=(0,))
    cpus = [reg.register("x", 1, 1).cpu for _ in range(4)]
    assert cpus == [1, 2, 0, 1]  # CPU 0 carries a worker: it fills last
    own = reg.register("own", 2, 1, cpus=(2,))
    assert own.cpu == 2 and not own.placed
    assert [nf for nf, _ in reg.movable()] == [1, 2, 3, 4]
    floating = Registry(pin=False)
    f = floating.register("x", 1, 1)
    assert f.cpu is None and not f.placed and floating.movable() == []
    assert floating.register("y", 1, 1, cpus=(0,)).cpu == 0  # an NF that asks is placed anyway


def test_the_clock_stamps_registration_and_history() -> None:
    now = [100.0]
    reg = Registry(clock=lambda: now[0])
    rec = reg.register("x", 1, 1)
    now[0] = 105.0
    reg.start(rec.nf_id)
    assert rec.registered_at == 100.0 and rec.life.history[-1] == (105.0, NFState.RUNNING)


def test_a_long_non_ascii_name_is_cut_on_a_character_boundary():
    rec = Registry().register("é" * 40, 1, 100)
    assert rec.name == "é" * 15 and len(rec.name.encode()) <= 31  # what the region's field holds


def test_an_instance_number_beyond_the_service_table_is_refused():
    reg = Registry()
    reg.register("a", 1, 100, instance=0)
    with pytest.raises(ConfigError, match="instance 65536 is out of range"):
        reg.register("b", 1, 101, instance=_native.INSTANCE_MAX + 1)
    assert len(reg) == 1
