"""Captures in the region: the filter against the rule matcher's reference, the record ring against a
Python model (order, a full ring counted as drops, counts, snaplen, what an NF hands on)."""

from __future__ import annotations

import dataclasses
import os
import struct
import uuid
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import ARP, IP, UDP, Ether  # type: ignore[import-untyped]
from tests.native.test_rules import MAC_A, MAC_B, packets, rules

from onvm import _hooks, _native
from onvm.flows.rules import PacketFields, Rule, parse_filter, rule_matches


def native_filter(rule: Rule) -> dict[str, object]:
    return rule.match_fields()


def reference(rule: Rule, fields: PacketFields | None, in_port: int, vlan: int | None) -> bool:
    """A capture filter is a rule's conditions: a packet that is not IP passes only those on port and VLAN."""
    if fields is not None:
        return rule_matches(rule, fields)
    needs_ip = rule.ipver or rule.proto or rule.src or rule.dst or rule.sport != (0, 65535) \
        or rule.dport != (0, 65535)
    return not needs_ip and rule.in_port in (0xFFFF, in_port) and rule.vlan in (0xFFFF, vlan)


@settings(max_examples=300, deadline=None)
@given(rules(), packets(), st.sampled_from([0, 1]))
def test_the_filter_agrees_with_the_rule_reference(rule, pkt, in_port):
    data, fields = pkt
    fields = dataclasses.replace(fields, in_port=in_port)
    want = reference(rule, fields, in_port, fields.vlan)
    assert _hooks.cap_match(native_filter(rule), data, in_port) == want, rule.to_text()


@pytest.mark.parametrize("text, hit", [("", True), ("any", True), ("in-port 1", True), ("in-port 2", False),
                                       ("ip", False), ("udp", False), ("vlan 5", False)])
def test_a_frame_that_is_not_ip_passes_only_filters_without_ip_conditions(text, hit):
    arp = bytes(Ether(src=MAC_A, dst=MAC_B) / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))
    rule = parse_filter(text)
    assert _hooks.cap_match(native_filter(rule), arp, 1) is hit
    assert reference(rule, None, 1, None) is hit


# ---- the record ring ------------------------------------------------------------------


@pytest.fixture(params=[512, 2048], ids=["slot512", "slot2048"])
def mgr(request):
    path = f"/dev/shm/onvm-test-{uuid.uuid4()}"
    region = _native.Region.create(path, "t", 1024, request.param, 64, 1024)
    manager = _native.Manager(region, 1, 1, 32)
    try:
        yield region, manager
    finally:
        for c in range(_native.MAX_CAPTURES):
            manager.capture_stop(c)
        del manager
        region.close()
        assert not os.path.exists(path)


def frame(i: int, size: int) -> bytes:
    head = bytes.fromhex("020000000002020000000001") + b"\x08\x06" + i.to_bytes(4, "big")
    return (head + bytes(size))[:size]


def read_all(manager, c: int) -> list[tuple[bytes, int]]:
    blob, out, pos = manager.capture_read(c, 1 << 20), [], 0
    while pos < len(blob):
        _sec, nsec, cap, orig = struct.unpack_from("<IIII", blob, pos)
        assert nsec < 10**9
        out.append((blob[pos + 16:pos + 16 + cap], orig))
        pos += 16 + cap
    return out


@pytest.mark.parametrize("snaplen, count", [(65535, 0), (100, 0), (65535, 7)])
def test_the_ring_against_a_model(mgr, snaplen, count):
    """Bursts go in, reads take some out: what comes out, what is dropped and what is left match a
    bounded queue that drops when full and stops taking at the count."""
    region, manager = mgr
    c = 3
    manager.capture_start(c, {}, snaplen, count)
    capacity = region.info()["capture_records"]
    room = region.info()["slot_size"] - _native.HEADROOM
    assert capacity >= 16 and capacity & (capacity - 1) == 0
    model: deque[tuple[bytes, int]] = deque()
    drops = taken = 0
    left = count or None
    k = 0
    for step in range(12):
        n = [5, 300, 1][step % 3]
        times = capacity // 300 + 1 if n == 300 else 1  # the big bursts fill a ring of any size
        size = 60 + (step * 37) % (room - 60)
        slots = region.alloc(n)
        for s in slots:
            region.write(s, frame(k, size))
            k += 1
        for _ in range(times):
            for j in range(n):
                data = frame(k - n + j, size)
                if left == 0:
                    continue
                if len(model) == capacity:
                    drops += 1
                    continue
                model.append((data[:min(snaplen, room)], len(data)))
                taken += 1
                if left is not None:
                    left -= 1
            _hooks.cap_burst(region, 1 << c, slots)
        region.free(slots)
        if step % 4 == 3:  # the consumer reads now and then
            got = read_all(manager, c)
            assert got == [model.popleft() for _ in range(len(got))]
            assert not model
    stats = manager.capture_stats(c)
    assert (stats["taken"], stats["drops"], stats["remaining"]) == (taken, drops, left)
    assert drops > 0 if not count else taken == count  # the ring did fill
    assert read_all(manager, c) == list(model)


def test_a_full_ring_counts_drops_and_frees_nothing_it_did_not_take(mgr):
    region, manager = mgr
    manager.capture_start(0, {}, 65535, 0)
    capacity = region.info()["capture_records"]
    slots = region.alloc(8)
    for s in slots:
        region.write(s, frame(s, 60))
    free_before = region.info()["pool_free"]
    for _ in range(capacity // 8 + 3):
        _hooks.cap_burst(region, 1, slots)
    assert region.info()["pool_free"] == free_before  # copies: the pool is not touched
    st = manager.capture_stats(0)
    assert st["taken"] == capacity and st["drops"] == 24 + (capacity // 8) * 8 - capacity
    assert len(read_all(manager, 0)) == capacity
    _hooks.cap_burst(region, 1, slots)  # room again
    assert manager.capture_stats(0)["taken"] == capacity + 8
    region.free(slots)


def test_what_an_nf_hands_on_leaves_out_drops_and_held_packets(mgr):
    region, manager = mgr
    manager.capture_start(1, {}, 65535, 0)
    slots = region.alloc(4)
    for s in slots:
        region.write(s, frame(s, 60))
    actions = [_native.ACTIONS["next"], _native.ACTIONS["drop"], _native.ACT_HOLD, _native.ACTIONS["out"]]
    _hooks.cap_burst(region, 1 << 1, slots, actions)
    assert [d for d, _ in read_all(manager, 1)] == [frame(slots[0], 60), frame(slots[3], 60)]
    region.free(slots)


def test_a_stopped_capture_takes_nothing_and_a_new_one_starts_empty(mgr):
    region, manager = mgr
    slots = region.alloc(4)
    for s in slots:
        region.write(s, frame(s, 60))
    manager.capture_start(2, {}, 65535, 0)
    _hooks.cap_burst(region, 1 << 2, slots)
    manager.capture_stop(2)
    _hooks.cap_burst(region, 1 << 2, slots)
    assert manager.capture_stats(2)["taken"] == 4
    manager.capture_start(2, {}, 65535, 0)  # what the last one left unread is thrown away
    assert read_all(manager, 2) == [] and manager.capture_stats(2)["pending"] == 0
    region.free(slots)


def test_a_prefix_length_an_nf_wrote_into_the_filter_matches_nothing(mgr):
    # The filter lives in the region: an NF can write a prefix length past any address (read
    # past the packet's address before; the sanitizer build reports that).
    region, manager = mgr
    manager.capture_start(0, parse_filter("src 10.0.0.0/8").match_fields(), 65535, 0)
    slots = region.alloc(2)
    for s in slots:
        region.write(s, bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP()))
    layout = _hooks.layout(region)
    src_len = layout["captures"] + layout["cap_src_len"]
    for bad in (33, 129, 255):
        _hooks.poke(region, src_len, bytes([bad]))
        _hooks.cap_burst(region, 1, slots)
    assert manager.capture_stats(0)["taken"] == 0
    _hooks.poke(region, src_len, bytes([8]))  # the right place: a sane length takes them again
    _hooks.cap_burst(region, 1, slots)
    assert manager.capture_stats(0)["taken"] == 2
    region.free(slots)


def test_bad_filters_and_arguments_are_refused(mgr):
    _region, manager = mgr
    with pytest.raises(ValueError, match="capture 8 is out of range"):
        manager.capture_start(8, {}, 100, 0)
    with pytest.raises(ValueError, match="filter field dst_len=200 is out of range"):
        manager.capture_start(0, {"dst_len": 200}, 100, 0)
    with pytest.raises(ValueError, match="filter field src must be 16 bytes"):
        manager.capture_start(0, {"src": b"\x01"}, 100, 0)
    with pytest.raises(ValueError, match="no port 3"):
        manager.capture_tap(0, port=3)
