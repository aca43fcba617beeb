"""``flow-mod``: FLOW_MODs a manager applies per second from a controller on loopback.

A bare controller (os-ken's encoders over a plain socket) listens on
127.0.0.1, a manager with ``--controller`` connects, and for ``seconds`` the
controller sends rounds of ``BATCH`` ADDs (distinct TCP destination ports,
actions ``output:1001, output:1``: a chain through service 1) followed by the
same number of DELETE_STRICTs, each round ended by a BARRIER whose reply
says all of it is applied.  ``flow_mods_per_second`` counts both kinds.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from onvm.bench._scenario import Scenario
from onvm.bench.pipeline import deployment

BATCH = 100


def flow_mod_bench(seconds: float, verbose: bool = False) -> dict[str, Any]:
    from os_ken.ofproto import ofproto_v1_3 as ofp
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    from onvm.sdn.wire import DP

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    dep = deployment(["--port", "null", "--default-chain", "out:0", "--controller", f"tcp:127.0.0.1:{port}"],
                     verbose)
    conn: socket.socket | None = None
    buf = b""

    def read_until(xid: int) -> int:
        nonlocal buf
        errors = 0
        assert conn is not None
        while True:
            while len(buf) < 8 or len(buf) < struct.unpack_from("!H", buf, 2)[0]:
                data = conn.recv(1 << 16)
                if not data:
                    raise ConnectionError("the manager closed the connection")
                buf += data
            _, t, length, x = struct.unpack_from("!BBHI", buf)
            buf = buf[length:]
            errors += t == ofp.OFPT_ERROR
            if x == xid and t in (ofp.OFPT_BARRIER_REPLY, ofp.OFPT_FEATURES_REPLY):
                return errors

    def encode(msg: Any, xid: int) -> bytes:
        msg.xid = xid
        msg.serialize()
        return bytes(msg.buf)

    inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS,
                                         [parser.OFPActionOutput(1001), parser.OFPActionOutput(1)])]
    adds, dels = [], []
    for i in range(BATCH):
        match = parser.OFPMatch(eth_type=0x0800, ip_proto=6, tcp_dst=1000 + i)
        adds.append(encode(parser.OFPFlowMod(DP, priority=100 + i, match=match, instructions=inst), 1))
        dels.append(encode(parser.OFPFlowMod(DP, priority=100 + i, match=match, table_id=0,
                                             command=ofp.OFPFC_DELETE_STRICT), 2))
    round_bytes = b"".join(adds) + b"".join(dels)
    try:
        dep.start_manager()
        listener.settimeout(15)
        conn, _ = listener.accept()
        conn.settimeout(15)
        conn.sendall(struct.pack("!BBHI", 4, ofp.OFPT_HELLO, 8, 0))
        conn.sendall(encode(parser.OFPFeaturesRequest(DP), 3))
        read_until(3)
        mods = errors = 0
        xid = 10
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            xid += 1
            conn.sendall(round_bytes + encode(parser.OFPBarrierRequest(DP), xid))
            errors += read_until(xid)
            mods += 2 * BATCH
        dt = time.perf_counter() - t0
        return {"flow_mods": mods, "seconds": round(dt, 3),
                "flow_mods_per_second": round(mods / dt), "errors": errors, "batch": BATCH}
    finally:
        if conn is not None:
            conn.close()
        listener.close()
        dep.stop()


SCENARIOS = [
    Scenario("flow-mod", "FLOW_MODs a manager applies per second from an OpenFlow controller on loopback: "
             f"rounds of {BATCH} ADDs and {BATCH} DELETE_STRICTs, each ended by a BARRIER",
             key="flow_mods_per_second", target=">= 5,000 FLOW_MODs/s", run=flow_mod_bench,
             show=lambda r: f"{r['flow_mods_per_second']:,} FLOW_MODs/s ({r['errors']} errors)"),
]
