"""The manager's OpenFlow agent against a bare controller made of os-ken's codecs."""

from __future__ import annotations

import json
import random
import struct
import time

import pytest

pytest.importorskip("os_ken")

from os_ken.ofproto import ofproto_v1_3 as ofp  # noqa: E402
from os_ken.ofproto import ofproto_v1_3_parser as parser  # noqa: E402

from tests.integration.conftest import onvm, status, wait_for  # noqa: E402
from tests.integration.ofctl import DP, RawController  # noqa: E402

WEB = parser.OFPMatch(eth_type=0x0800, ip_proto=6, tcp_dst=80)


@pytest.fixture
def switch(deploy):
    ctl = RawController()
    try:
        dep = deploy(["--port", "null", "--port", "null", "--default-chain", "out:0",
                      "--controller", ctl.target])
        ctl.accept()
        ctl.features = ctl.handshake()
        ctl.dep = dep
        yield ctl
    finally:
        ctl.close()


def rules(name):
    return json.loads(onvm("rule", "list", "--name", name, "--json").stdout)["rules"]


def chains(name):
    out = json.loads(onvm("chain", "list", "--name", name, "--json").stdout)["chains"]
    return {c["name"]: c["hops"] for c in out}


def test_handshake_ports_and_echo(switch):
    f = switch.features
    assert f.datapath_id and f.n_tables == 1
    ports = {p.port_no: p.name.decode() for p in switch.multipart(parser.OFPPortDescStatsRequest(DP, 0))}
    assert ports[1] == "p0-null" and ports[2] == "p1-null"
    assert {1000 + s for s in range(64)} <= set(ports) and ports[1001] == "svc1"
    xid = switch.send(parser.OFPEchoRequest(DP, data=b"ping"))
    t, _, raw = switch.recv_xid(xid)
    assert t == ofp.OFPT_ECHO_REPLY and raw[8:] == b"ping"
    desc = switch.multipart(parser.OFPDescStatsRequest(DP, 0))[0]
    assert "pyonvm" in str(desc.mfr_desc)
    st = status(switch.dep.name)["openflow"]
    assert st["controllers"][0]["connected"] and st["flows"] == 0


def test_flow_mods_become_rules_and_chains(switch):
    name = switch.dep.name
    switch.flow_mod(match=WEB, outputs=[1001, 1002, 2], priority=200, cookie=0x80)
    switch.flow_mod(outputs=[1], priority=0, cookie=0x1)
    assert switch.barrier() == []
    by_prio = {r["priority"]: r for r in rules(name)}
    # eth_type IPv4 is kept as a /0 source prefix: IPv6 TCP to port 80 does not match
    assert by_prio[200]["rule"] == "priority 200 tcp src 0.0.0.0/0 dst port 80 -> chain of-1-2-out1"
    assert by_prio[0]["chain"] == "of-out0"
    assert chains(name)["of-1-2-out1"] == "1,2,out:1"
    # MODIFY_STRICT changes the actions of exactly that flow
    switch.flow_mod(match=WEB, outputs=[1003, 1], priority=200, command=ofp.OFPFC_MODIFY_STRICT)
    assert switch.barrier() == []
    by_prio = {r["priority"]: r for r in rules(name)}
    assert by_prio[200]["chain"] == "of-3-out0" and "of-1-2-out1" not in chains(name)
    stats = {s.cookie: s for s in switch.flow_stats()}
    assert set(stats) == {0x80, 0x1}
    assert [a.port for a in stats[0x80].instructions[0].actions] == [1003, 1]
    # DELETE with a cookie mask takes only what it names
    switch.flow_mod(command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL, cookie=0x80, cookie_mask=0xFF)
    assert switch.barrier() == []
    assert [r["priority"] for r in rules(name)] == [0]
    # DELETE everything
    switch.flow_mod(command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL)
    assert switch.barrier() == []
    assert rules(name) == [] and set(chains(name)) == {"default"}


def test_what_rules_cannot_express_is_refused(switch):
    cases = [
        (dict(match=parser.OFPMatch(eth_dst="00:00:00:00:00:01"), outputs=[1]),
         (ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_FIELD)),
        (dict(match=parser.OFPMatch(ip_proto=6), outputs=[1]), (ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_PREREQ)),
        (dict(match=WEB, outputs=[ofp.OFPP_FLOOD]), (ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_PORT)),
        (dict(match=WEB, outputs=[ofp.OFPP_CONTROLLER, 1]),
         (ofp.OFPET_BAD_ACTION, ofp.OFPBAC_UNSUPPORTED_ORDER)),
        (dict(match=WEB, outputs=[9]), (ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_OUT_PORT)),
        (dict(match=WEB, outputs=[1, 1001]), (ofp.OFPET_BAD_ACTION, ofp.OFPBAC_UNSUPPORTED_ORDER)),
        (dict(match=WEB, outputs=[1], table_id=3), (ofp.OFPET_FLOW_MOD_FAILED, ofp.OFPFMFC_BAD_TABLE_ID)),
    ]
    for kwargs, want in cases:
        xid = switch.flow_mod(**kwargs)
        errors = switch.barrier()
        assert [(e.type, e.code, e.xid) for e in errors] == [(*want, xid)], kwargs
    assert rules(switch.dep.name) == []


def test_hard_timeout_removes_the_flow_and_says_so(switch):
    # Long enough for the rule to be listed (a CLI's start) on a loaded machine before it expires.
    switch.flow_mod(match=WEB, outputs=[1], hard=3, cookie=7, flags=ofp.OFPFF_SEND_FLOW_REM)
    assert switch.barrier() == [] and len(rules(switch.dep.name)) == 1
    t, _, raw = switch.recv_type(ofp.OFPT_FLOW_REMOVED)
    msg = switch.parse(raw)
    assert msg.cookie == 7 and msg.reason == ofp.OFPRR_HARD_TIMEOUT and msg.duration_sec >= 3
    assert rules(switch.dep.name) == []


def test_roles(switch):
    xid = switch.send(parser.OFPRoleRequest(DP, ofp.OFPCR_ROLE_SLAVE, 5))
    reply = switch.parse(switch.recv_xid(xid)[2])
    assert reply.role == ofp.OFPCR_ROLE_SLAVE and reply.generation_id == 5
    xid = switch.flow_mod(match=WEB, outputs=[1])
    assert [(e.type, e.code) for e in switch.barrier()] == [(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE)]
    xid = switch.send(parser.OFPRoleRequest(DP, ofp.OFPCR_ROLE_MASTER, 3))  # older generation
    switch.barrier()
    xid = switch.send(parser.OFPRoleRequest(DP, ofp.OFPCR_ROLE_MASTER, 6))
    assert switch.parse(switch.recv_xid(xid)[2]).role == ofp.OFPCR_ROLE_MASTER
    switch.flow_mod(match=WEB, outputs=[1])
    assert switch.barrier() == []


def test_malformed_and_out_of_order_messages_get_errors(switch):
    rng = random.Random(8)
    types = [ofp.OFPT_FLOW_MOD, ofp.OFPT_MULTIPART_REQUEST, ofp.OFPT_ROLE_REQUEST, ofp.OFPT_SET_CONFIG,
             ofp.OFPT_PACKET_OUT, ofp.OFPT_GROUP_MOD, 99, 0x7F]
    good = parser.OFPFlowMod(DP, match=WEB, instructions=[
        parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionOutput(1)])])
    good.serialize()
    template = bytes(good.buf)
    sent = 0
    for i in range(400):
        if i % 2:
            body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120)))
            t = rng.choice(types)
        else:  # a valid FLOW_MOD with a few bytes changed
            raw = bytearray(template)
            for _ in range(rng.randrange(1, 6)):
                raw[rng.randrange(8, len(raw))] = rng.randrange(256)
            body, t = bytes(raw[8:]), ofp.OFPT_FLOW_MOD
        switch.send_raw(struct.pack("!BBHI", 4, t, 8 + len(body), 5000 + i) + body)
        sent += 1
    errors = switch.barrier()
    assert len(errors) >= sent // 3
    assert all(e.xid >= 5000 for e in errors)
    # the session survived and still works
    switch.flow_mod(command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL)
    switch.flow_mod(match=WEB, outputs=[1001, 1])
    assert switch.barrier() == []
    assert len(rules(switch.dep.name)) == 1
    assert status(switch.dep.name)["openflow"]["errors"] >= len(errors)
    # a wrong version is refused, a length below the header resets the connection
    switch.send_raw(struct.pack("!BBHI", 1, ofp.OFPT_FEATURES_REQUEST, 8, 77))
    assert [(e.type, e.code) for e in switch.barrier()] == [(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_VERSION)]
    switch.send_raw(struct.pack("!BBHI", 4, ofp.OFPT_FLOW_MOD, 4, 78))
    t, xid, raw = switch.recv_type(ofp.OFPT_ERROR)
    assert xid == 78
    with pytest.raises((ConnectionError, OSError)):
        switch._read()
    # it comes back, and the flows it had are still there (fail-secure)
    switch.conn.close()
    switch.accept()
    switch.handshake()
    assert len(switch.flow_stats()) == 1
    assert len(rules(switch.dep.name)) == 1


def test_messages_before_hello_are_refused(deploy):
    ctl = RawController()
    try:
        deploy(["--port", "null", "--default-chain", "out:0", "--controller", ctl.target])
        ctl.accept()
        ctl.recv_type(ofp.OFPT_HELLO)
        xid = ctl.send(parser.OFPFeaturesRequest(DP))
        t, _, raw = ctl.recv_xid(xid)
        assert t == ofp.OFPT_ERROR and ctl.parse(raw).type == ofp.OFPET_BAD_REQUEST
        ctl.send_raw(struct.pack("!BBHIHHI", 1, ofp.OFPT_HELLO, 16, 2, 1, 8, 1 << 1))  # 1.0 only
        t, _, raw = ctl.recv_type(ofp.OFPT_ERROR)
        assert ctl.parse(raw).type == ofp.OFPET_HELLO_FAILED
    finally:
        ctl.close()


def test_standalone_mode_drops_flows_without_a_controller(deploy):
    ctl = RawController()
    try:
        dep = deploy(["--port", "null", "--default-chain", "out:0", "--controller", ctl.target,
                      "--fail-mode", "standalone"])
        ctl.accept()
        ctl.handshake()
        ctl.flow_mod(match=WEB, outputs=[1])
        assert ctl.barrier() == [] and len(rules(dep.name)) == 1
        ctl.conn.close()
        wait_for(lambda: rules(dep.name) == [], timeout=10, what="flows to go")
        ctl.accept()
        ctl.handshake()
        assert ctl.flow_stats() == []
    finally:
        ctl.close()


def test_flow_mod_bench_runs(runtime):
    out = onvm("bench", "flow-mod", "--seconds", "0.5", "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["flow_mods"] >= 200 and res["errors"] == 0 and res["flow_mods_per_second"] > 0


def start_packet_io(dep):
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "onvm.sdn.packet_io", "--name", dep.name, "--quiet"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dep.procs.append(p)  # stopped with the deployment
    return p


def test_packet_in_and_packet_out(deploy):
    ctl = RawController()
    try:
        dep = deploy(["--port", "gen:proto=udp,dport=53,count=10,rate=500,size=128",
                      "--port", "gen:proto=tcp,dport=22,count=10,rate=500,src=10.9.0.1,size=128",
                      "--port", "null",
                      "--default-chain", "2,out:2", "--controller", ctl.target])
        ctl.accept()
        ctl.handshake()
        ctl.flow_mod(match=parser.OFPMatch(eth_type=0x0800, ip_proto=17, udp_dst=53),
                     outputs=[ofp.OFPP_CONTROLLER], priority=50, cookie=0x53)
        ctl.flow_mod(outputs=[ofp.OFPP_CONTROLLER], priority=0, cookie=0x1)
        assert ctl.barrier() == []
        # PACKET_OUT before packet_io runs: refused
        po = parser.OFPPacketOut(DP, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                 actions=[parser.OFPActionOutput(3)], data=bytes(60))
        xid = ctl.send(po)
        assert [(e.type, e.xid) for e in ctl.barrier()] == [(ofp.OFPET_BAD_REQUEST, xid)]
        start_packet_io(dep)
        dep.start_nf(["simple_forward", "--service", "2"])  # the default chain's service: input starts
        dep.wait_running(2)
        got = []
        while len(got) < 20:
            got.append(ctl.parse(ctl.recv_type(ofp.OFPT_PACKET_IN)[2]))
        by = {}
        for p in got:
            assert p.total_len == len(p.data)
            by.setdefault((p.reason, p.cookie, p.match["in_port"]), []).append(len(p.data))
        assert by.keys() == {(ofp.OFPR_ACTION, 0x53, 1), (ofp.OFPR_NO_MATCH, 0x1, 2)}
        # gen's size=128 counts the 4-byte FCS
        assert all(len(v) == 10 and set(v) == {124} for v in by.values()), by
        # PACKET_OUT: out of port 2 (the null port), three times
        before = status(dep.name)["ports"][2]["tx"]
        frame = got[0].data
        for _ in range(3):
            po = parser.OFPPacketOut(DP, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                     actions=[parser.OFPActionOutput(3)], data=frame)
            ctl.send(po)
        assert ctl.barrier() == []
        wait_for(lambda: status(dep.name)["ports"][2]["tx"] == before + 3, what="the packets out")
        of = status(dep.name)["openflow"]
        assert of["packet_ins"] == 20 and of["packet_outs"] == 3
    finally:
        ctl.close()


def test_two_controllers_master_and_slave(deploy):
    a, b = RawController(), RawController()
    try:
        dep = deploy(["--port", "null", "--default-chain", "out:0", "--controller", a.target,
                      "--controller", b.target])
        for c in (a, b):
            c.accept()
            c.handshake()
        for c, gen in ((a, 1), (b, 2)):
            xid = c.send(parser.OFPRoleRequest(DP, ofp.OFPCR_ROLE_MASTER, gen))
            assert c.parse(c.recv_xid(xid)[2]).role == ofp.OFPCR_ROLE_MASTER
        # b's claim made a a slave
        a.flow_mod(match=WEB, outputs=[1])
        assert [(e.type, e.code) for e in a.barrier()] == [(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE)]
        b.flow_mod(match=WEB, outputs=[1], hard=1, flags=ofp.OFPFF_SEND_FLOW_REM)
        assert b.barrier() == []
        assert len(a.flow_stats()) == 1  # a slave still reads
        roles = {c["target"]: c["role"] for c in status(dep.name)["openflow"]["controllers"]}
        assert roles == {a.target: "slave", b.target: "master"}
        # FLOW_REMOVED goes to the master, not to the slave
        assert b.parse(b.recv_type(ofp.OFPT_FLOW_REMOVED)[2]).reason == ofp.OFPRR_HARD_TIMEOUT
        a.conn.settimeout(1.0)
        with pytest.raises(TimeoutError):
            a.recv(lambda m: m[0] == ofp.OFPT_FLOW_REMOVED, timeout=1.0)
    finally:
        a.close()
        b.close()


def test_idle_timeout_waits_for_traffic_to_stop(deploy):
    ctl = RawController()
    try:
        dep = deploy(["--port", "gen:proto=tcp,dport=80,count=3000,rate=1000", "--port", "null",
                      "--default-chain", "out:1", "--controller", ctl.target])
        ctl.accept()
        ctl.handshake()
        ctl.flow_mod(match=WEB, outputs=[2], idle=1, cookie=9, flags=ofp.OFPFF_SEND_FLOW_REM)
        assert ctl.barrier() == []
        t0 = time.monotonic()
        msg = ctl.parse(ctl.recv_type(ofp.OFPT_FLOW_REMOVED)[2])
        waited = time.monotonic() - t0
        assert msg.reason == ofp.OFPRR_IDLE_TIMEOUT and msg.cookie == 9
        assert waited > 1.5  # the traffic (3 s from the start) kept it alive
        assert msg.packet_count > 0 and status(dep.name)["openflow"]["flows"] == 0
    finally:
        ctl.close()


def test_flow_mods_apply_incrementally(switch):
    """10,000 flows added one by one: the last thousand cost the manager no more than the first."""
    from onvm._proc import cpu_seconds

    inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [parser.OFPActionOutput(1)])]

    def add(i: int) -> bytes:
        match = parser.OFPMatch(eth_type=0x0800, ip_proto=17, ipv4_src=f"10.{i >> 8}.{i & 255}.1",
                                udp_dst=1 + i % 60000)
        msg = parser.OFPFlowMod(DP, priority=1000 + i % 50, match=match, instructions=inst)
        msg.xid = 1
        msg.serialize()
        return bytes(msg.buf)

    pid = status(switch.dep.name)["manager"]["pid"]
    cost = []
    for k in range(10):
        data = b"".join(add(k * 1000 + i) for i in range(1000))
        c0 = cpu_seconds(pid) or 0.0
        switch.send_raw(data)
        assert switch.barrier() == []
        cost.append((cpu_seconds(pid) or 0.0) - c0)
    st = status(switch.dep.name)
    assert st["openflow"]["flows"] == 10000 and st["flows"]["rules"] == 10000
    # CPU time of the manager process, read at 10 ms resolution: a generous bound that
    # a cost growing with the table (each FLOW_MOD rewriting every rule) breaks by far.
    assert cost[-1] <= 2 * cost[0] + 0.1, cost
