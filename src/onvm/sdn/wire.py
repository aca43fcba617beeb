"""OpenFlow 1.3 on the wire, switch side.

Decoding of what a controller sends uses os-ken's ``ofproto_v1_3_parser``
where it has a parser (FLOW_MOD with its match and instructions, HELLO,
ECHO, ERROR).  os-ken is written for the controller side, so the messages a
switch sends, and the few requests it has no parser for (multipart requests,
ROLE_REQUEST, PACKET_OUT's header), are packed and unpacked here with
``struct`` following the OpenFlow 1.3.5 specification:

==========================  =====================================================
packed here                 HELLO (with a version bitmap), ERROR, ECHO_REPLY,
                            FEATURES_REPLY, GET_CONFIG_REPLY, BARRIER_REPLY,
                            ROLE_REPLY, MULTIPART_REPLY (DESC, FLOW, AGGREGATE,
                            PORT_STATS, PORT_DESC, TABLE), FLOW_REMOVED, PACKET_IN
unpacked here               the OpenFlow header, HELLO elements, MULTIPART_REQUEST
                            (FLOW, AGGREGATE, PORT_STATS bodies), ROLE_REQUEST,
                            PACKET_OUT, and a length check of every FLOW_MOD
os-ken                      FLOW_MOD decoding; OFPMatch and OFPInstructionActions
                            encoding inside FLOW stats and FLOW_REMOVED
==========================  =====================================================
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

# What it cannot parse is an ERROR reply to the controller, not a traceback in the log.
logging.getLogger("os_ken.ofproto.ofproto_parser").setLevel(logging.CRITICAL)

VERSION = ofp.OFP_VERSION  # 4
HEADER = struct.Struct("!BBHI")
MAX_MESSAGE = 65535


class Datapath:
    """The little os-ken's message classes want of a datapath."""

    ofproto = ofp
    ofproto_parser = parser
    id = 0


DP = Datapath()


class OFError(Exception):
    """Becomes an OpenFlow ERROR message to the sender."""

    def __init__(self, type_: int, code: int, text: str = "") -> None:
        super().__init__(text or f"error type {type_} code {code}")
        self.type = type_
        self.code = code


def message(msg_type: int, xid: int, body: bytes = b"") -> bytes:
    return HEADER.pack(VERSION, msg_type, HEADER.size + len(body), xid) + body


def hello(xid: int = 0) -> bytes:
    # one VERSIONBITMAP element announcing 1.3 only
    elem = struct.pack("!HHI", ofp.OFPHET_VERSIONBITMAP, 8, 1 << VERSION)
    return message(ofp.OFPT_HELLO, xid, elem)


def hello_versions(version: int, body: bytes) -> set[int]:
    """The versions a peer's HELLO offers: its bitmap if it sent one, else its header version."""
    off = 0
    while off + 4 <= len(body):
        etype, elen = struct.unpack_from("!HH", body, off)
        if elen < 4:
            break
        if etype == ofp.OFPHET_VERSIONBITMAP:
            out = set()
            for i in range(0, elen - 4, 4):
                if off + 4 + i + 4 > len(body):
                    break
                (bits,) = struct.unpack_from("!I", body, off + 4 + i)
                out |= {i * 8 + b for b in range(32) if bits >> b & 1}
            return out
        off += (elen + 7) // 8 * 8
    return set(range(1, version + 1))


def error(xid: int, type_: int, code: int, data: bytes = b"") -> bytes:
    return message(ofp.OFPT_ERROR, xid, struct.pack("!HH", type_, code) + data[:64])


def features_reply(xid: int, dpid: int, n_tables: int = 1) -> bytes:
    caps = ofp.OFPC_FLOW_STATS | ofp.OFPC_PORT_STATS
    return message(ofp.OFPT_FEATURES_REPLY, xid, struct.pack("!QIBB2xII", dpid, 0, n_tables, 0, caps, 0))


def config_reply(xid: int, flags: int, miss_send_len: int) -> bytes:
    return message(ofp.OFPT_GET_CONFIG_REPLY, xid, struct.pack("!HH", flags, miss_send_len))


def role_reply(xid: int, role: int, generation: int) -> bytes:
    return message(ofp.OFPT_ROLE_REPLY, xid, struct.pack("!I4xQ", role, generation))


def parse_role_request(body: bytes) -> tuple[int, int]:
    if len(body) < 16:
        raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN)
    role, gen = struct.unpack_from("!I4xQ", body)
    return role, gen


def multipart_replies(xid: int, mp_type: int, items: list[bytes]) -> list[bytes]:
    """Split items over as many replies as needed, MORE set on all but the last."""
    room = MAX_MESSAGE - HEADER.size - 8
    chunks: list[list[bytes]] = [[]]
    size = 0
    for it in items:
        if size + len(it) > room and chunks[-1]:
            chunks.append([])
            size = 0
        chunks[-1].append(it)
        size += len(it)
    out = []
    for i, chunk in enumerate(chunks):
        flags = ofp.OFPMPF_REPLY_MORE if i < len(chunks) - 1 else 0
        head = struct.pack("!HH4x", mp_type, flags)
        out.append(message(ofp.OFPT_MULTIPART_REPLY, xid, head + b"".join(chunk)))
    return out


def parse_multipart_request(body: bytes) -> tuple[int, int, bytes]:
    if len(body) < 8:
        raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN)
    mp_type, flags = struct.unpack_from("!HH4x", body)
    return mp_type, flags, body[8:]


def parse_flow_stats_request(body: bytes) -> dict[str, Any]:
    """The body of a FLOW or AGGREGATE request: filters and the match."""
    if len(body) < 32 + 4:
        raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN)
    table_id, out_port, out_group, cookie, cookie_mask = struct.unpack_from("!B3xII4xQQ", body)
    try:
        match = parser.OFPMatch.parser(bytes(body), 32)
    except Exception:
        raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_LEN) from None
    return {"table_id": table_id, "out_port": out_port, "out_group": out_group, "cookie": cookie,
            "cookie_mask": cookie_mask, "match": match}


def parse_port_stats_request(body: bytes) -> int:
    if len(body) < 8:
        raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN)
    (port,) = struct.unpack_from("!I4x", body)
    return int(port)


def desc_body(mfr: str, hw: str, sw: str, serial: str, dp: str) -> bytes:
    return struct.pack("!256s256s256s32s256s", mfr.encode()[:255], hw.encode()[:255], sw.encode()[:255],
                       serial.encode()[:31], dp.encode()[:255])


def port_body(port_no: int, hw_addr: bytes, name: str, up: bool, speed_kbps: int = 10_000_000) -> bytes:
    config = 0 if up else 0
    state = ofp.OFPPS_LIVE if up else ofp.OFPPS_LINK_DOWN
    curr = ofp.OFPPF_10GB_FD | ofp.OFPPF_COPPER
    return struct.pack("!I4x6s2x16sIIIIIIII", port_no, hw_addr[:6], name.encode()[:15], config, state, curr,
                       curr, curr, 0, speed_kbps, speed_kbps)


def port_stats_body(port_no: int, st: dict[str, int], duration: float) -> bytes:
    sec = int(duration)
    nsec = int((duration - sec) * 1e9)
    return struct.pack("!I4xQQQQQQQQQQQQII", port_no, st.get("rx", 0), st.get("tx", 0),
                       st.get("rx_bytes", 0), st.get("tx_bytes", 0), st.get("rx_dropped", 0),
                       st.get("tx_dropped", 0), 0, 0, 0, 0, 0, 0, sec, nsec)


def _match_bytes(match: Any) -> bytes:
    buf = bytearray()
    match.serialize(buf, 0)
    return bytes(buf)


def _instructions_bytes(instructions: list[Any]) -> bytes:
    buf = bytearray()
    for ins in instructions:
        ins.serialize(buf, len(buf))
    return bytes(buf)


def flow_stats_body(*, priority: int, cookie: int, idle: int, hard: int, flags: int, duration: float,
                    packets: int, byte_count: int, match: Any, instructions: list[Any]) -> bytes:
    m = _match_bytes(match)
    ins = _instructions_bytes(instructions)
    sec = int(duration)
    nsec = int((duration - sec) * 1e9)
    length = 48 + len(m) + len(ins)
    head = struct.pack("!HBxIIHHHH4xQQQ", length, 0, sec, nsec, priority, idle, hard, flags, cookie, packets,
                       byte_count)
    return head + m + ins


def aggregate_body(packets: int, byte_count: int, flows: int) -> bytes:
    return struct.pack("!QQI4x", packets, byte_count, flows)


def table_stats_body(active: int, lookups: int, matched: int) -> bytes:
    return struct.pack("!B3xIQQ", 0, active, lookups, matched)


def flow_removed(*, cookie: int, priority: int, reason: int, duration: float, idle: int, hard: int,
                 packets: int, byte_count: int, match: Any) -> bytes:
    sec = int(duration)
    nsec = int((duration - sec) * 1e9)
    body = struct.pack("!QHBBIIHHQQ", cookie, priority, reason, 0, sec, nsec, idle, hard, packets, byte_count)
    return message(ofp.OFPT_FLOW_REMOVED, 0, body + _match_bytes(match))


def _round8(n: int) -> int:
    return (n + 7) // 8 * 8


def check_flow_mod(raw: bytes) -> None:
    """Walk a FLOW_MOD's match, instructions and actions before os-ken's parser sees it.

    That parser trusts the lengths inside (a zero-length or unknown instruction
    makes it loop for ever), so every length is checked here first."""
    if len(raw) < 56:
        raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN, "FLOW_MOD too short")
    mtype, mlen = struct.unpack_from("!HH", raw, 48)
    if mtype != ofp.OFPMT_OXM:
        raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_TYPE)
    if mlen < 4 or 48 + _round8(mlen) > len(raw):
        raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_LEN)
    off = 52
    while off < 48 + mlen:
        if off + 4 > 48 + mlen:
            raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_LEN)
        off += 4 + raw[off + 3]
        if off > 48 + mlen:
            raise OFError(ofp.OFPET_BAD_MATCH, ofp.OFPBMC_BAD_LEN)
    off = 48 + _round8(mlen)
    while off < len(raw):
        if off + 4 > len(raw):
            raise OFError(ofp.OFPET_BAD_INSTRUCTION, ofp.OFPBIC_BAD_LEN)
        itype, ilen = struct.unpack_from("!HH", raw, off)
        if ilen < 8 or ilen % 8 or off + ilen > len(raw):
            raise OFError(ofp.OFPET_BAD_INSTRUCTION, ofp.OFPBIC_BAD_LEN)
        if itype not in (ofp.OFPIT_GOTO_TABLE, ofp.OFPIT_WRITE_METADATA, ofp.OFPIT_WRITE_ACTIONS,
                         ofp.OFPIT_APPLY_ACTIONS, ofp.OFPIT_CLEAR_ACTIONS, ofp.OFPIT_METER):
            raise OFError(ofp.OFPET_BAD_INSTRUCTION, ofp.OFPBIC_UNKNOWN_INST)
        if itype in (ofp.OFPIT_WRITE_ACTIONS, ofp.OFPIT_APPLY_ACTIONS, ofp.OFPIT_CLEAR_ACTIONS):
            a = off + 8
            while a < off + ilen:
                if a + 4 > off + ilen:
                    raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_LEN)
                atype, alen = struct.unpack_from("!HH", raw, a)
                if alen < 8 or alen % 8 or a + alen > off + ilen:
                    raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_LEN)
                if atype != ofp.OFPAT_OUTPUT:
                    raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_TYPE)
                if alen != 16:
                    raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_LEN)
                a += alen
        off += ilen


def packet_in(*, data: bytes, total_len: int, reason: int, cookie: int, in_port: int) -> bytes:
    match = bytearray()
    parser.OFPMatch(in_port=in_port).serialize(match, 0)
    body = struct.pack("!IHBBQ", ofp.OFP_NO_BUFFER, total_len, reason, 0, cookie) + bytes(match) + b"\0\0"
    return message(ofp.OFPT_PACKET_IN, 0, body + data)


def parse_packet_out(body: bytes) -> tuple[int, list[int], bytes]:
    """(in_port, output ports, packet) of a PACKET_OUT; only OUTPUT actions, no buffers."""
    if len(body) < 16:
        raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN)
    buffer_id, in_port, actions_len = struct.unpack_from("!IIH6x", body)
    if buffer_id != ofp.OFP_NO_BUFFER:
        raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BUFFER_UNKNOWN, "no buffers here")
    if 16 + actions_len > len(body):
        raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN)
    ports = []
    off = 16
    while off < 16 + actions_len:
        if off + 4 > 16 + actions_len:
            raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_LEN)
        atype, alen = struct.unpack_from("!HH", body, off)
        if atype != ofp.OFPAT_OUTPUT:
            raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_TYPE)
        if alen != 16 or off + alen > 16 + actions_len:
            raise OFError(ofp.OFPET_BAD_ACTION, ofp.OFPBAC_BAD_LEN)
        ports.append(struct.unpack_from("!I", body, off + 4)[0])
        off += alen
    return in_port, ports, body[16 + actions_len:]


def parse_flow_mod(raw: bytes) -> Any:
    """A FLOW_MOD through os-ken's parser; anything it cannot read is a BAD_REQUEST error."""
    check_flow_mod(raw)
    try:
        version, msg_type, length, xid = ofproto_parser.header(raw)
        # os-ken logs what it cannot parse and returns None
        msg = ofproto_parser.msg(DP, version, msg_type, length, xid, bytearray(raw))
    except Exception:
        msg = None
    if msg is None or getattr(msg, "match", None) is None:
        raise OFError(ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_BAD_LEN, "undecodable FLOW_MOD")
    return msg
