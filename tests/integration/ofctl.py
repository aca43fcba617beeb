"""A bare OpenFlow 1.3 controller for tests: one switch, blocking calls, os-ken's codecs."""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser


class _DP:
    ofproto = ofp
    ofproto_parser = parser
    id = 0

    def set_xid(self, msg: Any) -> None:  # os-ken's messages ask their datapath for one
        pass


DP = _DP()


class RawController:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.buf = b""
        self.xid = 100
        self.backlog: list[tuple[int, int, bytes]] = []

    @property
    def target(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def accept(self, timeout: float = 10.0) -> None:
        self.listener.settimeout(timeout)
        self.conn, _ = self.listener.accept()
        self.conn.settimeout(timeout)
        self.buf = b""
        self.backlog = []

    def handshake(self) -> Any:
        self.send_raw(struct.pack("!BBHI", 4, ofp.OFPT_HELLO, 8, 1))
        self.recv_type(ofp.OFPT_HELLO)
        xid = self.send(parser.OFPFeaturesRequest(DP))
        return self.parse(self.recv_xid(xid)[2])

    def close(self) -> None:
        for s in (self.conn, self.listener):
            if s is not None:
                s.close()

    def send_raw(self, data: bytes) -> None:
        assert self.conn is not None
        self.conn.sendall(data)

    def send(self, msg: Any) -> int:
        self.xid += 1
        msg.xid = self.xid
        msg.serialize()
        self.send_raw(bytes(msg.buf))
        return self.xid

    def _read(self) -> tuple[int, int, bytes]:
        assert self.conn is not None
        while True:
            if len(self.buf) >= 8:
                _, t, length, xid = struct.unpack_from("!BBHI", self.buf)
                if len(self.buf) >= length:
                    raw, self.buf = self.buf[:length], self.buf[length:]
                    return t, xid, raw
            data = self.conn.recv(65536)
            if not data:
                raise ConnectionError("switch closed the connection")
            self.buf += data

    def recv(self, pred: Any, timeout: float = 10.0) -> tuple[int, int, bytes]:
        for i, m in enumerate(self.backlog):
            if pred(m):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self._read()
            if pred(m):
                return m
            if m[0] == ofp.OFPT_ECHO_REQUEST:
                self.send_raw(struct.pack("!BBHI", 4, ofp.OFPT_ECHO_REPLY, 8, m[1]))
                continue
            self.backlog.append(m)
        raise TimeoutError("no such message")

    def recv_xid(self, xid: int) -> tuple[int, int, bytes]:
        return self.recv(lambda m: m[1] == xid)

    def recv_type(self, t: int) -> tuple[int, int, bytes]:
        return self.recv(lambda m: m[0] == t)

    @staticmethod
    def parse(raw: bytes) -> Any:
        v, t, length, xid = ofproto_parser.header(raw)
        return ofproto_parser.msg(DP, v, t, length, xid, bytearray(raw))

    def barrier(self) -> list[Any]:
        """A barrier; returns the errors that came before its reply."""
        xid = self.send(parser.OFPBarrierRequest(DP))
        self.recv_xid(xid)
        errors = [self.parse(m[2]) for m in self.backlog if m[0] == ofp.OFPT_ERROR]
        self.backlog = [m for m in self.backlog if m[0] != ofp.OFPT_ERROR]
        return errors

    def flow_mod(self, *, match: Any = None, outputs: list[int] | None = None, priority: int = 100,
                 command: int = ofp.OFPFC_ADD, cookie: int = 0, cookie_mask: int = 0, idle: int = 0,
                 hard: int = 0, flags: int = 0, out_port: int = ofp.OFPP_ANY, table_id: int = 0) -> int:
        actions = [parser.OFPActionOutput(p) for p in (outputs or [])]
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if outputs is not None else []
        return self.send(parser.OFPFlowMod(DP, cookie=cookie, cookie_mask=cookie_mask, table_id=table_id,
                                           command=command, idle_timeout=idle, hard_timeout=hard,
                                           priority=priority, flags=flags, out_port=out_port,
                                           out_group=ofp.OFPG_ANY, match=match or parser.OFPMatch(),
                                           instructions=inst))

    def multipart(self, req: Any) -> list[Any]:
        xid = self.send(req)
        body: list[Any] = []
        while True:
            msg = self.parse(self.recv_xid(xid)[2])
            if msg.msg_type == ofp.OFPT_ERROR:
                raise AssertionError(f"error {msg.type}/{msg.code}")
            body += msg.body if isinstance(msg.body, list) else [msg.body]
            if not msg.flags & ofp.OFPMPF_REPLY_MORE:
                return body

    def flow_stats(self) -> list[Any]:
        return self.multipart(parser.OFPFlowStatsRequest(DP))
