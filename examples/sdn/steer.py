"""An os-ken application that steers web traffic through a chain of NFs.

On every manager that connects it installs two flows in table 0:

* priority 100, ``ip tcp dst port 80`` (``STEER_TCP_PORT``): outputs
  ``STEER_WEB`` (default ``1001,1002,2``: service 1, then service 2, then
  the manager's port 1);
* priority 0, everything else (the table-miss flow): outputs
  ``STEER_OTHER`` (default ``2``: straight out of port 1).  With
  ``STEER_OTHER=none`` there is no such flow and the rest takes the
  manager's default chain.

OpenFlow port numbering: port N is the manager's port N-1, and 1000+S is
service S (see onvm.sdn.translate).  Every 0.5 s it asks for flow statistics;
with ``STEER_LOG=FILE`` it appends what it sees as JSON lines (events
``connected``, ``installed``, ``flow_stats``, ``ports``, ``error``).

Run it (see examples/sdn/README.md)::

    python -m onvm.sdn.controller --listen 127.0.0.1:6653 examples/sdn/steer.py
"""

from __future__ import annotations

import json
import os
import time

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3


def _ports(env: str, default: str) -> list[int]:
    return [int(p) for p in os.environ.get(env, default).split(",") if p.strip()]


class Steer(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.web = _ports("STEER_WEB", "1001,1002,2")
        self.other = None if os.environ.get("STEER_OTHER") == "none" else _ports("STEER_OTHER", "2")
        self.tcp_port = int(os.environ.get("STEER_TCP_PORT", "80"))
        self.log_path = os.environ.get("STEER_LOG", "")
        self.datapaths = {}
        self.poller = hub.spawn(self._poll)

    def record(self, event: str, **data):
        data.update(event=event, time=time.time())
        self.logger.info("%s", json.dumps(data))
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(data) + "\n")

    def _flow(self, dp, priority, match, outputs, cookie):
        ofp, parser = dp.ofproto, dp.ofproto_parser
        actions = [parser.OFPActionOutput(p) for p in outputs]
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
        dp.send_msg(parser.OFPFlowMod(dp, cookie=cookie, priority=priority, match=match, instructions=inst,
                                      flags=ofp.OFPFF_SEND_FLOW_REM))

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def on_features(self, ev):
        dp = ev.msg.datapath
        parser = dp.ofproto_parser
        self.datapaths[dp.id] = dp
        self.record("connected", dpid=dp.id)
        web = parser.OFPMatch(eth_type=0x0800, ip_proto=6, tcp_dst=self.tcp_port)
        self._flow(dp, 100, web, self.web, cookie=0x80)
        if self.other is not None:
            self._flow(dp, 0, parser.OFPMatch(), self.other, cookie=0x1)
        dp.send_msg(parser.OFPBarrierRequest(dp))
        dp.send_msg(parser.OFPPortDescStatsRequest(dp, 0))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def on_barrier(self, ev):
        self.record("installed", dpid=ev.msg.datapath.id)

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def on_ports(self, ev):
        self.record("ports", dpid=ev.msg.datapath.id,
                    ports={p.port_no: p.name.decode() for p in ev.msg.body})

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def on_error(self, ev):
        self.record("error", type=ev.msg.type, code=ev.msg.code)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def on_flow_stats(self, ev):
        flows = [{"cookie": s.cookie, "priority": s.priority, "packets": s.packet_count,
                  "bytes": s.byte_count} for s in ev.msg.body]
        self.record("flow_stats", dpid=ev.msg.datapath.id, flows=flows)

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER])
    def on_state(self, ev):
        pass

    def _poll(self):
        while True:
            hub.sleep(0.5)
            for dpid, dp in list(self.datapaths.items()):
                if not dp.is_active:
                    self.datapaths.pop(dpid, None)
                    continue
                try:
                    dp.send_msg(dp.ofproto_parser.OFPFlowStatsRequest(dp))
                except Exception:
                    self.datapaths.pop(dpid, None)
